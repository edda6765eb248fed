"""The instruction-following suites of the paper (docs/method.md §4) and where their data comes from.

Every suite reads its test set from the first of:

1. ``--set SUITE.path=FILE_OR_DIR``;
2. ``<data dir>/<folder>/<split>.jsonl`` (or .json/.csv/.parquet, or ``<data dir>/<folder>.jsonl``), where the
   data dir is ``--data-dir``, else ``$MINILLM_DATA_DIR``, else ``$MINILLM_HOME/data``; one folder per suite
   (``dolly/test.jsonl``, ``selfinst/test.jsonl``; docs/evaluation.md says where each comes from);
3. a Hugging Face dataset (``--set SUITE.hub=NAME``; ``SUITE.hub_split``), when the hub is reachable.

Otherwise the suite fails with one line that says where to put the file and in which format. ``default`` needs
nothing: it is the validation split that ``minillm distill`` holds out of the embedded instruction data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence

from ..data.records import FILE_SUFFIXES
from ..errors import MinillmError
from ..objective import option
from .base import EvalContext, Evaluator, SuiteResult

DATA_DIR_ENV = "MINILLM_DATA_DIR"
FORMAT = (
    "JSONL, one object per line with fields instruction, input (may be empty) and output "
    "(a string, or a list of reference strings)"
)


def data_dirs(explicit: Optional[os.PathLike] = None) -> list:
    """Where suite data is looked for, in order: --data-dir, else $MINILLM_DATA_DIR; then $MINILLM_HOME/data."""
    from ..paths import minillm_home

    first = explicit or os.environ.get(DATA_DIR_ENV) or None
    dirs = [Path(first).expanduser()] if first else []
    home = minillm_home() / "data"
    return dirs + ([home] if home not in dirs else [])


def locate_data(explicit: Optional[str], data_dir, relative_paths: Sequence[Path]) -> tuple:
    """Where an evaluator's data is: (path, the relative path that matched), or (None, None) when nowhere.

    The user's ``explicit`` path comes first, expanded, with None as the match (it may not exist: the caller says
    what it needed); else the first ``<data dir>/<relative path>`` that is a file, every relative path being tried
    in one data dir (in data_dirs order) before the next.
    """
    if explicit:
        return Path(explicit).expanduser(), None
    for directory in data_dirs(data_dir):
        for relative in relative_paths:
            if (directory / relative).is_file():
                return directory / relative, relative
    return None, None


def suggested_path(data_dir, folder: str, split: str) -> Path:
    """Where a "no data" message tells the user to put a missing file: ``<first data dir>/<folder>/<split>.jsonl``."""
    return data_dirs(data_dir)[0] / folder / f"{split}.jsonl"


def _teacher_measures():
    return option(True, "With --teacher: also teacher_nll (the teacher's NLL of the model's samples), "
                        "student_nll_on_teacher (the model's NLL of the teacher's samples) and the reverse / forward KL "
                        "along each (docs/evaluation.md).")


@dataclass
class SuiteOptions:
    path: Optional[str] = option(None, "A local file or directory to read instead of the data dir.")
    split: str = option("test", "The split to read from the data dir (<folder>/<split>.jsonl).")
    hub: Optional[str] = option(None, "A Hugging Face dataset to read when no local file is found.")
    hub_split: str = option("test", "The split of the hub dataset.")
    fields: Optional[str] = option(None, "Field mapping, e.g. 'instruction=question,output=answer'.")
    limit: Optional[int] = option(None, "Use only the first N examples (default: --limit).")
    min_reference_words: int = option(0, "Drop examples whose gold response has fewer words (rouge_score words).")
    teacher_measures: bool = _teacher_measures()
    teacher_measures_limit: Optional[int] = option(None, "The teacher measures on the first N prompts only (the teacher scores every sample: on a CPU the costliest part of an evaluation); default all.")
    teacher_measures_seeds: Optional[int] = option(None, "teacher_nll and rkl_own_samples over the samples of the first K seeds only; default every seed.")

    def validate(self) -> list:
        return _check_limit(self.limit) + _check_measures(self) + (
            [f"min_reference_words must be >= 0, got {self.min_reference_words}"] if self.min_reference_words < 0 else []
        )


def _check_measures(options) -> list:
    return [f"{name} must be >= 1, got {value}" for name in ("teacher_measures_limit", "teacher_measures_seeds")
            if (value := getattr(options, name)) is not None and value < 1]


def _check_limit(limit) -> list:
    return [f"limit must be >= 1, got {limit}"] if limit is not None and limit < 1 else []


class InstructionSuite(Evaluator):
    """A test set of instructions with gold responses, scored by the paper's generation protocol."""

    Options: ClassVar[type] = SuiteOptions
    folder: ClassVar[str] = ""     # the folder of the data dir holding this suite's splits

    def locate(self, ctx: EvalContext) -> tuple:
        """(source to load, split or None, a description of it), or the one-line error that says what to do."""
        opts = self.options
        split_files = [Path(self.folder, f"{opts.split}{suffix}") for suffix in FILE_SUFFIXES]
        single_files = [Path(f"{self.folder}{suffix}") for suffix in FILE_SUFFIXES]
        path, matched = locate_data(opts.path, ctx.data_dir, split_files + single_files)
        if opts.path:
            if not path.exists():
                raise MinillmError(f"suite '{self.name}': {self.name}.path {opts.path} does not exist; {self._where(ctx)}")
            return str(path), (opts.split if path.is_dir() else None), str(path)
        if matched in split_files:
            # The folder, not the file: load_instructions reads the split from it (and refuses two files of it).
            folder = path.parent
            return str(folder), opts.split, f"{folder}/{opts.split}"
        if path is not None:
            return str(path), None, str(path)
        if opts.hub:
            return opts.hub, opts.hub_split, f"hub:{opts.hub}[{opts.hub_split}]"
        raise MinillmError(f"no data for suite '{self.name}': {self._where(ctx)}")

    def _where(self, ctx: EvalContext) -> str:
        target = suggested_path(ctx.data_dir, self.folder, self.options.split)
        return (
            f"put its test set at {target} ({FORMAT}), or pass --data-dir DIR (or set {DATA_DIR_ENV}) with "
            f"{self.folder}/{self.options.split}.jsonl inside"
        )

    def check(self, ctx: EvalContext) -> None:
        # Reading the file now (it is small) reports a missing file or a malformed line before any model loads.
        self.load(ctx)

    def load(self, ctx: EvalContext) -> tuple:
        """(examples, settings describing them)."""
        from ..data.instructions import load_instructions

        source, split, described = self.locate(ctx)
        try:
            examples = load_instructions(source, fields=self.options.fields, split=split,
                                         fields_hint=f"--set {self.name}.fields={{mapping}}")
        except MinillmError:
            if not described.startswith("hub:"):
                raise
            raise MinillmError(
                f"no data for suite '{self.name}': the hub dataset {source} could not be loaded (offline, or not "
                f"cached); {self._where(ctx)}"
            ) from None
        examples, filtered = self.select(examples)
        limit = self.options.limit if self.options.limit is not None else ctx.limit
        total = len(examples)
        if limit is not None:
            examples = examples[:limit]
        settings = {"source": described, "examples": len(examples), "available": total, "filtered_out": filtered}
        return examples, settings

    def select(self, examples: list) -> tuple:
        """(kept examples, how many were filtered out): the ≥ N-word gold-response filter of S-NI and UnNI."""
        minimum = self.options.min_reference_words
        if not minimum:
            return examples, 0
        from .metrics import words

        kept = [e for e in examples if len(words(e.output)) >= minimum]
        return kept, len(examples) - len(kept)

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        from dataclasses import asdict

        from . import protocol

        examples, settings = self.load(ctx)
        settings["options"] = asdict(self.options)
        ctx.log(f"{ctx.model_name} on {self.name}: {len(examples)} examples × {len(ctx.seeds)} seeds")
        return protocol.run(ctx, examples, self.name, settings=settings, teacher_measures=self.options.teacher_measures,
                            measures_limit=self.options.teacher_measures_limit, measures_seeds=self.options.teacher_measures_seeds)


