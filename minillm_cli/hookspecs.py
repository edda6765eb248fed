"""The hooks a minillm plugin can implement.

Every hook receives a ``register`` callable (or the CLI app) and calls it once per thing it adds; the builtins
use exactly these hooks too.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("minillm")
hookimpl = pluggy.HookimplMarker("minillm")


@hookspec
def register_model_families(register):
    """Register model families: call ``register(ModelFamily(...))`` for each."""


@hookspec
def register_objectives(register):
    """Register training objectives: call ``register(ObjectiveClass)`` for each."""


@hookspec
def register_evaluators(register):
    """Register evaluation suites: call ``register(EvaluatorClass)`` for each."""


@hookspec
def register_commands(cli):
    """Add commands to the ``minillm`` Typer app ``cli``."""
