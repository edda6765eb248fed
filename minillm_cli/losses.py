"""Token losses from hidden states, computed in chunks of tokens.

Only the response tokens a loss counts are gathered ([N, H], small); the vocabulary projection and the
divergence run on chunks of ``chunk_tokens`` of them under activation checkpointing, so at most one chunk's
[chunk, vocab] logits of each model exist at a time, in the forward pass and in the backward pass alike.
Every loss returns (sum over its tokens) / ``num_tokens``: the caller passes the token count of the whole
optimizer step, so the per-token mean is taken exactly once.
"""

from __future__ import annotations

from typing import Optional

from .forward import Forward


def _chunks(total: int, chunk_tokens: Optional[int]):
    size = total if not chunk_tokens or chunk_tokens <= 0 else chunk_tokens
    for start in range(0, total, max(size, 1)):
        yield start, min(start + size, total)


def _maybe_checkpoint(function, *args):
    import torch
    from torch.utils.checkpoint import checkpoint

    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def _denominator(num_tokens, fallback: int):
    return float(num_tokens) if num_tokens is not None else float(max(fallback, 1))


def distill_loss(
    divergence: str,
    student: Forward,
    teacher: Forward,
    mask,
    *,
    num_tokens=None,
    chunk_tokens: Optional[int] = None,
    **options,
):
    """Σ over masked tokens of divergence(student ‖ teacher) / num_tokens, e.g. ``distill_loss("fkl", …)``."""
    import torch

    from .divergences import token_divergence

    mask = mask.bool()
    student_rows = student.hidden[mask]                  # [N, H], keeps the graph to the student
    teacher_rows = teacher.hidden[mask]
    total = student_rows.new_zeros((), dtype=torch.float32)

    def chunk_loss(student_chunk, teacher_chunk):
        student_logits = student.head(student_chunk)
        with torch.no_grad():
            teacher_logits = teacher.head(teacher_chunk)
        per_token = token_divergence(divergence, student_logits[None], teacher_logits[None], **options)
        return per_token.sum()

    for start, end in _chunks(student_rows.shape[0], chunk_tokens):
        total = total + _maybe_checkpoint(chunk_loss, student_rows[start:end], teacher_rows[start:end])
    return total / _denominator(num_tokens, student_rows.shape[0])


def lm_loss(student: Forward, labels, mask, *, num_tokens=None, chunk_tokens: Optional[int] = None):
    """Σ over masked tokens of −log q(label) / num_tokens (cross-entropy in float32)."""
    import torch
    import torch.nn.functional as F

    mask = mask.bool()
    rows = student.hidden[mask]
    targets = labels[mask]
    total = rows.new_zeros((), dtype=torch.float32)

    def chunk_loss(chunk, chunk_targets):
        logits = student.head(chunk).float()
        return F.cross_entropy(logits, chunk_targets, reduction="sum")

    for start, end in _chunks(rows.shape[0], chunk_tokens):
        total = total + _maybe_checkpoint(chunk_loss, rows[start:end], targets[start:end])
    return total / _denominator(num_tokens, rows.shape[0])
