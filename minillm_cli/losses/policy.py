"""MiniLLM's per-token loss on rollout tokens: the PPO-clipped policy-gradient term on log q_θ of each sampled token
plus the single-step reverse KL, in one vocabulary projection per chunk (docs/method.md §1).

For a rollout token t with advantage A_t, log q_θold(y_t) recorded at sampling and per-token weights:

    ρ_t    = exp(log q_θ(y_t) − log q_θold(y_t)) · ratio_weight_t
    pg_t   = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)) · pg_weight_t
    single = single_weight_t · KL(q_θ(·|y_<t) ‖ p(·|y_<t))          (exactly over the vocabulary)

(the paper variant puts the importance weight w_t in pg_weight and single_weight, the reference variant in
ratio_weight; the weights are 1 where a variant has none). ``policy_loss`` returns Σ_t (pg_t + single_t), whose
gradient w.r.t. the student's logits z of token t is worked out in closed form during the forward pass
(``fused.fused_chunk_sum``): with q = softmax(z), p the teacher's distribution and K_t the row's KL,

    ∂pg_t/∂z     = g_t · (onehot(y_t) − q),   g_t = ∂pg_t/∂log q_θ(y_t) = −A_t ρ_t · pg_weight_t on the branch the
                   max takes, 0 on the clipped branch (which the max takes only outside [1 − ε, 1 + ε]),
    ∂single_t/∂z = single_weight_t · q ⊙ (log q − log p − K_t),

so a chunk's [c, V] logits are projected once (the checkpointed path projects the student's and the teacher's
twice: forward, then again in the backward pass). Chunks whose values are not finite, and heads that do not
declare their parameters (ZeRO-3's partitioned weights, a test's lambda), go through autograd on the same
formulas (``clipped_surrogate``). tests/test_policy_loss.py compares both paths with a float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..models.forward import Forward
from .chunks import checkpointed, chunk_bounds, fused_parameters


@dataclass
class PolicyTokens:
    """Per-token coefficients of ``policy_loss``, each [N] aligned with the masked rows of the batch (row-major
    over ``mask``); a weight of None is 1 everywhere, ``single_weights`` None drops the single-step term."""

    advantages: "object"
    old_logprobs: "object"
    clip_eps: float
    ratio_weights: Optional["object"] = None
    pg_weights: Optional["object"] = None
    single_weights: Optional["object"] = None


@dataclass
class PolicySums:
    """Σ over the tokens of ``policy_loss``: the loss (pg + single, with the student's graph) and, detached, each
    term, the ratios and the number of clipped ratios."""

    loss: "object"
    pg: float
    single: float
    ratio: float
    clipped: float


def clipped_surrogate(logprobs, tokens: PolicyTokens, sl: slice = slice(None)):
    """(pg_t per token, ρ_t, clipped ρ_t) from log q_θ(y_t) [n] for the tokens ``sl`` of ``tokens`` (autograd)."""
    import torch

    ratio = torch.exp(logprobs - tokens.old_logprobs[sl])
    if tokens.ratio_weights is not None:
        ratio = ratio * tokens.ratio_weights[sl]
    advantages = tokens.advantages[sl]
    clipped = ratio.clamp(1 - tokens.clip_eps, 1 + tokens.clip_eps)
    pg = torch.maximum(-advantages * ratio, -advantages * clipped)
    if tokens.pg_weights is not None:
        pg = pg * tokens.pg_weights[sl]
    return pg, ratio, clipped


def policy_loss(student: Forward, teacher: Optional[Forward], labels, mask, tokens: PolicyTokens, *,
                chunk_tokens: Optional[int] = None) -> PolicySums:
    """Σ over the masked tokens of pg_t + single_t (module docstring); ``teacher`` may be None without the
    single-step term."""
    import torch

    mask = mask.bool()
    student_rows = student.hidden[mask]
    single = tokens.single_weights is not None
    # A teacher of top-k log-probabilities (a served or cached one, ``losses.cached``) gives the single-step KL
    # on its k + 1 buckets (docs/serving.md), through autograd; a Forward gives it exactly, in closed form.
    exact = isinstance(teacher, Forward)
    teacher_rows = ((teacher.hidden[mask],) if exact else tuple(teacher.rows())) if single else ()
    targets = labels[mask]
    index = torch.arange(student_rows.shape[0], device=student_rows.device)
    sums = torch.zeros(4, dtype=torch.float64)              # pg, single, ratio, clipped (detached)
    if student_rows.shape[0] == 0:
        return PolicySums(student_rows.new_zeros((), dtype=torch.float32), 0.0, 0.0, 0.0, 0.0)

    def surrogate(student_chunk, chunk_index, *teacher_chunk):
        """The chunk's Σ (pg + single) through autograd, its detached sums added to ``sums``."""
        sl = slice(int(chunk_index[0]), int(chunk_index[-1]) + 1)
        logits = student.head(student_chunk)
        log_q = logits.to(_compute_dtype(logits)).log_softmax(-1)
        pg, ratio, clipped = clipped_surrogate(log_q.gather(-1, targets[sl, None]).squeeze(-1), tokens, sl)
        total = pg.sum()
        single_sum = total.new_zeros(())
        if single:
            kl = _single_step_kl(teacher, exact, logits.to(log_q.dtype), teacher_chunk)
            single_sum = (kl * tokens.single_weights[sl]).sum()
            total = total + single_sum
        _add(sums, pg.sum(), single_sum, ratio.sum(), (clipped != ratio).sum())
        return total

    extras = (index, *teacher_rows)
    params = fused_parameters(student_rows, student.head)
    if params is not None:
        from .fused import fused_chunk_sum

        def fused_chunk(student_chunk, chunk_index, *teacher_chunk):
            closed = None
            if exact or not single:
                closed = _closed_form_chunk(student, teacher, student_chunk, teacher_chunk[0] if single else None,
                                            chunk_index, targets, tokens)
            if closed is None:    # a bucketed teacher or a non-finite value: autograd on the plain formulas
                return surrogate(student_chunk, chunk_index, *teacher_chunk)
            value, logits, grad, chunk_sums = closed
            _add(sums, *chunk_sums)
            return value, logits, grad

        total = fused_chunk_sum(fused_chunk, student_rows, extras, params, chunk_tokens)
    else:
        total = student_rows.new_zeros((), dtype=torch.float32)
        for start, end in chunk_bounds(student_rows.shape[0], chunk_tokens):
            total = total + checkpointed(surrogate, student_rows[start:end], *(e[start:end] for e in extras))
    pg, single, ratio, clipped = sums.tolist()
    return PolicySums(total, pg, single, ratio, clipped)


def _single_step_kl(teacher, exact: bool, logits, teacher_chunk):
    """KL(q_θ ‖ p) per row: over the vocabulary with the divergences' kernel (0 · log 0 = 0 on entries either model
    rules out), or on the k + 1 buckets of a top-k teacher."""
    import torch

    from .divergences import DIVERGENCES, token_divergence

    if not exact:
        from .cached import bucket_divergence

        return bucket_divergence(DIVERGENCES["rkl"], logits, *teacher_chunk)
    with torch.no_grad():
        teacher_logits = teacher.head(teacher_chunk[0]).to(logits.dtype)
    return token_divergence("rkl", logits[None], teacher_logits[None])[0]


def _compute_dtype(logits):
    """float32 at least (float64 stays float64: the tests' references)."""
    import torch

    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _add(sums, *values) -> None:
    import torch

    with torch.no_grad():
        sums += torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values])


