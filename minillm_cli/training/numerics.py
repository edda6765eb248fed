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
    fix = f"resume from it with a lower learning rate (--resume {output_dir} --allow-changes train.lr=...)" if good else \
        "lower train.lr or check the data, then start again"
    return NonFiniteStepsError(
        f"stopped at step {step}: {count} steps in a row had a non-finite {term or 'loss'} (NaN or Inf) and were "
        f"skipped; {last}; {fix}, or raise train.max_bad_steps"
    )


def nonfinite_parameter(model) -> Optional[str]:
    """The name of the first parameter holding NaN/Inf, else None (one reduction per tensor)."""
    import torch

    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            return name
    return None


def nonfinite_weights_error(name: str, state, lr: float) -> MinillmError:
    """Why an export was refused: weights with NaN/Inf are no model, and nothing is written."""
    skipped = f"; {state.skipped_steps} step(s) skipped (last: {state.last_bad_term})" if state.skipped_steps else ""
    return MinillmError(
        f"the student's weights are not finite after step {state.step} ({name} holds NaN or Inf{skipped}), so nothing "
        f"was exported; lower train.lr (now {lr:g}) and start again"
    )


def refuse_untrained(state, output_dir: Path, run_log) -> None:
    """A run whose every step was skipped trained nothing: it ends with an error instead of exporting its start."""
    if not state.step or state.skipped_steps < state.step:
        return
    run_log.close()
    raise NonFiniteStepsError(
        f"all {state.step} step(s) had a non-finite {state.last_bad_term or 'loss'} (NaN or Inf) and were skipped: "
        f"the student was never updated, so nothing was exported to {Path(output_dir) / 'final'}; lower train.lr "
        "or check the data, then start again"
    )
