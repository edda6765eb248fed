"""Vocabulary projection and token loss in one pass per chunk, the gradient computed during the forward pass.

``losses.distill_loss`` and ``losses.lm_loss`` project only the loss tokens' hidden states ([N, H]) onto the
vocabulary, ``chunk_tokens`` rows at a time. Under plain activation checkpointing each chunk is computed twice
(forward, then again in the backward pass: the student's projection, the divergence's elementwise work and the
teacher's projection). Here each chunk is computed once:

    for each chunk c of rows:                       (autograd enabled locally, the chunk's rows detached)
        value_c = loss(head(rows_c), …)                                   # [c, V] logits live only here
        ∂value_c/∂rows_c, ∂value_c/∂W  ← torch.autograd.grad(value_c, (rows_c, W))
        accumulate the value, write ∂/∂rows_c into an [N, H] buffer, add ∂/∂W into a [V, H] buffer
    backward(g): ∂total/∂rows = g · buffer,  ∂total/∂W = g · buffer_W

The total is a sum over chunks and the head's gradient does not depend on anything after the loss, so this is
exact: the same values and gradients as the unchunked loss (tests/test_fused_losses.py compares them in float64).
What stays alive is one chunk's [c, V] tensors at a time plus two buffers the size of the rows and of the head's
weights; the teacher's projection runs once per chunk instead of twice. The loss is therefore not differentiable
twice (nothing in minillm needs that).

For fkl, rkl, jsd, skl, srkl and cross-entropy the gradient with respect to the logits is not even left to
autograd: ``value_and_grad`` works it out in closed form with in-place operations (three float32 [c, V] buffers
at the peak for fkl and rkl, five for the mixtures), and autograd only runs the projection's backward pass.
``weighted_ce_and_divergence`` gives kd's (1 − r)·CE + r·FKL from one projection per chunk.

The head must say which parameters it uses (``head.parameters``, set by ``forward.output_head``); a head without
that attribute (a test's lambda, ZeRO-3's partitioned weights) goes through ``losses``' checkpointed path.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence


def fused_chunk_sum(
    chunk_loss: Callable,
    rows,
    extras: Sequence,
    params: Sequence,
    chunk_tokens: Optional[int],
):
    """Σ over chunks of ``chunk_loss(rows[a:b], *(e[a:b] for e in extras))``, with the gradient w.r.t. ``rows``
    and ``params`` computed chunk by chunk in the forward pass (see the module docstring).

    ``chunk_loss`` returns either a scalar (differentiated by autograd) or ``(value, logits, grad_logits)``: the
    value, the logits it came from and d value / d logits worked out analytically (``value_and_grad``), in which
    case autograd only runs the projection's backward pass. ``extras`` are tensors aligned with ``rows`` that get
    no gradient (teacher hidden states, labels).
    """
    return _FusedChunkSum.apply(chunk_loss, chunk_tokens, tuple(extras), rows, *params)


def _bounds(total: int, chunk_tokens: Optional[int]):
    size = total if not chunk_tokens or chunk_tokens <= 0 else chunk_tokens
    size = max(size, 1)
    return [(start, min(start + size, total)) for start in range(0, max(total, 1), size)]


class _FusedChunkSum:
    """A torch.autograd.Function, built lazily so that importing this module does not import torch."""

    _function = None

    @classmethod
    def apply(cls, *args):
        if cls._function is None:
            cls._function = _make_function()
        return cls._function.apply(*args)


def _make_function():
    import torch

    class FusedChunkSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, chunk_loss, chunk_tokens, extras, rows, *params):
            wants_rows = rows.requires_grad
            trainable = [i for i, p in enumerate(params) if p.requires_grad]
            grad_rows = torch.zeros_like(rows) if wants_rows else None
            grad_params = {i: None for i in trainable}
            total = None
            for start, end in _bounds(rows.shape[0], chunk_tokens):
                with torch.enable_grad():
                    chunk = rows[start:end].detach().requires_grad_(wants_rows)
                    value = chunk_loss(chunk, *(e[start:end] for e in extras))
                    targets = ([chunk] if wants_rows else []) + [params[i] for i in trainable]
                    if isinstance(value, tuple):
                        value, output, grad_output = value
                        grads = torch.autograd.grad(output, targets, grad_output, allow_unused=True)
                        del output, grad_output  # not alive while the next chunk is computed
                    elif value.requires_grad:
                        grads = torch.autograd.grad(value, targets, allow_unused=True)
                    else:
                        grads = [None] * len(targets)
                value = value.detach()
                total = value if total is None else total + value
                grads = list(grads)
                if wants_rows:
                    piece = grads.pop(0)
                    if piece is not None:
                        grad_rows[start:end] = piece
                for i, grad in zip(trainable, grads):
                    if grad is not None:
                        grad_params[i] = grad if grad_params[i] is None else grad_params[i].add_(grad)
            ctx.done = False
            ctx.wants_rows = wants_rows
            ctx.count = len(params)
            ctx.trainable = trainable
            saved = ([grad_rows] if wants_rows else []) + [
                grad_params[i] if grad_params[i] is not None else torch.zeros_like(params[i]) for i in trainable
            ]
            ctx.save_for_backward(*saved)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            if ctx.done:  # the buffers are scaled in place: a second backward pass would be wrong
                raise RuntimeError("a fused chunked loss supports one backward pass (no retain_graph reuse)")
            ctx.done = True
            saved = list(ctx.saved_tensors)
            grad_rows = None
            if ctx.wants_rows:
                grad_rows = saved.pop(0)
                grad_rows.mul_(grad_output.to(grad_rows.dtype))
            grads = [None] * ctx.count
            for i, grad in zip(ctx.trainable, saved):
                grads[i] = grad.mul_(grad_output.to(grad.dtype))
            return (None, None, None, grad_rows, *grads)

    return FusedChunkSum


# ---------------------------------------------------------------------------------------------------------------
# Values and logit gradients in closed form, for the common losses: fewer passes over [c, V] than autograd.


CLOSED_FORMS = {"fkl": {}, "rkl": {}, "jsd": {"beta": 0.5}, "skl": {"alpha": 0.1}, "srkl": {"alpha": 0.1}}


def value_and_grad(name: str, student_logits, teacher_logits, **params):
    """``(Σ_rows D(student ‖ teacher), student_logits, ∂Σ/∂student_logits)`` worked out in closed form for fkl,
    rkl, jsd, skl and srkl; for any other divergence the plain summed value (autograd differentiates it).

    ``teacher_logits`` may be a zero-argument function giving them: they are then made here and overwritten in
    place, so that a chunk of fkl or rkl allocates one [c, V] float32 buffer beside the two models' logits (fresh
    allocations of that size cost more than a pass over them on a CPU: the kernel maps and zeroes the pages) and
    the mixtures three, instead of the many autograd keeps. A tensor passed directly is left untouched.

    With q = softmax(z) (the student), p the teacher, per row, in float32 at least. Every gradient is a softmax
    Jacobian applied to g = ∂D/∂q: ∂D/∂z = q ⊙ (g − Σ_v q g), with

    - fkl  KL(p ‖ q) = Σ p log p − Σ p z + logsumexp(z) Σ p             ∂/∂z = q − p (directly);
    - rkl  KL(q ‖ p) = K                                                g = log q − log p;
    - jsd  β KL(p ‖ m) + (1−β) KL(q ‖ m),  m = βp + (1−β)q              g = (1−β)(log q − log m);
    - skl  KL(p ‖ m),                       m = αp + (1−α)q              g = −(1−α) p / m;
    - srkl KL(q ‖ m),                       m = αq + (1−α)p              g = log q − log m − α q / m;

    jsd at β = 0 and 1 is forward and reverse KL, as in ``divergences.jsd_per_token``. A row with a non-finite
    value (−inf logits: a masked vocabulary, where 0·log 0 = 0 must be respected, or a true +inf) sends the chunk
    through the plain kernels of ``divergences`` instead, which handle those entries.
    """
    from .divergences import rows_divergence

    make_teacher = teacher_logits if callable(teacher_logits) else None
    resolved = _resolve(name, params)
    if resolved is not None:
        result = _closed_form(*resolved, student_logits, make_teacher or (lambda: teacher_logits), owned=bool(make_teacher))
        if result is not None:
            value, _, grad = result
            return value, student_logits, grad
    teacher = make_teacher() if make_teacher else teacher_logits
    return rows_divergence(name, student_logits, teacher, **params).sum()


def _resolve(name: str, params: dict):
    """(closed-form name, its weight) for a divergence and its parameters, or None when there is no closed form."""
    from .divergences import check_weight

    if name not in CLOSED_FORMS or set(params) - set(CLOSED_FORMS[name]):
        return None
    weight = None
    for key, default in CLOSED_FORMS[name].items():      # the mixtures' one parameter: beta or alpha
        weight = check_weight(key, params.get(key, default))
    if name == "jsd" and weight in (0.0, 1.0):           # the end points are the KLs themselves
        return ("fkl" if weight == 0.0 else "rkl"), None
    return name, weight


def _log_normalise_(logits):
    """logits -> log-softmax in place; returns (the exp buffer holding softmax, logsumexp [c, 1]).

    max, subtract, exp into one new buffer, sum, normalise: one allocation, where ``torch.logsumexp`` makes a
    temporary and ``log_softmax`` a result of its own."""

    top = logits.amax(dim=-1, keepdim=True)
    logits.sub_(top)
    probs = logits.exp()
    total = probs.sum(dim=-1, keepdim=True)
    probs.div_(total)
    log_total = total.log_()
    logits.sub_(log_total)
    return probs, top.add_(log_total)


def _closed_form(name, weight, student_logits, make_teacher, *, owned: bool, ce=None):
    """(Σ D, Σ CE or None, ∂/∂z) for a resolved closed form, or None when a row's value is not finite.

    ``ce`` = (labels, ce_weight, divergence_weight) adds cross-entropy: the value is returned apart and the
    gradient is then ce_weight·∂CE/∂z + divergence_weight·∂D/∂z (kd's two terms from one projection)."""
    import math

    import torch

    from .divergences import check_logit_pair, compute_dtype

    teacher = make_teacher()
    check_logit_pair(student_logits, teacher)
    dtype = compute_dtype(student_logits, teacher)

    def mixture(log_a, a_weight, log_b):
        """log(w a + (1 − w) b), a new buffer."""
        if a_weight == 1.0:
            return log_a.clone()
        if a_weight == 0.0:
            return log_b.clone()
        mixed = log_b + math.log1p(-a_weight)
        return torch.logaddexp(mixed, log_a + math.log(a_weight), out=mixed)

    ce_sum = None
    with torch.no_grad():
        z = student_logits.detach().to(dtype)
        t = teacher.to(dtype) if owned else teacher.to(dtype, copy=True)   # a buffer of our own
        del teacher
        if ce is not None:
            labels, ce_weight, divergence_weight = ce
            picked = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        if name == "fkl":
            p, _ = _log_normalise_(t)                                        # t = log p
            entropy = t.mul_(p).sum(-1)                                      # Σ p log p
            cross = torch.mul(p, z, out=t).sum(-1)                           # Σ p z
            top_z = z.amax(dim=-1, keepdim=True)
            torch.sub(z, top_z, out=t).exp_()
            total = t.sum(dim=-1, keepdim=True)
            lse = (top_z + total.log()).squeeze(-1)
            q = t.div_(total)
            values = entropy - cross + lse * p.sum(-1)
            if ce is None:
                grad = q.sub_(p)                                             # q − p
            else:
                ce_sum = (lse - picked).sum()
                grad = q.mul_(ce_weight + divergence_weight).sub_(p, alpha=divergence_weight)
            del p
        elif name == "rkl":
            q = torch.empty_like(z)
            top = t.amax(dim=-1, keepdim=True)
            t.sub_(top)
            t.sub_(torch.exp(t, out=q).sum(dim=-1, keepdim=True).log_())    # t = log p (q used as scratch)
            top_z = z.amax(dim=-1, keepdim=True)
            torch.sub(z, top_z, out=q).exp_()
            total = q.sum(dim=-1, keepdim=True)
            q.div_(total)
            lse = top_z.add_(total.log_())
            d = t.neg_().add_(z).sub_(lse)                                   # log q − log p
            values = d.mul_(q).sum(-1)                                       # K = Σ q (log q − log p); d = q ⊙ d
            if ce is None:
                grad = d.addcmul_(q, values.unsqueeze(-1), value=-1.0)       # q ⊙ (log q − log p − K)
            else:
                ce_sum = (lse.squeeze(-1) - picked).sum()
                grad = d.mul_(divergence_weight).addcmul_(q, (ce_weight - divergence_weight * values).unsqueeze(-1))
            del q
        else:
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            log_q = torch.sub(z, lse)
            log_p = t.sub_(torch.logsumexp(t, dim=-1, keepdim=True))
            if name == "jsd":
                log_m = mixture(log_p, weight, log_q)
                p = log_p.exp()
                kl_p = _rowdot(p, log_p.sub_(log_m))                         # KL(p ‖ m)
                del p, log_p, t
                q = log_q.exp()
                g = log_q.sub_(log_m)                                        # log q − log m
                del log_m
                kl_q = _rowdot(q, g)                                         # KL(q ‖ m)
                values = weight * kl_p + (1.0 - weight) * kl_q
                grad = g.sub_(kl_q.unsqueeze(-1)).mul_(q).mul_(1.0 - weight)
            elif name == "skl":
                log_m = mixture(log_p, weight, log_q)
                p = log_p.exp()
                d = log_p.sub_(log_m)                                        # log p − log m
                del log_m
                values = _rowdot(p, d)
                del p
                # q ⊙ g = −(1 − α) q p / m, formed in log space: p / m alone overflows float32 once log(p / q)
                # passes 88 at α = 0, while q p / m ≤ p / (1 − α) stays bounded.
                h = d.add_(log_q).add_(math.log1p(-weight) if weight < 1.0 else -math.inf).exp_().neg_()
                q = log_q.exp_()
                grad = h.addcmul_(q, h.sum(-1, keepdim=True), value=-1.0)   # q ⊙ (g − Σ q g)
            else:  # srkl
                log_m = mixture(log_q, weight, log_p)
                del log_p, t
                q = log_q.exp()
                d = log_q.sub_(log_m)                                        # log q − log m
                del log_m
                values = _rowdot(q, d)
                if weight > 0.0:   # α q / m = exp(d + log α) ≤ 1; α·exp(d) overflows (0·inf at α = 0) past d = 88
                    g = d.sub_(torch.add(d, math.log(weight)).exp_())         # d − α q / m
                else:
                    g = d
                grad = g.sub_(_rowdot(q, g).unsqueeze(-1)).mul_(q)
            if ce is not None:
                ce_sum = (lse.squeeze(-1) - picked).sum()
                grad.mul_(divergence_weight).add_(q, alpha=ce_weight)
            del q
        if ce is not None:
            grad.scatter_add_(-1, labels.unsqueeze(-1),
                              torch.full((grad.shape[0], 1), -ce_weight, dtype=grad.dtype, device=grad.device))
        # Every gradient entry above is bounded where its row's value is finite (ratios formed in log space), so a
        # non-finite entry always shows in its row's value.
        if not bool(torch.isfinite(values).all()):
            return None
    return values.sum(), ce_sum, grad.to(student_logits.dtype)


def _rowdot(a, b):
    """Σ_v a·b per row without an [c, V] temporary (vecdot and (a * b).sum allocate one; bmm does not)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).reshape(a.shape[:-1])


def cross_entropy_value_and_grad(logits, labels):
    """``(Σ_rows −log q(label), logits, softmax(z) − onehot(label))`` in closed form (float32 at least)."""
    import torch

    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.no_grad():
        log_q = torch.log_softmax(logits.detach(), dim=-1, dtype=dtype)
        value = -log_q.gather(-1, labels.unsqueeze(-1)).sum()
        grad = log_q.exp_()
        grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(labels, -1.0, dtype=dtype).unsqueeze(-1))
    return value, logits, grad.to(logits.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Cross-entropy and a divergence from one projection (kd's (1 − r)·CE + r·FKL).


def weighted_ce_and_divergence(
    student, teacher, labels, mask, *, ce_weight: float, divergence: str, divergence_weight: float,
    num_tokens=None, chunk_tokens=None, **options,
):
    """``(ce_weight·CE + divergence_weight·D, CE, D)``, each summed over the loss tokens / ``num_tokens``, with
    the student's hidden states projected once per chunk for both terms (instead of once per term), and one
    gradient buffer for the head. The first is differentiable; the other two are detached (metrics). None when
    the fused path does not apply (no gradient needed, or a head without declared parameters): the caller then
    computes the two terms separately.
    """
    import torch

    from .chunks import fused_parameters, per_token_denominator

    mask = mask.bool()
    rows = student.hidden[mask]
    params = fused_parameters(rows, student.head)
    if params is None:
        return None
    targets, teacher_rows = labels[mask], teacher.hidden[mask]
    parts = {"ce": [], "divergence": []}

    def teacher_logits(chunk):
        with torch.no_grad():
            return teacher.head(chunk)

    resolved = _resolve(divergence, options)

    def chunk_loss(chunk, chunk_targets, teacher_chunk):
        logits = student.head(chunk)
        if resolved is not None:
            result = _closed_form(*resolved, logits, lambda: teacher_logits(teacher_chunk), owned=True,
                                  ce=(chunk_targets, ce_weight, divergence_weight))
            if result is not None:
                value, ce, grad = result
                parts["ce"].append(ce)
                parts["divergence"].append(value)
                return ce_weight * ce + divergence_weight * value, logits, grad
        # No closed form (or a non-finite row): autograd differentiates both terms.
        from .divergences import rows_divergence

        ce = torch.nn.functional.cross_entropy(
            logits.to(torch.promote_types(logits.dtype, torch.float32)), chunk_targets, reduction="sum")
        value = rows_divergence(divergence, logits, teacher_logits(teacher_chunk), **options).sum()
        parts["ce"].append(ce.detach())
        parts["divergence"].append(value.detach())
        return ce_weight * ce + divergence_weight * value

    total = fused_chunk_sum(chunk_loss, rows, (targets, teacher_rows), params, chunk_tokens)
    denominator = per_token_denominator(num_tokens, rows.shape[0])
    ce_sum = torch.stack(parts["ce"]).sum() if parts["ce"] else total.new_zeros(())
    divergence_sum = torch.stack(parts["divergence"]).sum() if parts["divergence"] else total.new_zeros(())
    return total / denominator, ce_sum / denominator, divergence_sum / denominator
