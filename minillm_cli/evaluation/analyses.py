"""Exposure bias, calibration and the LLM judge as evaluator plugins (docs/method.md §4).

The computations live in ``exposure``, ``calibration`` and ``judge``; these classes only find their data, call
them on the model ``minillm eval`` loaded, and turn the answers into a ``SuiteResult`` for the reports.
Exposure bias and the judge take their prompts from an instruction suite (``--set exposure.suite=dolly``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import MinillmError
from ..objective import option
from .base import EvalContext, Evaluator, SuiteResult
from .suites import DATA_DIR_ENV, locate_data, suggested_path


def _finite(value):
    """JSON-safe numbers: NaN and infinities (undefined points of a curve) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _prompt_suite(name: str):
    """The instruction suite (with its default options) whose examples another evaluator uses as prompts."""
    from .select import build_evaluators
    from .suites import InstructionSuite

    (suite,) = build_evaluators([name])
    if not isinstance(suite, InstructionSuite):
        raise MinillmError(f"'{name}' is not an instruction suite; name one such as default, dolly or a JSONL file")
    return suite


class _PromptsFromSuite(Evaluator):
    """An evaluator whose prompts are the examples of the instruction suite its ``suite`` option names."""

    def check(self, ctx: EvalContext) -> None:
        _prompt_suite(self.options.suite).check(ctx)

    def prompt_examples(self, ctx: EvalContext, limit: Optional[int]) -> tuple:
        """(examples, the suite's settings) of that suite, ``limit`` standing in for --limit."""
        return _prompt_suite(self.options.suite).load(dataclasses.replace(ctx, limit=limit))


# --- exposure bias ---------------------------------------------------------------------------------------------


@dataclass
class ExposureOptions:
    suite: str = option("default", "Instruction suite (or JSONL file) whose prompts start the rollouts.")
    limit: int = option(32, "Number of prompts.")
    max_len: int = option(64, "Curve length l = 1..max_len in tokens.")
    seed: Optional[int] = option(None, "Sampling seed (default: the first of --seeds).")

    def validate(self) -> list:
        problems = []
        if self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if self.max_len < 1:
            problems.append(f"max_len must be >= 1, got {self.max_len}")
        return problems


class ExposureEvaluator(_PromptsFromSuite):
    name = "exposure"
    help = "Exposure bias: ExAccErr(l) of the model against --teacher on free-running prefixes (lower is better)."
    Options = ExposureOptions
    needs = frozenset({"model", "teacher"})

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        from ..data.tokenization import tokenize_prompts
        from .exposure import exposure_bias

        opts = self.options
        examples, source = self.prompt_examples(ctx, opts.limit)
        examples = examples[:opts.limit]
        prompts, _, dropped = tokenize_prompts(
            examples, ctx.tokenizer, prompt_format=ctx.prompt_format, add_bos=ctx.add_bos,
            max_prompt_tokens=ctx.max_prompt_tokens,
        )
        if not prompts:
            raise MinillmError(f"exposure: every prompt of suite '{opts.suite}' is longer than {ctx.max_prompt_tokens} tokens")
        teacher = ctx.teacher()   # also sets ctx.vocab_width to the vocabulary both models share
        seed = opts.seed if opts.seed is not None else ctx.seeds[0]
        ctx.log(f"{ctx.model_name}: exposure bias against {ctx.teacher_name} on {len(prompts)} prompts")
        curve = _finite(exposure_bias(
            ctx.model, teacher, ctx.tokenizer, prompts, max_len=opts.max_len, seed=seed,
            vocab_width=ctx.vocab_width, batch_size=ctx.batch_size,
        ))
        at = min(16, opts.max_len)
        metrics = {f"exaccerr_at_{at}": curve["exaccerr"][at - 1], "R_at_max": curve["R"][-1],
                   "epsilon_at_max": curve["epsilon"][-1]}
        return SuiteResult(
            suite=self.name,
            metrics={k: v for k, v in metrics.items() if v is not None},
            headline=f"exaccerr_at_{at}" if metrics[f"exaccerr_at_{at}"] is not None else None,
            details={**curve, "dropped_long_prompts": dropped},
            settings={"prompts": source, "options": dataclasses.asdict(opts), "seed": seed, "teacher": ctx.teacher_name,
                      "vocab_width": ctx.vocab_width},
            curves={"exposure_bias": {
                "x": curve["lengths"], "y": curve["exaccerr"], "xlabel": "generation length l (tokens)",
                "ylabel": "ExAccErr(l) (%)", "title": "Exposure bias: excess accumulated error",
                "lower_is_better": True,
            }},
        )


# --- calibration -------------------------------------------------------------------------------------------------


@dataclass
class CalibrationOptions:
    task: str = option("sst2", "Folder of the data dir holding the choice suite (sst2, boolq, …).")
    split: str = option("test", "File of that folder: <task>/<split>.jsonl.")
    path: Optional[str] = option(None, "A choice-suite file to read instead of the data dir.")
    limit: Optional[int] = option(None, "Use only the first N examples (default: --limit).")
    bins: int = option(10, "Equal-width confidence bins of the ECE.")

    def validate(self) -> list:
        return [] if self.bins >= 1 else [f"bins must be >= 1, got {self.bins}"]


_CHOICE_FORMAT = (
    "JSONL with sentence and label (SST-2: 0 negative, 1 positive), or question, passage and answer (BoolQ), "
    "or prompt, choices and label"
)


