"""minillm: distill large generative language models into small ones.

The public API for plugin authors: ``hookimpl`` to implement hooks, ``ModelFamily`` to describe a family,
``Objective`` (with ``LossOutput``, ``StepContext`` and ``option`` for its options) to add a training objective,
``Evaluator`` (with ``EvalContext`` and ``SuiteResult``) to add an evaluation suite,
``MinillmError`` for errors a user can fix. Heavy libraries (torch, transformers) are imported only inside
the functions that need them, so importing this package is cheap.
"""

from .errors import MinillmError
from .evaluation.base import EvalContext, Evaluator, SuiteResult
from .models.family import ModelFamily
from .hookspecs import hookimpl
from .objective import LossOutput, Objective, StepContext, option

__version__ = "0.1.0"

__all__ = [
    "EvalContext", "Evaluator", "LossOutput", "MinillmError", "ModelFamily", "Objective", "StepContext", "SuiteResult",
    "hookimpl", "option", "__version__",
]
