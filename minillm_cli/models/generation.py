"""Batched sampling with a KV cache, shared by ``minillm generate``, evaluation and SeqKD."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import MinillmError
from .context import check_fits


@dataclass
class SamplingConfig:
    """Decoding settings; the defaults are the paper's (docs/method.md §2, §4): pure sampling at temperature 1."""

    temperature: float = 1.0        # 0 means greedy decoding
    top_k: int = 0                  # 0 disables top-k filtering
    top_p: float = 1.0
    max_new_tokens: int = 256
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if problems:
            raise MinillmError("; ".join(problems))

    def generation_config(self, tokenizer):
        from transformers import GenerationConfig

        sampling = self.temperature > 0
        # Every field is set explicitly: a model's own generation_config.json (top_k 50, say) must not leak in.
        return GenerationConfig(
            do_sample=sampling,
            temperature=self.temperature if sampling else 1.0,
            top_k=self.top_k if sampling else 0,
            top_p=self.top_p if sampling else 1.0,
            max_new_tokens=self.max_new_tokens,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            use_cache=True,
        )


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


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """A [batch, length] id tensor and its attention mask, padded on the left so every prompt ends together."""
    import torch

    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, length - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, length - len(prompt):] = 1
    return ids, mask


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

    With a seed, the result is a function of (seed, prompts, batch_size): the RNG is seeded once before the
    first batch. ``on_batch(sequences_done, new_tokens)`` reports progress.
    """
    import torch

    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise MinillmError("a prompt has no tokens; generation needs at least one prompt token")
    if prompts:
        longest = max(len(p) for p in prompts)
        check_fits(model, longest + config.max_new_tokens,
                   f"prompts of up to {longest} tokens plus {config.max_new_tokens} new tokens")
    generation_config = config.generation_config(tokenizer)
    eos_ids = _eos_ids(tokenizer, model)
    generation_config.eos_token_id = sorted(eos_ids)
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    results: list[Generation] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            ids, mask = left_pad(batch, tokenizer.pad_token_id)
            started = time.perf_counter()
            with torch.inference_mode():
                output = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=generation_config
                )
            elapsed = time.perf_counter() - started
            new_tokens = 0
            for row in output[:, ids.shape[1]:].tolist():
                cut = next((i for i, tok in enumerate(row) if tok in eos_ids), None)
                tokens = row if cut is None else row[:cut]
                results.append(Generation(tokens, cut is not None))
                new_tokens += len(tokens) + (cut is not None)
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