# --- the suites ---------------------------------------------------------------------------------------------------


@dataclass
class DefaultOptions:
    limit: Optional[int] = option(None, "Use only the first N examples (default: --limit).")
    teacher_measures: bool = _teacher_measures()
    teacher_measures_limit: Optional[int] = option(None, "The teacher measures on the first N prompts only (the teacher scores every sample: on a CPU the costliest part of an evaluation); default all.")
    teacher_measures_seeds: Optional[int] = option(None, "teacher_nll and rkl_own_samples over the samples of the first K seeds only; default every seed.")

    def validate(self) -> list:
        return _check_limit(self.limit) + _check_measures(self)


class DefaultSuite(InstructionSuite):
    name = "default"
    help = ("The embedded data's validation split, exactly the one `minillm distill` holds out by default "
            "(data.valid_size 0.1, data.seed 0): 36 examples, offline.")
    Options = DefaultOptions

    def check(self, ctx: EvalContext) -> None:
        pass   # embedded in the package

    def load(self, ctx: EvalContext) -> tuple:
        from ..config.schema import DataConfig
        from ..data.instructions import load_instructions
        from ..data.splits import train_valid_split

        # The split runs.prepare makes with the default DataConfig, so the suite is exactly the held-out split.
        defaults = DataConfig()
        _, examples = train_valid_split(load_instructions("default"), defaults)
        total = len(examples)
        limit = self.options.limit if self.options.limit is not None else ctx.limit
        if limit is not None:
            examples = examples[:limit]
        source = f"embedded default_instructions.jsonl, validation split (valid_size {defaults.valid_size}, seed {defaults.seed})"
        return examples, {"source": source, "examples": len(examples), "available": total, "filtered_out": 0}


