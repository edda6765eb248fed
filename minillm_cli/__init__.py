"""minillm: distill large generative language models into small ones.

The public API for plugin authors: ``hookimpl`` to implement hooks, ``ModelFamily`` to describe a family,
``MinillmError`` for errors a user can fix. Heavy libraries (torch, transformers) are imported only inside
the functions that need them, so importing this package is cheap.
"""

from .errors import MinillmError
from .families import ModelFamily
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["MinillmError", "ModelFamily", "hookimpl", "__version__"]
