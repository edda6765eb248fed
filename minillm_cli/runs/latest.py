"""The newest student a ``minillm distill`` exported under ``runs/``: what ``minillm eval`` scores when given no model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import MinillmError

RUNS_DIR = Path("runs")


def newest_export(root: Path = RUNS_DIR) -> Optional[Path]:
    """``runs/<run>/final`` with the latest modification time (distill writes ``final/`` last), or None."""
    exports = [path for path in Path(root).glob("*/final") if (path / "config.json").is_file()]
    return max(exports, key=lambda path: (path / "config.json").stat().st_mtime, default=None)


def default_model(log) -> str:
    """The newest exported student, said aloud through ``log``; else one line saying what to pass."""
    export = newest_export()
    if export is None:
        raise MinillmError(
            f"no model to evaluate: pass --model MODEL (a model directory, alias, hub id or .gguf file), or run "
            f"`minillm distill` first (eval then takes the newest {RUNS_DIR}/<run>/final)"
        )
    log(f"evaluating {export}, the newest student exported under {RUNS_DIR}/ (pass --model to choose another)")
    return str(export)
