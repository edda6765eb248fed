"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class MinillmError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints it as a single line (no traceback) and exits with status 2.
    """


def unknown_name(kind: str, name: str, known: Iterable[str]) -> MinillmError:
    """'unknown objective 'rkl2'; known: kd, rkl, sft (did you mean 'rkl'?)'."""
    known = sorted(known)
    message = f"unknown {kind} '{name}'; known: {', '.join(known) if known else '(none)'}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        message += f" (did you mean '{close[0]}'?)"
    return MinillmError(message)
