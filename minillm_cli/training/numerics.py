"""Non-finite losses and gradients: which term went bad, and the one-line message that stops a run.

The engine skips a step whose loss terms or gradients hold NaN/Inf (no optimizer update, gradients zeroed) and
stops after ``train.max_bad_steps`` such steps in a row; this module holds the checks and the wording.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ..errors import MinillmError

# Record keys that are not loss terms: a non-finite one of these is a gradient problem, not a loss problem.
_NOT_TERMS = ("loss", "grad_norm", "lr", "tokens", "sequence_tokens")


class NonFiniteStepsError(MinillmError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def nonfinite_term(totals: Mapping[str, float]) -> Optional[str]:
    """The name of the first non-finite loss term (the objective's own terms before the total), else None."""
    terms = [k for k in totals if k not in _NOT_TERMS] + ["loss"]
    for key in terms:
        value = totals.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return key
    value = totals.get("grad_norm")
    if isinstance(value, (int, float)) and not math.isfinite(value):
        return "gradient (grad_norm)"
    return None


def grads_finite(parameters: Iterable) -> bool:
    """True when every gradient is finite (one reduction per tensor; used when clipping, which measures it, is off)."""
    import torch

    checks = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


def too_many_bad_steps(step: int, count: int, term: Optional[str], output_dir: Path) -> NonFiniteStepsError:
    from .checkpoint import list_checkpoints, verify_checkpoint

    good = [p for p in list_checkpoints(output_dir) if verify_checkpoint(p, full=False) is None]
    last = f"last good checkpoint {good[-1]}" if good else "no checkpoint saved yet"
    fix = f"resume from it with a lower learning rate (--resume {output_dir} train.lr=...)" if good else \
        "lower train.lr or check the data, then start again"
    return NonFiniteStepsError(
        f"stopped at step {step}: {count} steps in a row had a non-finite {term or 'loss'} (NaN or Inf) and were "
        f"skipped; {last}; {fix}, or raise train.max_bad_steps"
    )
