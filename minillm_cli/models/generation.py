"""Batched sampling with a KV cache, shared by ``minillm generate``, evaluation, SeqKD and the on-policy
objectives' student samples (the loop itself: ``sampling_loop``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import MinillmError
from .context import check_fits
from .decoding import seeded_generator
from .sampling_loop import sample_batch
from .sampling import SamplingConfig, left_pad   # noqa: F401  (re-exported: the settings belong with generate)


@dataclass
class Generation:
    token_ids: list[int]       # new tokens, up to but excluding the first end-of-sequence token
    finished: bool             # ended with end-of-sequence within max_new_tokens


@dataclass
class GenerationStats:
    tokens: int = 0
    seconds: float = 0.0
    sequences: int = 0
    batch_times: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    *,
    seed: Optional[int] = None,
    batch_size: int = 8,
    on_batch: Optional[Callable[[int, int], None]] = None,
    stats: Optional[GenerationStats] = None,
) -> list[Generation]:
    """Sample one continuation per prompt, in batches, with the model's KV cache.

    With a seed, the result is a function of (seed, prompts, batch_size): one generator, seeded once, draws
    every token of every batch. ``on_batch(sequences_done, new_tokens)`` reports progress.
    """
    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise MinillmError("a prompt has no tokens; generation needs at least one prompt token")
    if prompts:
        longest = max(len(p) for p in prompts)
        check_fits(model, longest + config.max_new_tokens,
                   f"prompts of up to {longest} tokens plus {config.max_new_tokens} new tokens")
    eos_ids = _eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    device = next(model.parameters()).device
    # With a seed, one generator of our own draws every token; without, torch's default stream does, so that a
    # training run seeded once samples reproducibly.
    generator = seeded_generator(device, seed) if seed is not None else None
    results: list[Generation] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            started = time.perf_counter()
            rows = sample_batch(model, batch, config, eos_ids, pad, generator)
            elapsed = time.perf_counter() - started
            new_tokens = 0
            for tokens, finished in rows:
                results.append(Generation(tokens, finished))
                new_tokens += len(tokens) + finished
            if stats is not None:
                stats.tokens += new_tokens
                stats.seconds += elapsed
                stats.sequences += len(batch)
                stats.batch_times.append(elapsed)
            if on_batch is not None:
                on_batch(len(batch), new_tokens)
    finally:
        model.train(was_training)
    return results


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}


def generate_with_progress(console, model, tokenizer, prompt_ids, sampling, seed, batch_size, stats):
    """``generate`` for one seed with a transient progress bar on ``console`` that shows tokens per second."""
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
