"""The work behind ``minillm generate``: load, tokenise, sample for each seed, write JSONL."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .atomic import atomic_open
from .errors import MinillmError
from .generation import GenerationStats, SamplingConfig, generate


def pick_device(device: Optional[str]):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_generate(
    *,
    model: str,
    prompts: str,
    out: Optional[Path],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    split: Optional[str] = None,
    fields: Optional[str] = None,
    limit: Optional[int] = None,
    prompt_format: Optional[str] = None,
    family: Optional[str] = None,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    dtype: str = "fp32",
    device: Optional[str] = None,
    quiet: bool = False,
) -> GenerationStats:
    """Generate for every (prompt, seed) and write one JSON line each; returns timing statistics."""
    from rich.console import Console

    from .data import format_prompt, load_instructions, tokenize_prompts
    from .models import load_model, load_tokenizer, resolve_model

    console = Console(stderr=True, quiet=quiet)
    examples = load_instructions(prompts, fields=fields, split=split, limit=limit)
    if not examples:
        raise MinillmError(f"no examples in '{prompts}'; nothing to generate")
    ref = resolve_model(model, family=family)
    chosen_format = prompt_format or ref.family.prompt_format
    tokenizer = load_tokenizer(ref)
    prompt_ids, kept, dropped = tokenize_prompts(
        examples, tokenizer, prompt_format=chosen_format, add_bos=ref.family.add_bos,
        max_prompt_tokens=max_prompt_tokens,
    )
    if dropped:
        console.print(f"[yellow]skipped {dropped} prompt(s) longer than {max_prompt_tokens} tokens[/]")
    lm = load_model(ref, dtype=dtype, device=pick_device(device))
    stats = GenerationStats()
    records = []
    for seed in seeds:
        generations = _generate_with_progress(console, lm, tokenizer, prompt_ids, sampling, seed, batch_size, stats)
        for index, generation in zip(kept, generations):
            example = examples[index]
            records.append({
                **example.fields,
                "prompt": format_prompt(example, chosen_format, tokenizer),
                "generation": tokenizer.decode(generation.token_ids, skip_special_tokens=True),
                "num_tokens": len(generation.token_ids),
                "finished": generation.finished,
                "seed": seed,
                "model": model,
            })
    _write_jsonl(records, out)
    console.print(
        f"generated {stats.sequences} responses, {stats.tokens} tokens in {stats.seconds:.1f} s "
        f"({stats.tokens_per_second:.1f} tokens/s)" + (f" -> {out}" if out else "")
    )
    return stats


def _generate_with_progress(console, model, tokenizer, prompt_ids, sampling, seed, batch_size, stats):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started_tokens, started = stats.tokens, time.perf_counter()
    with Progress(
        TextColumn(f"seed {seed}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("generate", total=len(prompt_ids), speed="")

        def on_batch(sequences: int, _tokens: int) -> None:
            rate = (stats.tokens - started_tokens) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=sequences, speed=f"{rate:.1f} tok/s")

        return generate(
            model, tokenizer, prompt_ids, sampling, seed=seed, batch_size=batch_size, on_batch=on_batch, stats=stats
        )


def _write_jsonl(records, out: Optional[Path]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
        return
    with atomic_open(out) as handle:
        handle.write(lines)