class CalibrationEvaluator(Evaluator):
    name = "calibration"
    help = "Expected calibration error on zero-shot classification (SST-2 or BoolQ; lower is better)."
    Options = CalibrationOptions

    def locate(self, ctx: EvalContext) -> Path:
        opts = self.options
        path, _ = locate_data(opts.path, ctx.data_dir, [Path(opts.task, f"{opts.split}.jsonl")])
        if opts.path and not path.is_file():
            raise MinillmError(f"calibration.path {opts.path} is not a file; pass a file ({_CHOICE_FORMAT})")
        if path is not None:
            return path
        target = suggested_path(ctx.data_dir, opts.task, opts.split)
        raise MinillmError(
            f"no data for suite 'calibration': put the {opts.task} set at {target} ({_CHOICE_FORMAT}), pass "
            f"--data-dir DIR (or set {DATA_DIR_ENV}) with {opts.task}/{opts.split}.jsonl inside, or "
            "--set calibration.path=FILE"
        )

    def check(self, ctx: EvalContext) -> None:
        self.locate(ctx)

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        from .calibration import expected_calibration_error, load_choice_suite, reliability_diagram, score_choices

        opts = self.options
        path = self.locate(ctx)
        examples = load_choice_suite(path)
        limit = opts.limit if opts.limit is not None else ctx.limit
        examples = examples[:limit] if limit is not None else examples
        ctx.log(f"{ctx.model_name}: calibration on {len(examples)} examples of {path}")
        confidences, correct = score_choices(
            ctx.model, ctx.tokenizer, examples, prompt_format=ctx.prompt_format, batch_size=ctx.batch_size,
            add_bos=ctx.add_bos,
        )
        result = expected_calibration_error(confidences, correct, bins=opts.bins)
        files = {}
        if ctx.output_dir is not None:
            try:
                files["reliability_diagram"] = str(reliability_diagram(
                    result, Path(ctx.output_dir) / "reliability.png", title=f"{ctx.model_name} on {opts.task}"
                ))
            except MinillmError as exc:   # matplotlib missing: the numbers still count
                ctx.log(f"[yellow]{exc}[/]")
        return SuiteResult(
            suite=self.name,
            metrics={"ece": result["ece"], "accuracy": 100.0 * result["accuracy"], "mce": result["mce"]},
            headline="ece",
            details=_finite(result),
            settings={"source": str(path), "examples": len(examples), "options": dataclasses.asdict(opts)},
            files=files,
        )


# --- judge ---------------------------------------------------------------------------------------------------------


@dataclass
class JudgeOptions:
    url: Optional[str] = option(None, "OpenAI-compatible API base (or full chat-completions URL); --judge-url.")
    model: Optional[str] = option(None, "The judge model's name, e.g. gpt-4; --judge-model.")
    api_key_env: str = option("MINILLM_JUDGE_API_KEY", "Environment variable holding the API key (never stored).")
    suite: str = option("default", "Instruction suite (or JSONL file) whose prompts and gold responses are judged.")
    limit: Optional[int] = option(None, "Judge only the first N examples (default: --limit).")
    seed: Optional[int] = option(None, "Generation seed of the judged responses (default: the first of --seeds).")
    timeout: float = option(60.0, "Seconds per judge request.")
    retries: int = option(2, "Further attempts after a failed or unparsable judge reply.")

    def validate(self) -> list:
        problems = []
        if not self.url:
            problems.append("judge.url is required: pass --judge-url URL (an OpenAI-compatible API base)")
        if not self.model:
            problems.append("judge.model is required: pass --judge-model NAME")
        return problems


class JudgeEvaluator(_PromptsFromSuite):
    name = "judge"
    help = "LLM-as-judge (the paper's GPT-4 feedback): model total / gold total of 1-10 scores, ×100."
    Options = JudgeOptions

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        import json

        from ..atomic import atomic_open
        from . import protocol
        from .judge import JudgeClient, judge

        opts = self.options
        client = JudgeClient(opts.url, opts.model, api_key_env=opts.api_key_env, timeout=opts.timeout, retries=opts.retries)
        limit = opts.limit if opts.limit is not None else ctx.limit
        examples, source = self.prompt_examples(ctx, limit)
        seed = opts.seed if opts.seed is not None else ctx.seeds[0]
        by_seed, dropped = protocol.sample(dataclasses.replace(ctx, seeds=[seed]), examples, opts.suite)
        records = by_seed[seed]
        items = [
            {"instruction": r["instruction"], "input": r["input"], "output": r["generation"], "reference": r["references"][0]}
            for r in records
        ]
        ctx.log(f"{ctx.model_name}: judging {len(items)} responses with {opts.model}")
        verdict = judge(client, items)
        files = {}
        if ctx.output_dir is not None:
            path = Path(ctx.output_dir) / "judged.jsonl"
            with atomic_open(path) as handle:
                for record, scores in zip(records, verdict["scores"]):
                    handle.write(json.dumps({**record, "judge": scores}, ensure_ascii=False) + "\n")
            files["judged"] = str(path)
        metrics = {"failures": float(verdict["failures"])}
        if verdict["ratio"] is not None:
            # ×100 like the paper's tables: the model's total as a percentage of the gold responses' total.
            metrics = {"judge_ratio": 100.0 * verdict["ratio"], **metrics}
        return SuiteResult(
            suite=self.name,
            metrics=metrics,
            headline="judge_ratio" if verdict["ratio"] is not None else None,
            details={**{k: verdict[k] for k in ("model_total", "gold_total", "scored", "failures", "errors")},
                     "dropped_long_prompts": dropped},
            settings={"prompts": source, "seed": seed, "judge_model": opts.model, "judge_url": opts.url,
                      "options": {k: v for k, v in dataclasses.asdict(opts).items()}},
            files=files,
        )


BUILTIN_ANALYSES = (ExposureEvaluator, CalibrationEvaluator, JudgeEvaluator)
