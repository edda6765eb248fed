"""Safe file writes: a crash never leaves a half-written result (write beside, fsync, rename), and processes
that make the same file take turns (an exclusive file lock)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import IO, Iterable, Iterator


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable: without it a power cut can undo a rename the process saw succeed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file under ``root`` (and the directories holding them) to disk before it is renamed into place."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def file_mode() -> int:
    """The mode of an ordinary new file under this process's umask (0o644 under umask 022)."""
    umask = os.umask(0)    # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def follow_umask(root: str | os.PathLike) -> None:
    """Give ``root`` (a file, or every file under a directory) an ordinary file's mode: safetensors' writer creates
    its files private (0600), which other users of a shared machine cannot load."""
    mode = file_mode()
    paths = [root] if not os.path.isdir(root) else [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    for path in paths:
        os.chmod(path, mode)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (kept intact on error).

    The temporary directory is named ``<name>.tmp-<pid>``: whoever lists siblings must skip such names (a kill
    can leave one behind; ``remove_stale_siblings`` clears them later).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        follow_umask(tmp)
        fsync_tree(tmp)
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_siblings(directory: str | os.PathLike, only: Iterable[str] | None = None) -> list[Path]:
    """Delete ``*.tmp-<pid>`` / ``*.old-<pid>`` leftovers of killed writers in ``directory``, except this process's;
    ``only``: just the leftovers of these names (``final`` matches ``final.tmp-12`` and ``.final.tmp-12``)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    mine = (f".tmp-{os.getpid()}", f".old-{os.getpid()}")
    names = None if only is None else set(only)
    for child in directory.iterdir():
        name = child.name
        if not (".tmp-" in name or ".old-" in name) or name.endswith(mine):
            continue
        if names is not None and re.split(r"\.(?:tmp|old)-\d+$", name)[0].lstrip(".") not in names:
            continue
        if ".old-" in name and not (directory / name.rsplit(".old-", 1)[0]).exists():
            continue  # killed between the two renames: this is the only copy of a complete result
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(child)
    return removed


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created if needed) among processes of this machine: the processes of a run
    that all want the same file converted into MINILLM_HOME take turns, and the later ones find it done."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(target: Path) -> Path:
    """Where the lock of a file made in MINILLM_HOME lives: beside it in ``MINILLM_HOME/locks``, not among the
    models."""
    import hashlib

    from .paths import writable_home

    digest = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:16]
    return writable_home() / "locks" / f"{Path(target).name}-{digest}.lock"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _require_writable(path: Path, option: str) -> None:
    from .errors import MinillmError

    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise MinillmError(f"{option} '{path}': '{existing}' is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MinillmError(f"{option} '{path}': folder '{existing}' is not writable; make it writable or choose "
                           "another path")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Before any work: ``path`` (named by ``option``) can become a file; else one line saying why and what to do."""
    from .errors import MinillmError

    path = Path(path)
    if path.is_dir():
        raise MinillmError(f"{option} '{path}' is a folder; pass a file path, e.g. {path / 'out.jsonl'}")
    _require_writable(path.parent if path.exists() else path, option)


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Before any work: ``path`` (named by ``option``) is or can become a writable folder; else one line."""
    from .errors import MinillmError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MinillmError(f"{option} '{path}' is a file, not a folder; pass a folder path or remove the file")
    _require_writable(path, option)