@dataclass
class DollyOptions(SuiteOptions):
    # MiniLLM's processed Dolly release names its 500-example test set "valid" (and its 1000-example dev set "dev").
    hub: Optional[str] = option("MiniLLM/dolly", "A Hugging Face dataset to read when no local file is found.")
    hub_split: str = option("valid", "The split of the hub dataset (MiniLLM's release calls the test set valid).")


class DollySuite(InstructionSuite):
    name = "dolly"
    help = "DollyEval: the paper's 500 held-out databricks-dolly-15k examples (dolly/test.jsonl)."
    Options = DollyOptions
    folder = "dolly"


@dataclass
class SelfInstOptions(SuiteOptions):
    paper_subset: bool = option(False, "Keep only the 242 instructions MiniLLM evaluated (field in_minillm_242).")


class SelfInstSuite(InstructionSuite):
    name = "selfinst"
    help = "Self-Instruct's 252 user-oriented instructions (selfinst/test.jsonl)."
    Options = SelfInstOptions
    folder = "selfinst"

    def select(self, examples: list) -> tuple:
        examples, filtered = super().select(examples)
        if not self.options.paper_subset:
            return examples, filtered
        if not any("in_minillm_242" in e.fields for e in examples):
            raise MinillmError(
                "selfinst.paper_subset needs the field in_minillm_242 in the data (true for the 242 instructions the "
                "paper kept; docs/evaluation.md); add it to your selfinst/test.jsonl or drop the option"
            )
        kept = [e for e in examples if e.fields.get("in_minillm_242")]
        return kept, filtered + len(examples) - len(kept)


class VicunaSuite(InstructionSuite):
    name = "vicuna"
    help = "VicunaEval: 80 questions (vicuna/test.jsonl)."
    folder = "vicuna"


@dataclass
class LongResponseOptions(SuiteOptions):
    min_reference_words: int = option(11, "Drop examples whose gold response has fewer words (paper: ≥ 11).")


class SNISuite(InstructionSuite):
    name = "sinst"
    help = "Super-NaturalInstructions test set, gold responses of ≥ 11 words (sinst/test.jsonl)."
    Options = LongResponseOptions
    folder = "sinst"


class UnNISuite(InstructionSuite):
    name = "uinst"
    help = "Unnatural Instructions, gold responses of ≥ 11 words (uinst/test.jsonl)."
    Options = LongResponseOptions
    folder = "uinst"


class FileSuite(InstructionSuite):
    """Any local instruction file given to ``--suite`` by path; not registered, made on demand."""

    name = "file"
    help = "A local JSONL/JSON/CSV/Parquet file of instructions with gold outputs."

    def __init__(self, path: str, options=None):
        super().__init__(options)
        self.name = path          # the suite is reported under the path as the user typed it
        self.options.path = path

    def locate(self, ctx: EvalContext) -> tuple:
        path = Path(self.name).expanduser()
        if not path.exists():
            raise MinillmError(f"suite file not found: {self.name}; pass an existing file ({FORMAT}) or a suite name")
        return str(path), (self.options.split if path.is_dir() else None), str(path)


BUILTIN_SUITES = (DefaultSuite, DollySuite, SelfInstSuite, VicunaSuite, SNISuite, UnNISuite)
