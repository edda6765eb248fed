"""Token-level divergences between the teacher's and the student's next-token distributions.

Every training objective takes its token-level terms from here, so the conventions live in one place:

- p is the teacher, q the student (docs/method.md §1, §2). Forward KL = KL(p || q) = sum_v p (log p - log q), word-level
  KD's term; reverse KL = KL(q || p), MiniLLM's single-step term.
- Inputs are logits [..., V] (normally [B, T, V]) of the same width on both sides; position t already predicts
  token t+1 (the caller aligned them: nothing is shifted here). Different widths are an error: trimming to the
  shared vocabulary is ``minillm_cli.vocab.check_vocab``'s business, before this module is reached.
- ``mask`` [...] marks the positions that count (bool or 0/1; None = all). The counted rows are gathered before
  anything is computed, so masked-out positions are never read: padding may hold anything, even NaN.
- Everything is computed in at least float32 (log_softmax of upcast logits): bf16/fp16 logits give float32
  results, float64 stays float64 (for gradcheck).
- ``reduction``: "mean" = sum over counted tokens / their number, a global per-token mean taken exactly once (a
  zero connected to the graph when nothing counts); "sum"; "none" = per-token values shaped like ``mask`` with
  zeros at masked-out positions. ``num_tokens=`` replaces the denominator of "mean" by the count of the whole
  optimizer step (all micro-batches, all processes), so that split losses add up to the global mean.
- ``chunk_size=n`` processes the counted tokens n at a time, each chunk upcast separately and run under
  activation checkpointing, so that only one chunk's float32 [n, V] intermediates exist at any time, in the
  forward pass and in the backward pass alike (see ``_map_rows``).
- Vocabulary entries with -inf logits (masked vocabulary) are handled with 0 log 0 = 0: an entry that is zero
  under both distributions contributes nothing and produces no NaN, in the value or in the gradient.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import unknown_name

__all__ = [
    "DIVERGENCES",
    "cross_entropy",
    "divergence",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "rows_divergence",
    "skew_forward_kl",
    "skew_reverse_kl",
    "token_divergence",
    "total_variation",
]

REDUCTIONS = ("mean", "sum", "none")
NumTokens = Union[int, float, Tensor, None]


# ---------------------------------------------------------------------------------------------------------------
# Per-token kernels: float log-probabilities [..., V] in, one value per row [...] out.


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_v p (log p - log q) per row, with 0 log 0 = 0.

    Entries with p = 0 contribute 0 even where log q = -inf too: their log-ratio (-inf - -inf = NaN) is replaced
    before the product, not after it, so that neither the value nor the backward pass (0 * NaN) sees the NaN.
    Entries with p > 0 and q = 0 give +inf, which is the true value.
    """
    p = log_p.exp()
    log_ratio = torch.where(p > 0, log_p - log_q, 0.0)
    return (p * log_ratio).sum(-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """log(w a + (1 - w) b) from log a and log b, without ever taking log(0) (logaddexp of shifted logs).

    Entries where a and b are both 0 stay -inf; they are routed around logaddexp, whose gradient there is
    exp(-inf - (-inf)) = NaN, which would poison the backward pass even when multiplied by zero.
    """
    if weight == 1.0:
        return log_a
    if weight == 0.0:
        return log_b
    x = log_a + math.log(weight)
    y = log_b + math.log1p(-weight)
    both_zero = torch.isneginf(x) & torch.isneginf(y)
    mixed = torch.logaddexp(x.masked_fill(both_zero, 0.0), y.masked_fill(both_zero, 0.0))
    return mixed.masked_fill(both_zero, float("-inf"))


def check_weight(name: str, value: float) -> float:
    """A mixture weight as a float in [0, 1], or a ValueError naming it."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def fkl_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Forward KL, KL(p || q): the word-level KD term (docs/method.md §2), mass-covering."""
    return _kl(teacher_logprobs, student_logprobs)


def rkl_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Reverse KL, KL(q || p): MiniLLM's objective, mode-seeking (docs/method.md §1, single-step term)."""
    return _kl(student_logprobs, teacher_logprobs)


def jsd_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """Generalised JSD (GKD, Agarwal et al. 2024, eq. 1; docs/method.md §6), P = teacher, Q = student:

        JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M),   M = beta P + (1 - beta) Q.

    For small beta, M -> Q, KL(P || M) -> KL(P || Q) and KL(Q || M) = O(beta^2), so JSD_beta / beta -> forward KL;
    symmetrically JSD_beta / (1 - beta) -> reverse KL as beta -> 1. JSD itself vanishes at both ends, so, as in
    TRL's GKDTrainer.generalized_jsd_loss, the exact end points return the limits of the *normalised* divergence:
    beta == 0 gives forward KL and beta == 1 reverse KL (a deliberate discontinuity in scale at the ends).
    """
    beta = check_weight("beta", beta)
    if beta == 0.0:
        return fkl_per_token(student_logprobs, teacher_logprobs)
    if beta == 1.0:
        return rkl_per_token(student_logprobs, teacher_logprobs)
    log_m = _log_mix(teacher_logprobs, student_logprobs, beta)
    return beta * _kl(teacher_logprobs, log_m) + (1.0 - beta) * _kl(student_logprobs, log_m)


def skl_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew forward KL (DistiLLM, Ko et al. 2024): SKL_alpha = KL(p || alpha p + (1 - alpha) q).

    alpha = 0 is forward KL; alpha = 1 is 0. Bounded by log(1 / alpha), since the mixture is at least alpha p.
    """
    alpha = check_weight("alpha", alpha)
    return _kl(teacher_logprobs, _log_mix(teacher_logprobs, student_logprobs, alpha))


def srkl_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew reverse KL (DistiLLM): SRKL_alpha = KL(q || alpha q + (1 - alpha) p). alpha = 0 is reverse KL."""
    alpha = check_weight("alpha", alpha)
    return _kl(student_logprobs, _log_mix(student_logprobs, teacher_logprobs, alpha))


def tvd_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Total variation distance, 1/2 sum_v |p - q|, in [0, 1] (docs/method.md §6)."""
    return 0.5 * (teacher_logprobs.exp() - student_logprobs.exp()).abs().sum(-1)


# name -> per-token kernel (student_logprobs, teacher_logprobs, **params) -> values. The kernels take float
# log-probabilities [..., V] and return [...]; ``divergence`` and the named functions below add the logits ->
# log-probabilities step, masking, chunking and reduction around them.
DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "fkl": fkl_per_token,
    "rkl": rkl_per_token,
    "jsd": jsd_per_token,
    "skl": skl_per_token,
    "srkl": srkl_per_token,
    "tvd": tvd_per_token,
}


# ---------------------------------------------------------------------------------------------------------------
# Masking, chunking and reduction, shared by every loss.


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 are upcast, float64 is kept."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _check_logits(name: str, logits: Tensor) -> None:
    if not torch.is_floating_point(logits) or logits.dim() < 1:
        raise ValueError(f"{name} must be floating-point logits [..., V], got {logits.dtype} {tuple(logits.shape)}")


def check_logit_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Student and teacher logits of the same width over the same positions, or a ValueError that says how."""
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    student_width, teacher_width = student_logits.shape[-1], teacher_logits.shape[-1]
    if student_width != teacher_width:
        raise ValueError(
            f"teacher logits have {teacher_width} entries and student logits {student_width}: token-level "
            "divergences need the same vocabulary on both sides; trim both to the shared vocabulary first "
            "(minillm_cli.models.vocab.check_vocab with trim=True)"
        )
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "cover different positions"
        )


