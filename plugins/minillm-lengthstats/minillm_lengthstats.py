"""An example third-party minillm plugin: the evaluation suite ``lengthstats``.

It samples responses exactly as the Rouge-L suites do (``minillm eval``'s seeds and sampling options) and reports
response length statistics and the end-of-text rate. It subclasses the public ``InstructionSuite``, so the data
lookup (``--set lengthstats.path=FILE``, ``.hub``, ``.fields``, ``.limit``) is the builtin suites'; without a
path its prompts are the embedded validation split, like the ``default`` suite.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from minillm_cli import EvalContext, SuiteResult, hookimpl
from minillm_cli.evaluation.suites import DefaultSuite, InstructionSuite, SuiteOptions

__version__ = "0.1.0"

METRICS = ("eos_rate", "mean_tokens", "median_tokens", "p90_tokens", "max_tokens", "mean_words", "empty_rate", "length_ratio")


@dataclass
class LengthStatsOptions(SuiteOptions):
    """The builtin suites' data options (path, split, hub, fields, limit); no path: the embedded validation split."""


def length_stats(records: list) -> dict:
    """The statistics of one seed's generation records (``num_tokens``, ``finished``, ``generation``, ``references``)."""
    tokens = sorted(r["num_tokens"] for r in records)
    word_counts = [len(r["generation"].split()) for r in records]
    reference_words = [len(r["references"][0].split()) if r["references"] else 0 for r in records]
    count = len(records)
    mean_words = sum(word_counts) / count
    mean_reference_words = sum(reference_words) / count
    return {
        "eos_rate": 100.0 * sum(1 for r in records if r["finished"]) / count,
        "mean_tokens": sum(tokens) / count,
        "median_tokens": float(statistics.median(tokens)),
        "p90_tokens": float(tokens[min(count - 1, int(0.9 * count))]),
        "max_tokens": float(tokens[-1]),
        "mean_words": mean_words,
        "empty_rate": 100.0 * sum(1 for w in word_counts if w == 0) / count,
        "length_ratio": mean_words / mean_reference_words if mean_reference_words else 0.0,
    }


def length_cdf(records: list, max_tokens: int) -> dict:
    """Fraction of responses of at most x tokens, for x = 0 … max_tokens."""
    tokens = [r["num_tokens"] for r in records]
    xs = list(range(max_tokens + 1))
    return {"x": xs, "y": [sum(1 for t in tokens if t <= x) / len(tokens) for x in xs],
            "xlabel": "response tokens", "ylabel": "fraction of responses"}


class LengthStats(InstructionSuite):
    name = "lengthstats"
    help = (
        "Response length statistics (tokens: mean, median, p90, max; words; empty responses; length relative to "
        "the gold responses) and the end-of-text rate, sampled with the paper's protocol. Example plugin "
        "minillm-lengthstats."
    )
    Options = LengthStatsOptions
    folder = "lengthstats"

    def _uses_default_data(self) -> bool:
        return not (self.options.path or self.options.hub)

    def check(self, ctx: EvalContext) -> None:
        if not self._uses_default_data():
            super().check(ctx)

    def load(self, ctx: EvalContext) -> tuple:
        if self._uses_default_data():
            return DefaultSuite(DefaultSuite.Options(limit=self.options.limit)).load(ctx)
        return super().load(ctx)

    def evaluate(self, ctx: EvalContext) -> SuiteResult:
        from minillm_cli.evaluation import protocol

        examples, settings = self.load(ctx)
        settings["options"] = asdict(self.options)
        ctx.log(f"{ctx.model_name} on {self.name}: {len(examples)} prompts × {len(ctx.seeds)} seeds")
        by_seed, dropped = protocol.sample(ctx, examples, self.name)
        per_seed = {seed: length_stats(records) for seed, records in by_seed.items()}
        metrics = {}
        for key in METRICS:
            values = [per_seed[seed][key] for seed in per_seed]
            metrics[key] = sum(values) / len(values)
            metrics[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        files = {}
        if ctx.output_dir is not None:
            # Not named seed-*.jsonl: `minillm eval --from-generations` re-scores those files by Rouge-L.
            ctx.output_dir.mkdir(parents=True, exist_ok=True)
            path = ctx.output_dir / "responses.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                for records in by_seed.values():
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            files["responses"] = str(path)
        all_records = [r for records in by_seed.values() for r in records]
        return SuiteResult(
            suite=self.name, metrics=metrics, headline="eos_rate",
            details={"per_seed": {str(s): v for s, v in per_seed.items()}, "dropped_long_prompts": dropped,
                     "max_new_tokens": ctx.sampling.max_new_tokens},
            settings=settings,
            curves={"response_length_cdf": length_cdf(all_records, ctx.sampling.max_new_tokens)},
            files=files,
        )


@hookimpl
def register_evaluators(register):
    register(LengthStats)
