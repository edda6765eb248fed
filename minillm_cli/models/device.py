"""Which device a command runs on: the one asked for, else a GPU when there is one, else the CPU."""

from __future__ import annotations

from typing import Optional


def pick_device(device: Optional[str]):
    """``torch.device(device)`` when given, else CUDA when available, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
