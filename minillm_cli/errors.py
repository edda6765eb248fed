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


# What to do about a file-system error, by errno name: the CLI's last resort for writes no check foresaw.
_OS_FIXES = {
    "EACCES": "make it writable (or readable) for this user, or choose another path",
    "EPERM": "make it writable (or readable) for this user, or choose another path",
    "EROFS": "the file system is read-only; choose a path on a writable one",
    "ENOSPC": "free disk space or choose a path on another disk",
    "EDQUOT": "free space in your quota or choose a path on another disk",
    "ENAMETOOLONG": "a file name may hold at most 255 bytes; pass a shorter name",
    "ENOTDIR": "a part of that path is a file, not a folder; choose another path",
    "EISDIR": "that is a folder; pass a file path",
    "EEXIST": "something is already there; remove it or choose another path",
    "ENOENT": "check the path",
    "EPIPE": "the program reading the output closed it early",
}


def short_path(name, limit: int = 120) -> str:
    """A path for a one-line message: very long names (a pasted recipe, say) are cut in the middle."""
    text = str(name)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text)} characters)"


def os_error(exc: OSError) -> MinillmError:
    """A file-system error as one line: what failed, on which path, and what to do."""
    import errno

    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or type(exc).__name__
    where = f" on '{short_path(exc.filename)}'" if exc.filename is not None else ""
    fix = _OS_FIXES.get(code, "check the path and the disk")
    return MinillmError(f"cannot read or write{where}: {reason}; {fix}")
