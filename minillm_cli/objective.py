"""The objective interface: what a training objective declares and what the engine gives it.

An objective is a class registered through the ``register_objectives`` hook. It declares in ``needs`` what its
batches require; the engine loads and provides exactly that:

- ``gold``: (prompt, gold response) batches from the instruction data (always provided);
- ``teacher``: the frozen teacher, reachable through ``ctx.teacher_forward``;
- ``student_samples``: ``ctx.sample_student(batch)`` replaces a batch's responses by student samples
  (no gradient through sampling);
- ``teacher_samples``: ``ctx.sample_teacher(batch)`` likewise from the teacher;
- ``mixed_samples``: ``ctx.sample_mixed(batch, alpha)`` gives teacher-mixed rollouts with per-token log-probs
  (the MiniLLM objective; see ``rollout``; an optional ``coins="step"|"row"|"none"`` picks the sampler);
- ``lm_chunks``: packed plain-text chunks for a language-modelling loss, as ``ctx.lm_batch()``.

Per optimizer step the engine hands all its micro-batches to ``prepare_step`` first (by default
``prepare_batch`` on each; MiniLLM overrides it to reuse one step's rollouts for several PPO epochs), counts the
loss tokens of all of them (across processes too), then calls ``loss`` on each with ``ctx.num_tokens`` set to
that count: a loss that sums over its tokens and divides by ``ctx.num_tokens`` is a per-token mean computed
exactly once, the same for any split into micro-batches or processes. Statistics that must be global (MiniLLM's
advantage whitening) go through ``ctx.reduce_sum``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

NEEDS = frozenset({"gold", "teacher", "student_samples", "teacher_samples", "mixed_samples", "lm_chunks"})


@dataclass
class NoOptions:
    """This objective has no options."""


@dataclass
class LossOutput:
    loss: Any                                          # scalar tensor: token sum / ctx.num_tokens
    metrics: dict[str, float] = field(default_factory=dict)  # likewise normalised, so micro-batches add up


@dataclass
class StepContext:
    """What the engine offers an objective during one optimizer step."""

    step: int
    num_tokens: float
    student: Any
    teacher: Any
    vocab_width: int
    chunk_tokens: Optional[int]
    student_forward: Callable
    teacher_forward: Callable
    sample_student: Callable
    sample_teacher: Callable
    lm_batch: Callable
    rng: Any                    # random.Random owned by the engine, saved in checkpoints
    training_progress: float    # step / total steps, in [0, 1]
    sample_mixed: Callable = None
    reduce_sum: Callable = None      # sums a tensor over processes; None: one process (see ``sum_over_processes``)

    def sum_over_processes(self, tensor):
        return tensor if self.reduce_sum is None else self.reduce_sum(tensor)


class Objective:
    """Base class for objectives. Subclasses set ``name``, ``help``, ``Options`` and ``needs``."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[frozenset] = frozenset({"gold"})

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    def prepare_data(self, train_examples: list, ctx: "DataContext") -> list:
        """Transform the training examples once before training (SeqKD replaces the responses)."""
        return train_examples

    def prepare_step(self, batches: list, ctx: StepContext) -> list:
        """Transform the gold micro-batches of one optimizer step before the loss; by default ``prepare_batch``
        on each. Override to treat a step's micro-batches together (MiniLLM keeps them as one rollout buffer)."""
        return [self.prepare_batch(batch, ctx) for batch in batches]

    def prepare_batch(self, batch, ctx: StepContext):
        """Transform a gold batch before the loss (on-policy objectives sample new responses here)."""
        return batch

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        raise NotImplementedError(f"objective '{self.name}' must implement loss()")

    def on_validation(self, metrics: dict[str, float]) -> None:
        """Called with each validation result (DistiLLM's adaptive schedule listens here)."""

    def state_dict(self) -> dict:
        """State to save in checkpoints so that a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class DataContext:
    """What ``prepare_data`` may use: the teacher's name, sampling settings, a cache directory."""

    teacher: str
    teacher_family: Optional[str]
    cache_dir: Any
    prompt_format: str
    max_prompt_tokens: int
    generation: Any             # SamplingConfig
    dtype: str
    device: Any
    batch_size: int
    seed: int
    served_teacher: Any = None  # serving.teacher.ServedTeacher when the teacher is behind a server (docs/serving.md)


def options_help(options_cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of an Options dataclass, for ``minillm objectives`` and docs."""
    rows = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, kind, default, f.metadata.get("help", "")))
    return rows


def option(default, help: str, **kwargs):
    """A dataclass field with help text: ``ratio: float = option(0.5, "weight of the KD term")``."""
    return field(default=default, metadata={"help": help, **kwargs})