def _closed_form_chunk(student, teacher, student_chunk, teacher_chunk, chunk_index, targets, tokens: PolicyTokens):
    """(Σ (pg + single), the student's logits, ∂Σ/∂logits, (pg, single, ratio, clipped) sums) of one chunk, or
    None when a value is not finite."""
    import torch

    sl = slice(int(chunk_index[0]), int(chunk_index[-1]) + 1)
    logits = student.head(student_chunk)
    dtype = _compute_dtype(logits)
    with torch.no_grad():
        z = logits.detach().to(dtype)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        q = torch.sub(z, lse).exp_()
        chunk_targets = targets[sl, None]
        log_q_target = (z.gather(-1, chunk_targets) - lse).squeeze(-1)
        advantages = tokens.advantages[sl].to(dtype)
        ratio = torch.exp(log_q_target - tokens.old_logprobs[sl].to(dtype))
        if tokens.ratio_weights is not None:
            ratio = ratio * tokens.ratio_weights[sl].to(dtype)
        low, high = 1 - tokens.clip_eps, 1 + tokens.clip_eps
        clipped = ratio.clamp(low, high)
        plain_branch, clipped_branch = -advantages * ratio, -advantages * clipped
        pg = torch.maximum(plain_branch, clipped_branch)
        # ∂pg/∂log q(y) = ∂pg/∂ρ · ρ: −A ρ where the max takes the unclipped branch, 0 where it takes the clipped
        # one (it is larger only outside [1 − ε, 1 + ε], where clip is constant). On a tie ρ is inside the range
        # (or A = 0) and autograd's halves of both branches add up to −A ρ too.
        g = torch.where(plain_branch >= clipped_branch, plain_branch, torch.zeros_like(plain_branch))
        if tokens.pg_weights is not None:
            weight = tokens.pg_weights[sl].to(dtype)
            pg, g = pg * weight, g * weight
        single_sum = torch.zeros((), dtype=dtype, device=z.device)
        if teacher_chunk is not None:
            t = teacher.head(teacher_chunk).to(dtype)
            log_p = t.sub_(torch.logsumexp(t, dim=-1, keepdim=True))
            d = log_p.neg_().add_(z).sub_(lse)                                  # log q − log p
            kl = torch.bmm(q.unsqueeze(1), d.unsqueeze(2)).view(-1)          # Σ_v q (log q − log p), no [c, V] copy
            weight = tokens.single_weights[sl].to(dtype)
            grad = d.sub_(kl.unsqueeze(-1)).mul_(q).mul_(weight.unsqueeze(-1))  # w · q ⊙ (log q − log p − K)
            single_sum = (kl * weight).sum()
            grad.addcmul_(q, g.unsqueeze(-1), value=-1.0)
        else:
            grad = q.mul_(-g.unsqueeze(-1))
        grad.scatter_add_(-1, chunk_targets, g.unsqueeze(-1))                # + g · onehot(y)
        value = pg.sum() + single_sum
        if not bool(torch.isfinite(value)):    # a non-finite entry anywhere in q, log p or ρ shows in the value
            return None
        chunk_sums = (pg.sum(), single_sum, ratio.sum(), (clipped != ratio).sum())
    return value, logits, grad.to(logits.dtype), chunk_sums
