"""The paper's generation protocol (docs/method.md §4): sample per seed, score, average over seeds.

For every generation seed the model samples one response per prompt (``generation.generate``, the RNG seeded
once per seed, so a seed reproduces its samples for the same prompts and batch size). Each seed is scored on
its own: Rouge-L (``metrics.rouge``: rouge_score, stemming, F-measure, best reference, ×100) averaged over
examples, exact match, Rouge-L per reference-length bucket and Dist-4; a reported number is the mean over
seeds, with the sample standard deviation over seeds beside it (``<metric>_std``).

Generations are saved as ``seed-<seed>.jsonl`` (one record per example, references included), so that
``score_saved`` recomputes every generation-based number without the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_open
from ..errors import MinillmError
from .rouge import rouge_l
from .metrics import LENGTH_BUCKETS, bucket_means, distinct_n, exact_match, mean_std

GENERATIONS_GLOB = "seed-*.jsonl"


def generations_file(folder: Path, seed: int) -> Path:
    return Path(folder) / f"seed-{seed}.jsonl"


def sample(ctx, examples: Sequence, suite: str) -> tuple:
    """Sample every example's prompt once per seed: ({seed: records}, number of prompts dropped as too long).

    A record keeps what re-scoring needs (references) and what a reader wants to see (prompt, generation).
    """
    from ..data.prompts import format_prompt
    from ..data.tokenization import tokenize_prompts
    from ..models.generation import generate_with_progress
    from ..models.generation import GenerationStats, generate

    prompt_ids, kept, dropped = tokenize_prompts(
        examples, ctx.tokenizer, prompt_format=ctx.prompt_format, add_bos=ctx.add_bos,
        max_prompt_tokens=ctx.max_prompt_tokens,
    )
    if not prompt_ids:
        raise MinillmError(
            f"suite '{suite}': all {len(examples)} prompts are longer than {ctx.max_prompt_tokens} tokens; "
            "raise --max-prompt-tokens"
        )
    prompts = [format_prompt(examples[i], ctx.prompt_format, ctx.tokenizer) for i in kept]
    stats = GenerationStats()
    by_seed = {}
    for seed in ctx.seeds:
        if ctx.quiet or ctx.console is None:
            generations = generate(
                ctx.model, ctx.tokenizer, prompt_ids, ctx.sampling, seed=seed, batch_size=ctx.batch_size, stats=stats
            )
        else:
            generations = generate_with_progress(
                ctx.console, ctx.model, ctx.tokenizer, prompt_ids, ctx.sampling, seed, ctx.batch_size, stats
            )
        by_seed[seed] = [
            {
                "index": index,
                "instruction": examples[index].instruction,
                "input": examples[index].input,
                "references": list(examples[index].references),
                "prompt": prompt,
                "generation": ctx.tokenizer.decode(generation.token_ids, skip_special_tokens=True),
                "num_tokens": len(generation.token_ids),
                "token_ids": list(generation.token_ids),
                "finished": generation.finished,
                "seed": seed,
                "model": ctx.model_name,
                "suite": suite,
            }
            for index, prompt, generation in zip(kept, prompts, generations)
        ]
    return by_seed, dropped


def score(by_seed: dict) -> tuple:
    """(metrics, details) of the generations of every seed; the same records always give the same numbers."""
    if not by_seed:
        raise MinillmError("no generations to score")
    per_seed = {}
    for seed in sorted(by_seed):
        records = by_seed[seed]
        predictions = [r["generation"] for r in records]
        references = [r["references"] for r in records]
        rouge = [rouge_l(p, refs) for p, refs in zip(predictions, references)]
        per_seed[seed] = {
            "rougeL": _mean(rouge),
            "exact_match": _mean([exact_match(p, refs) for p, refs in zip(predictions, references)]),
            "dist4": distinct_n(predictions, 4),
            "buckets": bucket_means(rouge, references),
            "mean_new_tokens": _mean([r["num_tokens"] for r in records]),
            "finished": 100.0 * _mean([1.0 if r["finished"] else 0.0 for r in records]),
        }
    metrics, spread = {}, {}
    for key in ("rougeL", "exact_match", "dist4"):
        metrics[key], metrics[f"{key}_std"] = mean_std([per_seed[s][key] for s in per_seed])
    for name, _, _ in LENGTH_BUCKETS:
        values = [per_seed[s]["buckets"][name]["mean"] for s in per_seed]
        count = per_seed[next(iter(per_seed))]["buckets"][name]["count"]
        if count:
            mean, std = mean_std(values)
            metrics[f"rougeL_len{name}"], metrics[f"rougeL_len{name}_std"] = mean, std
            spread[name] = {"mean": mean, "std": std, "count": count}
        else:
            spread[name] = {"mean": None, "std": None, "count": 0}
    first = by_seed[next(iter(sorted(by_seed)))]
    details = {
        "seeds": sorted(per_seed),
        "examples": len(first),
        "per_seed": {str(seed): values for seed, values in per_seed.items()},
        "length_buckets": spread,
        "mean_new_tokens": _mean([per_seed[s]["mean_new_tokens"] for s in per_seed]),
        "finished_percent": _mean([per_seed[s]["finished"] for s in per_seed]),
        "std": "sample standard deviation over seeds (n - 1); 0 for one seed",
        "word_tokenisation": "rouge_score DefaultTokenizer without stemming",
    }
    return metrics, details


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def write(folder: Path, by_seed: dict) -> dict:
    """Write one JSONL file per seed (stale seed files of an earlier run are removed); seed -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(GENERATIONS_GLOB):
        old.unlink()
    paths = {}
    for seed, records in by_seed.items():
        path = generations_file(folder, seed)
        with atomic_open(path) as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths[str(seed)] = str(path)
    return paths


