"""Decoding settings (``SamplingConfig``, the paper's defaults) and the left padding of a batch of prompts: what
every sampler of the project shares (``generation``, ``decoding``, the rollouts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import MinillmError


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
        """transformers' GenerationConfig of these settings: what ``model.generate`` would need for the same
        sampling (``bench/rollout_speed.py`` times it as the reference; minillm samples with ``sampling_loop``)."""
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