def _bool_mask(mask: Optional[Tensor], shape: torch.Size, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; the logits need a mask of shape {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_reduction(reduction: str, num_tokens: NumTokens, chunk_size: Optional[int]) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if num_tokens is not None and reduction != "mean":
        raise ValueError(f"num_tokens sets the denominator of reduction='mean'; it means nothing with {reduction!r}")
    if num_tokens is not None and not isinstance(num_tokens, Tensor) and not num_tokens > 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of tokens or None, got {chunk_size!r}")


def _rows(row_fn: Callable[..., Tensor], inputs: Sequence[Tensor], index: tuple) -> Tensor:
    """row_fn over the rows of ``inputs`` at ``index`` (a tuple of index tensors over the leading dimensions).

    Advanced indexing copies just these rows, in the inputs' own dtype; row_fn upcasts them. Indexing by
    coordinates rather than reshaping to [B*T, V] avoids a full copy of non-contiguous logits (e.g. logits[:, :-1]).
    """
    return row_fn(*(tensor[index] for tensor in inputs))


def _map_rows(
    row_fn: Callable[..., Tensor], inputs: Sequence[Tensor], mask: Tensor, chunk_size: Optional[int]
) -> tuple[Tensor, tuple]:
    """Per-row values [N] of row_fn over the N counted positions, and the positions' index tuple.

    Without chunk_size all counted rows go through at once. With it, rows go through chunk_size at a time, and
    when a gradient is needed each chunk runs under (non-reentrant) activation checkpointing: a plain loop would
    keep every chunk's float32 intermediates alive for the backward pass, i.e. the full float32 [N, V] footprint
    several times over. Checkpointing keeps only the chunk's indices and recomputes the chunk during backward,
    which costs one extra pass of cheap elementwise work and gives the same gradients. With no counted position,
    row_fn still runs once on zero rows, so the result stays connected to the graph (a grad-safe zero).
    """
    index = mask.nonzero(as_tuple=True)
    count = index[0].numel()
    step = max(count, 1) if chunk_size is None else chunk_size
    needs_grad = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
    pieces = []
    for start in range(0, max(count, 1), step):
        chunk = tuple(i[start:start + step] for i in index)
        if chunk_size is not None and needs_grad and count > 0:
            # No randomness inside, so no RNG state needs saving and restoring.
            pieces.append(checkpoint(_rows, row_fn, inputs, chunk, use_reentrant=False, preserve_rng_state=False))
        else:
            pieces.append(_rows(row_fn, inputs, chunk))
    values = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return values, index


def _reduce(values: Tensor, index: tuple, shape: torch.Size, reduction: str, num_tokens: NumTokens) -> Tensor:
    """Apply the reduction to per-row values [N] of the positions ``index`` of a mask of ``shape``."""
    if reduction == "none":
        return values.new_zeros(shape).index_put(index, values)
    total = values.sum()
    if reduction == "sum" or values.numel() == 0:
        return total  # an empty mask gives a zero that is still part of the graph
    if num_tokens is None:
        return total / values.numel()
    return total / torch.as_tensor(num_tokens, dtype=total.dtype, device=total.device)


def _divergence_rows(kernel: Callable[..., Tensor], params: dict, dtype: torch.dtype, student: Tensor,
                     teacher: Tensor) -> Tensor:
    """Rows of logits -> log-probabilities in ``dtype`` (upcast here, one chunk at a time) -> kernel values."""
    return kernel(F.log_softmax(student, dim=-1, dtype=dtype), F.log_softmax(teacher, dim=-1, dtype=dtype), **params)


def _kernel(name: str) -> Callable[..., Tensor]:
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise unknown_name("divergence", name, DIVERGENCES) from None


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    reduction: str = "mean",
    num_tokens: NumTokens = None,
    **params,
) -> Tensor:
    """The divergence ``name`` (a key of DIVERGENCES) between teacher and student, masked and reduced.

    ``params`` are the divergence's own parameters (beta for "jsd", alpha for "skl"/"srkl").
    """
    kernel = _kernel(name)
    try:
        inspect.signature(kernel).bind(None, None, **params)
    except TypeError as error:
        raise TypeError(f"divergence '{name}': {error}") from None
    check_logit_pair(student_logits, teacher_logits)
    _check_reduction(reduction, num_tokens, chunk_size)
    mask = _bool_mask(mask, student_logits.shape[:-1], student_logits.device)
    row_fn = functools.partial(_divergence_rows, kernel, params, compute_dtype(student_logits, teacher_logits))
    values, index = _map_rows(row_fn, (student_logits, teacher_logits), mask, chunk_size)
    return _reduce(values, index, mask.shape, reduction, num_tokens)


def rows_divergence(name: str, student_logits: Tensor, teacher_logits: Tensor, **params) -> Tensor:
    """Per-row values [N] of divergence ``name`` on logits [N, V] whose every row counts.

    No mask, no gathering, no chunking: the caller (``losses``, which gathers the counted rows and chunks them
    itself) already did that, and the index copies ``divergence`` makes of [N, V] logits would be wasted.
    """
    check_logit_pair(student_logits, teacher_logits)
    dtype = compute_dtype(student_logits, teacher_logits)
    return _divergence_rows(_kernel(name), params, dtype, student_logits, teacher_logits)


def token_divergence(name: str, student_logits: Tensor, teacher_logits: Tensor, **options) -> Tensor:
    """Per-token values of divergence ``name``, shaped like the logits' leading dimensions ([B, T]).

    ``options``: mask (masked-out positions get 0; default: every position), chunk_size, and the divergence's
    parameters (beta, alpha).
    """
    return divergence(name, student_logits, teacher_logits, reduction="none", **options)


# ---------------------------------------------------------------------------------------------------------------
# The named losses.


def forward_kl(student_logits, teacher_logits, mask, *, chunk_size=None, reduction="mean", num_tokens=None) -> Tensor:
    """KL(p || q) = sum_v p (log p - log q), p = teacher, q = student: word-level KD's term (docs/method.md §2)."""
    return divergence("fkl", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens)


def reverse_kl(student_logits, teacher_logits, mask, *, chunk_size=None, reduction="mean", num_tokens=None) -> Tensor:
    """KL(q || p) = sum_v q (log q - log p): MiniLLM's objective, per token (docs/method.md §1)."""
    return divergence("rkl", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens)


def generalized_jsd(student_logits, teacher_logits, mask, beta=0.5, *, chunk_size=None, reduction="mean",
                    num_tokens=None) -> Tensor:
    """GKD's generalised JSD with P = teacher, Q = student, M = beta P + (1 - beta) Q (see ``jsd_per_token``).

    beta -> 0 behaves as forward KL (JSD_beta / beta -> KL(P || Q)), beta -> 1 as reverse KL. At exactly 0 and 1
    the JSD itself is 0, so those values return forward_kl and reverse_kl instead, as TRL's GKD trainer does.
    """
    return divergence("jsd", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens, beta=beta)


def skew_forward_kl(student_logits, teacher_logits, mask, alpha=0.1, *, chunk_size=None, reduction="mean",
                    num_tokens=None) -> Tensor:
    """DistiLLM's skew KL, SKL_alpha = KL(p || alpha p + (1 - alpha) q); alpha = 0.1 by default (docs/method.md §6)."""
    return divergence("skl", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens, alpha=alpha)


def skew_reverse_kl(student_logits, teacher_logits, mask, alpha=0.1, *, chunk_size=None, reduction="mean",
                    num_tokens=None) -> Tensor:
    """DistiLLM's skew reverse KL, SRKL_alpha = KL(q || alpha q + (1 - alpha) p)."""
    return divergence("srkl", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens, alpha=alpha)


def total_variation(student_logits, teacher_logits, mask, *, chunk_size=None, reduction="mean",
                    num_tokens=None) -> Tensor:
    """Total variation distance 1/2 sum_v |p - q| per token, in [0, 1]."""
    return divergence("tvd", student_logits, teacher_logits, mask, chunk_size=chunk_size, reduction=reduction,
                      num_tokens=num_tokens)


def _cross_entropy_rows(dtype: torch.dtype, logits: Tensor, labels: Tensor) -> Tensor:
    """-log q(label) = logsumexp(z) - z[label], upcast per chunk (no full log_softmax tensor needed)."""
    logits = logits.to(dtype)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def cross_entropy(student_logits, labels, mask, *, chunk_size=None, reduction="mean", num_tokens=None) -> Tensor:
    """Token cross-entropy -log q(labels) of the student, in at least float32 (SFT, and the CE half of KD).

    ``labels`` [...] are already aligned with the logits (no shift). Labels at masked-out positions are never read
    (they may be -100); a counted label outside [0, V) is an error.
    """
    _check_logits("student_logits", student_logits)
    _check_reduction(reduction, num_tokens, chunk_size)
    labels = torch.as_tensor(labels, device=student_logits.device)
    if labels.shape != student_logits.shape[:-1] or labels.is_floating_point():
        raise ValueError(f"labels must be integer ids of shape {tuple(student_logits.shape[:-1])}, got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    mask = _bool_mask(mask, student_logits.shape[:-1], student_logits.device)
    counted = labels[mask]
    width = student_logits.shape[-1]
    if counted.numel() and bool(((counted < 0) | (counted >= width)).any()):
        raise ValueError(f"a counted label lies outside the vocabulary [0, {width}); mask out ignored positions")
    row_fn = functools.partial(_cross_entropy_rows, compute_dtype(student_logits))
    values, index = _map_rows(row_fn, (student_logits, labels.long()), mask, chunk_size)
    return _reduce(values, index, mask.shape, reduction, num_tokens)
