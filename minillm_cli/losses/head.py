"""Token losses from hidden states, computed in chunks of tokens.

Only the response tokens a loss counts are gathered ([N, H], small); the vocabulary projection and the
divergence run on chunks of ``chunk_tokens`` of them under activation checkpointing, so at most one chunk's
[chunk, vocab] logits of each model exist at a time, in the forward pass and in the backward pass alike.
Every loss returns (sum over its tokens) / ``num_tokens``: the caller passes the token count of the whole
optimizer step, so the per-token mean is taken exactly once.

When a gradient is needed and the head declares its parameters (``forward.output_head`` does), the chunks go
through ``fused.fused_chunk_sum`` instead of checkpointing: each chunk is projected and differentiated once,
in the forward pass, so neither model's projection is recomputed in the backward pass (same values, same
gradients, less work). Per chunk the divergence runs straight on the [chunk, V] logits (no masking, no index
copies: every gathered row counts).
"""

from __future__ import annotations

from typing import Optional

from ..models.forward import Forward
from .chunks import checkpointed, chunk_bounds, fused_parameters, per_token_denominator


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

    if not isinstance(teacher, Forward):  # offline top-k teacher logits (data.teacher_logits): losses.cached
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

    params = fused_parameters(student_rows, student.head)
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
        return total / per_token_denominator(num_tokens, student_rows.shape[0])
    for start, end in chunk_bounds(student_rows.shape[0], chunk_tokens):
        total = total + checkpointed(chunk_loss, student_rows[start:end], teacher_rows[start:end])
    return total / per_token_denominator(num_tokens, student_rows.shape[0])


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

    params = fused_parameters(rows, student.head)
    if params is not None:
        from .fused import cross_entropy_value_and_grad, fused_chunk_sum

        total = fused_chunk_sum(lambda chunk, chunk_targets: cross_entropy_value_and_grad(student.head(chunk), chunk_targets),
                                rows, (targets,), params, chunk_tokens)
        return total / per_token_denominator(num_tokens, rows.shape[0])
    for start, end in chunk_bounds(rows.shape[0], chunk_tokens):
        total = total + checkpointed(chunk_loss, rows[start:end], targets[start:end])
    return total / per_token_denominator(num_tokens, rows.shape[0])
