"""Token losses from hidden states, computed in chunks of tokens.

Only the response tokens a loss counts are gathered ([N, H], small); the vocabulary projection and the
divergence run on chunks of ``chunk_tokens`` of them under activation checkpointing, so at most one chunk's
[chunk, vocab] logits of each model exist at a time, in the forward pass and in the backward pass alike.
Every loss returns (sum over its tokens) / ``num_tokens``: the caller passes the token count of the whole
optimizer step, so the per-token mean is taken exactly once.

When a gradient is needed and the head declares its parameters (``forward.output_head`` does), the chunks go
through ``fused_head.fused_chunk_sum`` instead of checkpointing: each chunk is projected and differentiated once,
in the forward pass, so neither model's projection is recomputed in the backward pass (same values, same
gradients, less work). Per chunk the divergence runs straight on the [chunk, V] logits (no masking, no index
copies: every gathered row counts).
"""

from __future__ import annotations

from typing import Optional

from ..models.forward import Forward


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


def _fused_parameters(rows, head):
    """The head's parameters when the fused path applies (a gradient is needed and the head declared them)."""
    import torch

    from .fused import head_parameters

    params = head_parameters(head)
    if params is None or not torch.is_grad_enabled():
        return None
    return params if rows.requires_grad or any(p.requires_grad for p in params) else None


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

    from .divergences import rows_divergence
    from ..training.teacher_cache import CachedTeacher

    if isinstance(teacher, CachedTeacher):  # offline top-k teacher logits (data.teacher_logits)
        return teacher.distill_loss(divergence, student, mask, num_tokens=num_tokens, chunk_tokens=chunk_tokens,
                                    **options)
    mask = mask.bool()
    student_rows = student.hidden[mask]                  # [N, H], keeps the graph to the student
    teacher_rows = teacher.hidden[mask]
    total = student_rows.new_zeros((), dtype=torch.float32)

    def chunk_loss(student_chunk, teacher_chunk):
        student_logits = student.head(student_chunk)
        with torch.no_grad():
            teacher_logits = teacher.head(teacher_chunk)
        return rows_divergence(divergence, student_logits, teacher_logits, **options).sum()

    params = _fused_parameters(student_rows, student.head)
    if params is not None:
        from .fused import fused_chunk_sum, value_and_grad

        def teacher_logits(chunk):
            with torch.no_grad():
                return teacher.head(chunk)

        def fused_chunk(student_chunk, teacher_chunk):
            # The teacher's logits are made inside value_and_grad, which drops them as soon as it can.
            return value_and_grad(divergence, student.head(student_chunk), lambda: teacher_logits(teacher_chunk),
                                  **options)

        total = fused_chunk_sum(fused_chunk, student_rows, (teacher_rows,), params, chunk_tokens)
        return total / _denominator(num_tokens, student_rows.shape[0])
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
        logits = student.head(chunk)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64 (tests)
        return F.cross_entropy(logits, chunk_targets, reduction="sum")

    params = _fused_parameters(rows, student.head)
    if params is not None:
        from .fused import cross_entropy_value_and_grad, fused_chunk_sum

        total = fused_chunk_sum(lambda chunk, chunk_targets: cross_entropy_value_and_grad(student.head(chunk), chunk_targets),
                                rows, (targets,), params, chunk_tokens)
        return total / _denominator(num_tokens, rows.shape[0])
    for start, end in _chunks(rows.shape[0], chunk_tokens):
        total = total + _maybe_checkpoint(chunk_loss, rows[start:end], targets[start:end])
    return total / _denominator(num_tokens, rows.shape[0])
