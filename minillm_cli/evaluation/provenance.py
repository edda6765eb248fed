"""What exactly was evaluated: a model's files and a hash of its weights, so a report names its model uniquely."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_BLOCK = 1 << 20


def weight_files(ref) -> list:
    """The weight files behind a resolved model: its .gguf file, or the weights of its directory."""
    directory = _local_directory(ref)
    if directory is None:
        return []
    if ref.gguf_file:
        return [directory / ref.gguf_file]
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _local_directory(ref) -> Optional[Path]:
    if ref.local:
        return Path(ref.source)
    try:  # a hub model: its files in the local cache, if it was downloaded
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.source, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the report says the hash is unknown
        return None


def weights_sha256(files) -> Optional[str]:
    """SHA-256 over the weight files in name order (each file's name, then its bytes); None without files."""
    if not files:
        return None
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def describe_model(ref) -> dict:
    """Name, location, family and weights hash of a resolved model, for the JSON report."""
    files = weight_files(ref)
    return {
        "name": ref.spec,
        "path": str(Path(ref.display).resolve()) if ref.local else ref.display,
        "family": ref.family.name,
        "weight_files": [p.name for p in files],
        "weights_sha256": weights_sha256(files),
    }
