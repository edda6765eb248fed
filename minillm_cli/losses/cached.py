"""The distillation loss against cached top-k teacher log-probabilities (``data.teacher_logits``) on k + 1 buckets.

The teacher's rows come from ``training.teacher_cache`` (where the bucket approximation and its error are
described); here the student's distribution is aggregated onto the same buckets and the divergence is taken
between the two, chunk by chunk, through the same chunked and fused paths as ``losses.head``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunks import checkpointed, chunk_bounds, fused_parameters, per_token_denominator


@dataclass
class CachedTeacher:
    """The cached teacher rows of one batch, aligned with ``hidden[loss_mask]`` (row-major)."""

    topk_ids: "object"        # [N, k] long
    topk_logprobs: "object"   # [N, k] float32
    rest_logprob: "object"    # [N] float32

    def distill_loss(self, divergence: str, student, mask, *, num_tokens=None, chunk_tokens=None, **options):
        """Σ over the loss tokens of D(Q ‖ P) on the k + 1 buckets / num_tokens (see the module docstring)."""
        import torch

        from .divergences import DIVERGENCES
        from .fused import fused_chunk_sum

        rows = student.hidden[mask.bool()]
        if rows.shape[0] != self.topk_ids.shape[0]:
            raise RuntimeError(f"{rows.shape[0]} loss tokens but {self.topk_ids.shape[0]} cached teacher rows")
        try:
            kernel = DIVERGENCES[divergence]
        except KeyError:
            from ..errors import unknown_name

            raise unknown_name("divergence", divergence, DIVERGENCES) from None

        def chunk_loss(chunk, ids, teacher_top, teacher_rest):
            return bucket_divergence(kernel, student.head(chunk), ids, teacher_top, teacher_rest, **options).sum()

        extras = self.rows()
        params = fused_parameters(rows, student.head)
        if params is not None:
            total = fused_chunk_sum(chunk_loss, rows, extras, params, chunk_tokens)
        else:
            total = rows.new_zeros((), dtype=torch.float32)
            for start, end in chunk_bounds(rows.shape[0], chunk_tokens):
                total = total + checkpointed(chunk_loss, rows[start:end], *(e[start:end] for e in extras))
        return total / per_token_denominator(num_tokens, rows.shape[0])

    def rows(self) -> tuple:
        """(topk_ids, topk_logprobs, rest_logprob): the teacher's rows, sliced together chunk by chunk."""
        return (self.topk_ids, self.topk_logprobs, self.rest_logprob)


def bucket_divergence(kernel, student_logits, ids, teacher_top, teacher_rest, **options):
    """Per token, ``kernel`` (a ``divergences.DIVERGENCES`` entry) between the student's k + 1 buckets at ``ids`` and
    the teacher's (its top log-probabilities and rest, renormalised to sum to one)."""
    import torch

    student_buckets = bucket_logprobs(student_logits, ids)
    teacher_buckets = torch.cat([teacher_top, teacher_rest.unsqueeze(-1)], dim=-1).to(student_buckets.dtype)
    teacher_buckets = teacher_buckets - torch.logsumexp(teacher_buckets, dim=-1, keepdim=True)
    return kernel(student_buckets, teacher_buckets, **options)


def bucket_logprobs(logits, ids):
    """log Q on the k + 1 buckets: log q at ``ids`` [N, k], then log q(rest) = logsumexp over the other entries."""
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = torch.logsumexp(logits, dim=-1, keepdim=True)
    top = logits.gather(-1, ids) - total
    rest = torch.logsumexp(logits.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True) - total
    return torch.cat([top, rest], dim=-1)
