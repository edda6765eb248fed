"""The evaluator interface: what an evaluation suite declares, what ``minillm eval`` gives it, what it returns.

An evaluator is a class registered through the ``register_evaluators`` hook (the builtin suites are registered
the same way, in ``minillm_cli/builtin/evaluators.py``). It declares its ``name``, a one-line ``help``, its
``Options`` dataclass (fields made with ``minillm_cli.objective.option``; set on the command line with
``--set NAME.KEY=VALUE``) and what it ``needs`` beyond the evaluated model. ``evaluate(ctx)`` scores one model
and returns a ``SuiteResult``; everything it writes goes under ``ctx.output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from ..errors import MinillmError
from ..models.generation import SamplingConfig
from ..objective import NoOptions

# The paper's protocol (docs/method.md §4): five generation seeds, pure sampling, no repeated 6-grams.
PAPER_SEEDS = (10, 20, 30, 40, 50)


def paper_sampling(max_new_tokens: int = 256) -> SamplingConfig:
    """Sampling at temperature 1, top_k 0, top_p 1, no-repeat n-gram 6, at most 256 new tokens (docs/method.md §4)."""
    return SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, no_repeat_ngram_size=6)


# What an evaluator may need besides the evaluated model and its tokenizer.
NEEDS = frozenset({"model", "teacher"})


@dataclass
class EvalContext:
    """What an evaluator gets to score one model.

    ``model`` and ``tokenizer`` are loaded once per model and shared by every suite. ``teacher()`` loads the
    teacher on first use (only suites that need it pay for it). ``output_dir`` is this (model, suite)'s own
    folder; generation suites write ``seed-<seed>.jsonl`` there so that ``minillm eval --from-generations``
    can re-score them without the model.
    """

    model_name: str                          # the model as the user named it; the label in every report
    model: Any = None
    tokenizer: Any = None
    prompt_format: str = "alpaca"
    add_bos: bool = False
    seeds: list = field(default_factory=lambda: list(PAPER_SEEDS))
    sampling: SamplingConfig = field(default_factory=paper_sampling)
    batch_size: int = 8
    max_prompt_tokens: int = 256
    limit: Optional[int] = None              # evaluate only the first N examples of each suite
    data_dir: Optional[Path] = None          # --data-dir / MINILLM_DATA_DIR (see suites.data_dirs)
    output_dir: Optional[Path] = None
    device: Any = None
    vocab_width: Optional[int] = None        # logits compared with a teacher are cut to this width
    teacher_name: Optional[str] = None
    teacher_loader: Optional[Callable[[], Any]] = None
    console: Any = None
    quiet: bool = False                      # no progress bars (periodic validation inside distill)

    def teacher(self):
        """The teacher model, loaded on first use; a clear error when no teacher was named."""
        if self.teacher_loader is None:
            raise MinillmError("this evaluator compares the model with a teacher; pass --teacher MODEL")
        return self.teacher_loader()

    def log(self, message: str) -> None:
        if self.console is not None and not self.quiet:
            self.console.print(message)


@dataclass
class SuiteResult:
    """One model's scores on one suite.

    ``metrics`` are the numbers a report shows (floats; a metric ``m`` with a spread over generation seeds has
    ``m_std`` beside it); ``headline`` names the one the models × suites table shows. ``details`` holds every
    other number (per-seed values, buckets, counts), ``settings`` what exactly was evaluated (data source,
    number of examples, options), ``curves`` named x/y series that the plots draw one line per model, and
    ``files`` the artefacts written (generations, diagrams).
    """

    suite: str
    metrics: dict = field(default_factory=dict)
    headline: Optional[str] = None
    details: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)    # name -> {"x": [...], "y": [...], "xlabel": str, "ylabel": str}
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "suite": self.suite, "headline": self.headline, "metrics": self.metrics, "details": self.details,
            "settings": self.settings, "curves": self.curves, "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SuiteResult":
        known = ("suite", "metrics", "headline", "details", "settings", "curves", "files")
        return cls(**{key: data[key] for key in known if key in data})


class Evaluator:
    """Base class for evaluation suites. Subclasses set ``name``, ``help``, ``Options``, ``needs`` and
    implement ``evaluate`` (and ``check`` when they can tell early that something is missing)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[frozenset] = frozenset({"model"})

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    def check(self, ctx: EvalContext) -> None:
        """Fail early, before any model is loaded, when something this suite needs is missing (its data file).

        ``ctx`` has no model yet; raise a one-line MinillmError that says what to provide."""

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        raise NotImplementedError(f"evaluator '{self.name}' must implement evaluate()")
