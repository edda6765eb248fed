"""Learning-rate schedules as multipliers of the peak rate, for torch's LambdaLR."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


def lr_multiplier(schedule: str, step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Multiplier at ``step`` (0-based count of steps already taken)."""
    if warmup_steps > 0 and step < warmup_steps and schedule != "constant":
        return (step + 1) / warmup_steps
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    floor = min_lr / peak_lr if peak_lr > 0 else 0.0
    if schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if schedule == "cosine":
        # Cosine decay from the peak to min_lr (the reference decays to 1e-7, docs/method.md §2).
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}")


def make_scheduler(optimizer, schedule: str, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float):
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(
        optimizer, lambda step: lr_multiplier(schedule, step, total_steps, warmup_steps, peak_lr, min_lr)
    )
