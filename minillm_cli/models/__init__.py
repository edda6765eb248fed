"""Models: names resolved through the families, loading, vocabulary checks, forward passes, generation.

``from minillm_cli.models import load_model, resolve_model`` is a stable path for plugin authors; the names are
looked up on first use so that importing the package stays cheap.
"""

_PUBLIC = {"ModelRef": "load", "load_model": "load", "load_tokenizer": "load", "logit_width": "load", "resolve_model": "load"}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
