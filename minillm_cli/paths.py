"""Where minillm keeps what it makes: converted models and caches."""

from __future__ import annotations

import os
from pathlib import Path


def minillm_home() -> Path:
    """``$MINILLM_HOME``, or ``~/.cache/minillm``; one line if it is a file."""
    from .errors import MinillmError

    home = Path(os.environ.get("MINILLM_HOME") or Path.home() / ".cache" / "minillm")
    if home.exists() and not home.is_dir():
        raise MinillmError(f"MINILLM_HOME '{home}' is a file; point MINILLM_HOME at a folder (or unset it: "
                           "~/.cache/minillm)")
    return home


def writable_home() -> Path:
    """MINILLM_HOME for making something in it; one line if it cannot be written. (Reading needs no more than
    ``minillm_home``: a shared read-only home still serves its converted models and data.)"""
    from .errors import MinillmError

    home = minillm_home()
    if home.is_dir() and not os.access(home, os.W_OK | os.X_OK):
        raise MinillmError(f"MINILLM_HOME '{home}' is not writable; make it writable or point MINILLM_HOME at "
                           "another folder")
    return home


def models_home() -> Path:
    return minillm_home() / "models"
