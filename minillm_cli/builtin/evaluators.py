"""The builtin evaluation suites, registered through the same ``register_evaluators`` hook as any plugin's."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    from ..evaluation.analyses import BUILTIN_ANALYSES
    from ..evaluation.suites import BUILTIN_SUITES

    for evaluator in BUILTIN_SUITES + BUILTIN_ANALYSES:
        register(evaluator)
