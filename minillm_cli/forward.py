"""Stable import path for plugin authors: ``minillm_cli.forward`` is ``minillm_cli.models.forward``."""


def __getattr__(name):
    from .models import forward

    return getattr(forward, name)
