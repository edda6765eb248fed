"""The live display of a run on a terminal: each phase (loading, validating, training, exporting) shows what it is
doing, its progress when it can count it, and the time spent and left."""

from __future__ import annotations

import contextlib
import datetime
from typing import Iterator, Optional


def _clock(seconds: Optional[float]) -> str:
    return str(datetime.timedelta(seconds=int(seconds or 0)))


def _columns():
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task):
            return Text(f"{int(task.completed)}/{int(task.total)}" if task.total else "", style="progress.download")

    class Times(ProgressColumn):
        """'elapsed 0:00:12, remaining 0:00:30': labelled, since two bare clocks read alike."""

        def render(self, task):
            text = f"elapsed {_clock(task.elapsed)}"
            if task.total and task.time_remaining is not None and not task.finished:
                text += f", remaining {_clock(task.time_remaining)}"
            return Text(text, style="progress.elapsed")

    return (SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), Count(), BarColumn(),
            TextColumn("{task.fields[info]}"), Times())


class RunDisplay:
    """One rich Progress at a time (rich allows one live display): a phase opened while the training bar is up
    (a validation every ``eval.every`` steps) becomes a second line of it; otherwise it draws its own transient
    line. Disabled (``--no-progress``, other processes, output that is not a terminal) it does nothing."""

    def __init__(self, console, enabled: bool):
        # Only on a terminal: elsewhere (a log file, a pipe, captured output) live lines would add blank lines
        # around the one-line errors and summaries that are read there.
        self.console = console
        self.enabled = bool(enabled) and console is not None and console.is_terminal
        self._progress = None
        self._tasks: list = []

    def _open(self, transient: bool):
        from rich.progress import Progress

        self._progress = Progress(*_columns(), console=self.console, transient=transient)
        self._progress.start()
        return self._progress

    @contextlib.contextmanager
    def phase(self, description: str, total: Optional[int] = None, *, keep: bool = False) -> Iterator[None]:
        """Show ``description`` with a spinner (and a bar over ``total`` units) while the block runs; ``keep``
        leaves the finished line on the terminal (the training bar)."""
        if not self.enabled:
            yield
            return
        own = self._progress is None
        progress = self._open(transient=not keep) if own else self._progress
        task = progress.add_task(description, total=total, info="")
        self._tasks.append(task)
        try:
            yield
        finally:
            self._tasks.remove(task)
            if own:
                progress.stop()
                self._progress = None
            else:
                progress.remove_task(task)

    def advance(self, amount: float = 1) -> None:
        """Count ``amount`` units of the innermost phase."""
        if self._progress is not None and self._tasks:
            self._progress.advance(self._tasks[-1], amount)

    def update(self, *, completed: Optional[float] = None, info: str = "") -> None:
        """Set the innermost phase's count and its info text (the training losses and speed)."""
        if self._progress is not None and self._tasks:
            self._progress.update(self._tasks[-1], completed=completed, info=info)
