"""Helpers of every chunked token loss: chunk bounds, checkpointed chunks, the per-token denominator, the fused path's test."""

from __future__ import annotations

from typing import Optional


def chunk_bounds(total: int, chunk_tokens: Optional[int]):
    """(start, end) of consecutive chunks of ``chunk_tokens`` rows (one chunk of everything when it is unset or ≤ 0)."""
    size = total if not chunk_tokens or chunk_tokens <= 0 else chunk_tokens
    for start in range(0, total, max(size, 1)):
        yield start, min(start + size, total)


def checkpointed(function, *args):
    """``function(*args)`` under activation checkpointing when a gradient flows through a tensor argument."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def per_token_denominator(num_tokens, fallback: int) -> float:
    """The token count a loss sum is divided by: the whole step's when given, else the rows' own (at least 1)."""
    return float(num_tokens) if num_tokens is not None else float(max(fallback, 1))


def head_parameters(head) -> Optional[tuple]:
    """The parameters a head declared (``head.parameters``), or None when it declared none."""
    params = getattr(head, "parameters", None)
    if params is None or callable(params):
        return None
    return tuple(params)


def fused_parameters(rows, head):
    """The head's parameters when the fused path applies (a gradient is needed and the head declared them)."""
    import torch

    params = head_parameters(head)
    if params is None or not torch.is_grad_enabled():
        return None
    return params if rows.requires_grad or any(p.requires_grad for p in params) else None
