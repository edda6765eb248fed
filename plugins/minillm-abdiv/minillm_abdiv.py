"""An example third-party minillm plugin: the α-β divergence objective ``abdiv``.

The AB-divergence (Cichocki, Cruces, Amari 2011), as used for distillation by ABKD (Wang et al., 2025), between
the teacher's next-token distribution p and the student's q, over the whole vocabulary:

    D_AB^(α,β)(p ‖ q) = −1/(αβ) Σ_v ( p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β) )      (α, β ≠ 0)

with the limits β → 0: 1/α² Σ ( p^α log(p^α / q^α) − p^α + q^α ) (α = 1: forward KL(p ‖ q)), and α → 0: the same
with p and q swapped (β = 1: reverse KL(q ‖ p)). It is registered through the public ``register_objectives``
hook and the ``minillm`` entry-point group, exactly as the builtin objectives are.
"""

from __future__ import annotations

from dataclasses import dataclass

from minillm_cli import LossOutput, Objective, StepContext, hookimpl, option

__version__ = "0.1.0"


def ab_divergence(student_logits, teacher_logits, alpha: float, beta: float):
    """D_AB^(α,β)(p ‖ q) per row: logits [..., V] of student (q) and teacher (p) in, [...] out (float32 or wider)."""
    import torch

    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q = torch.log_softmax(student_logits.to(dtype), dim=-1)
    log_p = torch.log_softmax(teacher_logits.to(dtype), dim=-1)
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta cannot both be 0")
    if beta == 0:
        return _generalised_kl(log_p, log_q, alpha)
    if alpha == 0:
        return _generalised_kl(log_q, log_p, beta)
    total = alpha + beta
    terms = (
        torch.exp(alpha * log_p + beta * log_q)
        - (alpha / total) * torch.exp(total * log_p)
        - (beta / total) * torch.exp(total * log_q)
    )
    return -terms.sum(-1) / (alpha * beta)


def _generalised_kl(log_a, log_b, power: float):
    """1/γ² Σ ( a^γ log(a^γ / b^γ) − a^γ + b^γ ): the AB-divergence's limit where the other exponent is 0.

    γ = 1 gives KL(a ‖ b). Entries with a = 0 contribute b^γ (0 log 0 = 0, no NaN from −inf − −inf)."""
    import torch

    a = torch.exp(power * log_a)
    b = torch.exp(power * log_b)
    log_ratio = torch.where(a > 0, power * (log_a - log_b), torch.zeros_like(log_a))
    return (a * log_ratio - a + b).sum(-1) / (power * power)


@dataclass
class ABDivOptions:
    alpha: float = option(0.5, "α ≥ 0: weight on covering the teacher's mass (α=1, β=0 is forward KL).")
    beta: float = option(0.5, "β ≥ 0: weight on the teacher's modes (α=0, β=1 is reverse KL); α + β > 0.")
    ce_weight: float = option(0.0, "Weight of an added cross-entropy term on the gold responses.")

    def validate(self) -> list[str]:
        problems = [f"{name} must be >= 0, got {value}" for name, value in
                    (("alpha", self.alpha), ("beta", self.beta), ("ce_weight", self.ce_weight)) if value < 0]
        if self.alpha + self.beta <= 0:
            problems.append("alpha + beta must be > 0 (alpha=1 beta=0 is forward KL, alpha=0 beta=1 reverse KL)")
        return problems


class ABDiv(Objective):
    name = "abdiv"
    help = (
        "α-β divergence D_AB(teacher ‖ student) over the vocabulary on the gold responses (ABKD, Wang et al. "
        "2025): alpha=1 beta=0 is forward KL (kd), alpha=0 beta=1 reverse KL (rkl); plus ce_weight·CE. "
        "Example plugin minillm-abdiv."
    )
    Options = ABDivOptions
    needs = frozenset({"gold", "teacher"})

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        import torch
        from torch.utils.checkpoint import checkpoint

        alpha, beta = self.options.alpha, self.options.beta
        student = ctx.student_forward(batch)      # hidden states and the projection to logits, not the logits
        teacher = ctx.teacher_forward(batch)
        mask = batch.loss_mask.bool()
        student_rows = student.hidden[mask]       # [N, H]: only the tokens the loss counts
        teacher_rows = teacher.hidden[mask]

        def chunk_sum(student_chunk, teacher_chunk):
            student_logits = student.head(student_chunk)
            with torch.no_grad():
                teacher_logits = teacher.head(teacher_chunk)
            return ab_divergence(student_logits, teacher_logits, alpha, beta).sum()

        total = student_rows.new_zeros((), dtype=torch.float32)
        rows = student_rows.shape[0]
        size = ctx.chunk_tokens if ctx.chunk_tokens and ctx.chunk_tokens > 0 else max(rows, 1)
        for start in range(0, rows, size):
            parts = (student_rows[start:start + size], teacher_rows[start:start + size])
            if torch.is_grad_enabled() and student_rows.requires_grad:
                # Recompute the chunk's logits in the backward pass instead of keeping them: one chunk's
                # [size, vocab] logits exist at a time.
                total = total + checkpoint(chunk_sum, *parts, use_reentrant=False)
            else:
                total = total + chunk_sum(*parts)
        divergence = total / float(ctx.num_tokens)   # the token count of the whole optimizer step
        loss = divergence
        metrics = {"abdiv": float(divergence.detach())}
        if self.options.ce_weight:
            from minillm_cli.losses import lm_loss

            ce = lm_loss(student, batch.labels, batch.loss_mask, num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens)
            metrics["ce"] = float(ce.detach())
            loss = loss + self.options.ce_weight * ce
        # A micro-batch without loss tokens still gives the engine something to call backward() on.
        loss = loss + student.hidden.float().sum() * 0.0
        return LossOutput(loss, metrics)


@hookimpl
def register_objectives(register):
    register(ABDiv)
