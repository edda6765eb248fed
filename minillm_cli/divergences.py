"""Stable import path for plugin authors: ``minillm_cli.divergences`` is ``minillm_cli.losses.divergences``."""


def __getattr__(name):
    from .losses import divergences

    return getattr(divergences, name)
