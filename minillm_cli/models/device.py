"""Which device a command runs on: the one asked for, else a GPU when there is one, else the CPU."""

from __future__ import annotations

from typing import Optional

from ..errors import MinillmError

KNOWN = "cpu, cuda, cuda:N, mps"


def pick_device(device: Optional[str], option: str = "--device"):
    """``torch.device(device)`` when given (and present on this machine), else CUDA when available, else the CPU."""
    import torch

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise MinillmError(f"unknown device '{device}' ({option}); known: {KNOWN}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MinillmError(f"{option} {device}: this machine has no CUDA GPU that torch can use; pass "
                               f"{option} cpu, or leave it out to use a GPU when there is one")
        if chosen.index is not None and chosen.index >= count:
            raise MinillmError(f"{option} {device}: this machine has {count} CUDA GPU(s), cuda:0 to "
                               f"cuda:{count - 1}; pick one of them")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise MinillmError(f"{option} {device}: MPS is not available here; pass {option} cpu")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise MinillmError(f"unsupported device '{device}' ({option}); known: {KNOWN}")
    return chosen
