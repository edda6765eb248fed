"""Helpers shared by the builtin objectives: weighted sums of the engine's losses, option-dependent needs.

No divergence is computed here: every term comes from ``losses.lm_loss`` / ``losses.distill_loss``, which sum
over the loss tokens and divide by ``ctx.num_tokens`` (the token count of the whole optimizer step), so every
term, every metric and their weighted sum add up correctly over micro-batches and processes.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from ...objective import LossOutput


class needs_by_options:
    """A ``needs`` that depends on the options.

    ``Objective.needs`` is a ClassVar, but what SeqKD or GKD need depends on their options (a teacher only when
    ``ratio > 0``; teacher samples only with ``seq_kd``). Read on the class this descriptor gives every need the
    objective may have (for listings); read on an instance it gives exactly what those options need, so the
    engine loads nothing it does not use.
    """

    def __init__(self, possible: Iterable[str], compute: Callable[[object], Iterable[str]]):
        self.possible = frozenset(possible)
        self.compute = compute

    def __get__(self, instance, owner=None):
        if instance is None:
            return self.possible
        return frozenset(self.compute(instance.options))


def weighted_loss(
    batch,
    ctx,
    *,
    ce_weight: float = 0.0,
    divergence: Optional[str] = None,
    divergence_weight: float = 0.0,
    metric: Optional[str] = None,
    **divergence_options,
) -> LossOutput:
    """``ce_weight · CE + divergence_weight · D(student ‖ teacher)`` on the batch's loss tokens.

    A term whose weight is 0 is not computed at all (no teacher forward pass for pure cross-entropy). The metrics
    hold each computed term unweighted, normalised like the loss (token sum / ctx.num_tokens).
    """
    from ...losses.head import distill_loss, lm_loss

    student = ctx.student_forward(batch)
    loss = None
    metrics: dict[str, float] = {}
    if ce_weight and divergence is not None and divergence_weight:
        # Both terms from one projection of the student's hidden states (losses.fused), when that path applies.
        from ...losses.fused import weighted_ce_and_divergence
        from ...models.forward import Forward

        teacher = ctx.teacher_forward(batch)   # a Forward, or a cached, served or aligned teacher (its own loss)
        both = None if not isinstance(teacher, Forward) else weighted_ce_and_divergence(
            student, teacher, batch.labels, batch.loss_mask, ce_weight=ce_weight, divergence=divergence,
            divergence_weight=divergence_weight, num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens,
            **divergence_options,
        )
        if both is not None:
            loss, ce, value = both
            metrics["ce"], metrics[metric or divergence] = float(ce), float(value)
            return LossOutput(loss, metrics)
        ctx = _Reuse(ctx, teacher)   # the teacher's forward pass is not run twice
    if ce_weight:
        ce = lm_loss(student, batch.labels, batch.loss_mask, num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens)
        metrics["ce"] = float(ce.detach())
        loss = ce_weight * ce
    if divergence is not None and divergence_weight:
        teacher = ctx.teacher_forward(batch)
        value = distill_loss(
            divergence, student, teacher, batch.loss_mask,
            num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens, **divergence_options,
        )
        metrics[metric or divergence] = float(value.detach())
        loss = divergence_weight * value if loss is None else loss + divergence_weight * value
    if loss is None or not loss.requires_grad:
        # A micro-batch without loss tokens (or with every weight 0) still has to give the engine a loss it can
        # call backward() on; zero times the hidden states keeps the graph and adds nothing.
        zero = student.hidden.float().sum() * 0.0
        loss = zero if loss is None else loss + zero
    return LossOutput(loss, metrics)


class _Reuse:
    """A step context whose ``teacher_forward`` returns a forward pass already made."""

    def __init__(self, ctx, teacher):
        self._ctx, self._teacher = ctx, teacher

    def teacher_forward(self, batch):
        return self._teacher

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def pad_id_of(batch) -> int:
    """The pad id of a batch made by ``batches.make_batch``.

    Batches do not carry their pad id; ``make_batch`` fills labels with it and overwrites all but the last
    column, so ``labels[:, -1]`` is always the pad id. (Any valid id would do: padded positions are masked out
    of attention and of every loss.) ``extras["pad_id"]`` wins when an engine sets it.
    """
    if "pad_id" in batch.extras:
        return int(batch.extras["pad_id"])
    return int(batch.labels[0, -1])


def in_unit_interval(name: str, value: float) -> list[str]:
    return [] if 0.0 <= value <= 1.0 else [f"{name} must be in [0, 1], got {value}"]


def non_negative(name: str, value: float) -> list[str]:
    return [] if value >= 0 else [f"{name} must be >= 0, got {value}"]