def read(folder: Path) -> dict:
    """{seed: records} from the ``seed-*.jsonl`` files of ``folder`` (empty when there are none)."""
    by_seed = {}
    for path in sorted(Path(folder).glob(GENERATIONS_GLOB)):
        records = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MinillmError(f"{path}:{number}: invalid JSON ({exc.msg}); re-run minillm eval to regenerate it") from None
                missing = [k for k in ("generation", "references", "num_tokens", "finished") if k not in record]
                if missing:
                    raise MinillmError(
                        f"{path}:{number}: missing field(s) {', '.join(missing)}; this is not a file written by minillm eval"
                    )
                records.append(record)
        seed = _seed_of(path)
        by_seed[seed] = records
    return by_seed


def _seed_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        raise MinillmError(f"{path}: generation files are named seed-<integer>.jsonl; rename it") from None


def run(ctx, examples: Sequence, suite: str, *, settings: Optional[dict] = None, with_loss: bool = True,
        teacher_measures: bool = True, measures_limit: Optional[int] = None, measures_seeds: Optional[int] = None):
    """The whole protocol on one model: sample, save, score, the test loss on the references and, when a teacher is
    given and ``teacher_measures``, the mode-seeking measures (``mode_seeking``) on the first ``measures_limit``
    prompts and the samples of the first ``measures_seeds`` seeds."""
    from .base import SuiteResult
    from .metrics import test_loss

    if not examples:
        raise MinillmError(f"suite '{suite}' has no examples to evaluate")
    by_seed, dropped = sample(ctx, examples, suite)
    files = write(ctx.output_dir, by_seed) if ctx.output_dir is not None else {}
    metrics, details = score(by_seed)
    details["dropped_long_prompts"] = dropped
    if with_loss:
        loss = test_loss(
            ctx.model, ctx.tokenizer, examples, prompt_format=ctx.prompt_format, add_bos=ctx.add_bos,
            max_prompt_tokens=ctx.max_prompt_tokens, batch_size=ctx.batch_size,
        )
        if loss["loss"] is not None:
            metrics["test_loss"] = loss["loss"]
        details["test_loss"] = loss
    if teacher_measures and ctx.teacher_loader is not None:
        from .mode_seeking import mode_seeking_metrics

        kept = list(examples)[:measures_limit] if measures_limit else list(examples)
        seeds = sorted(by_seed)[:measures_seeds] if measures_seeds else sorted(by_seed)
        metrics.update(mode_seeking_metrics(
            ctx, kept, {seed: [r for r in by_seed[seed] if r["index"] < len(kept)] for seed in seeds}))
    return SuiteResult(
        suite=suite, metrics=metrics, headline="rougeL", details=details, settings=dict(settings or {}),
        files={f"generations_seed_{seed}": path for seed, path in files.items()},
    )


def rescore(folder: Path, stored) -> Optional[object]:
    """Recompute a stored result's generation-based numbers from its saved generations (None when it has none).

    Numbers that need the model (the test loss) are carried over from the stored result.
    """
    from .base import SuiteResult

    by_seed = read(folder)
    if not by_seed:
        return None
    metrics, details = score(by_seed)
    return SuiteResult(
        suite=stored.suite,
        metrics={**stored.metrics, **metrics},
        headline=stored.headline or "rougeL",
        details={**stored.details, **details},
        settings=stored.settings,
        curves=stored.curves,
        files={**stored.files, **{f"generations_seed_{s}": str(generations_file(folder, s)) for s in by_seed}},
    )
