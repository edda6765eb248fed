"""``run_info.json``: what a run was made of, written beside its checkpoints when it starts.

The resolved config, the package versions, the sha256 of the teacher's and student's weight files and of the
data, so that a result can be traced to its inputs and reproduced. Weight files are big: their hashes are cached
in ``MINILLM_HOME/hash_cache.json`` under (path, size, mtime), and a file is hashed again only when one changes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ..atomic import atomic_open

RUN_INFO = "run_info.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    versions: dict[str, Optional[str]] = {"python": platform.python_version(), "minillm": __version__}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


class HashCache:
    """sha256 of files, remembered by (resolved path, size, mtime_ns); a changed file is hashed again."""

    def __init__(self, path: Optional[Path] = None):
        if path is None:
            from ..paths import minillm_home

            path = minillm_home() / "hash_cache.json"
        self.path = Path(path)
        self.hashed = 0          # files actually read (for tests and curiosity)
        try:
            self._entries = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self._entries, dict):
                self._entries = {}
        except (OSError, ValueError):
            self._entries = {}
        self._dirty = False

    def sha256(self, file: Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = str(file)
        entry = self._entries.get(key)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry["sha256"]
        digest = file_sha256(file)
        self.hashed += 1
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._dirty = True
        return digest

    def save(self) -> None:
        if not self._dirty:
            return
        try:
            with atomic_open(self.path) as handle:
                json.dump(self._entries, handle, indent=1)
            self._dirty = False
        except OSError:  # a cache that cannot be written only costs time next run
            pass


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_directory(ref) -> Optional[Path]:
    if ref.local:
        return Path(ref.source)
    try:  # a hub model: its files are in the Hugging Face cache (never downloaded here)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or no huggingface_hub: the hash is unknown, not an error
        return None


def model_hashes(ref, cache: HashCache) -> dict:
    """{"source", "files": {weight file name: sha256}} of a resolved model."""
    directory = _model_directory(ref)
    info: dict[str, Any] = {"source": ref.display if ref.local else ref.spec, "family": ref.family.name}
    if directory is None or not directory.is_dir():
        info["files"] = None
        return info
    names = [ref.gguf_file] if ref.gguf_file else sorted(
        p.name for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
    )
    info["files"] = {name: _hash_or_none(cache, directory / name) for name in names}
    return info


def _hash_or_none(cache: HashCache, path: Path) -> Optional[str]:
    """A record must never stop a run: an unreadable file is recorded as null."""
    try:
        return cache.sha256(path)
    except OSError:
        return None


def data_hashes(source: Optional[str], split: Optional[str], cache: HashCache) -> Optional[dict]:
    """{"source", "files": {file: sha256}} of a data source; a hub dataset has no files here (files: null)."""
    if source is None:
        return None
    from ..data.sources import packaged_resource, split_files

    info: dict[str, Any] = {"source": source, "files": None}
    if source == "default":
        from importlib.resources import as_file

        with as_file(packaged_resource("default_instructions.jsonl")) as path:
            info["files"] = {"default_instructions.jsonl": file_sha256(Path(path))}
        return info
    path = Path(source).expanduser()
    if path.is_file():
        info["files"] = {path.name: _hash_or_none(cache, path)}
    elif path.is_dir():
        try:
            files = split_files(path, split or "train")
        except Exception:  # noqa: BLE001 - loading already reported any problem; the hash is a record only
            return info
        info["files"] = {str(f.relative_to(path)): _hash_or_none(cache, f) for f in files}
    return info


def examples_sha256(examples: Iterable) -> str:
    """sha256 of the tokenized training examples: what was trained on, whatever the source (hub datasets too)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([list(example.prompt_ids), list(example.response_ids)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def collect_run_info(config, config_dict: dict, teacher_ref, student_ref, train_examples, resumed_from=None,
                     cache: Optional[HashCache] = None) -> dict:
    cache = cache or HashCache()
    data = config.data
    info = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "versions": package_versions(),
        "config": config_dict,
        "models": {"teacher": model_hashes(teacher_ref, cache), "student": model_hashes(student_ref, cache)},
        "data": {
            "train": data_hashes(data.train, data.train_split, cache),
            "valid": data_hashes(data.valid, None, cache),
            "lm_corpus": data_hashes(data.lm_corpus, None, cache) if data.lm_corpus not in (None, "default") else None,
            "train_examples_sha256": examples_sha256(train_examples),
        },
    }
    cache.save()
    return info


def write_run_info(output_dir: Path, info: dict) -> Path:
    """Write output_dir/run_info.json atomically; a resumed run keeps the earlier starts under ``history``."""
    path = Path(output_dir) / RUN_INFO
    history = []
    if info.get("resumed_from"):
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            history = previous.pop("history", []) + [previous]
        except (OSError, ValueError, AttributeError):
            history = []
    try:
        with atomic_open(path) as handle:
            json.dump({**info, "history": history}, handle, indent=2, default=str)
    except OSError as exc:
        from ..errors import MinillmError

        raise MinillmError(
            f"cannot write {path} ({exc.strerror or exc}); free disk space or pick another --output-dir"
        ) from exc
    return path


def read_run_info(output_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(output_dir) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = ["HashCache", "RUN_INFO", "collect_run_info", "package_versions", "read_run_info", "write_run_info"]
