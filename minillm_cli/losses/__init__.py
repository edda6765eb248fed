"""Losses: divergences between next-token distributions (pure math), and token losses from hidden states.

``from minillm_cli.losses import distill_loss, lm_loss`` is a stable path for plugin authors; the names are looked
up on first use so that importing the package does not import torch.
"""

_PUBLIC = {"distill_loss": "head", "lm_loss": "head"}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
