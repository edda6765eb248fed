"""Where minillm keeps what it makes: converted models and caches."""

from __future__ import annotations

import os
from pathlib import Path


def minillm_home() -> Path:
    """``$MINILLM_HOME``, or ``~/.cache/minillm``."""
    return Path(os.environ.get("MINILLM_HOME") or Path.home() / ".cache" / "minillm")


def models_home() -> Path:
    return minillm_home() / "models"
