"""From a data source to records: the embedded resources, a file, a directory's split files, or a hub dataset name."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

from ..errors import MinillmError
from .hub import hub_records
from .records import READABLE_SUFFIXES, file_records

# Suffixes that mark a string as a file name rather than a hub dataset id ("teknium/OpenHermes-2.5" has the
# suffix ".5" to pathlib, so "has a suffix" alone would misfire).
_PATH_SUFFIXES = READABLE_SUFFIXES + (".txt", ".gz", ".zip", ".arrow", ".yaml", ".yml")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def packaged_resource(name: str):
    """A file shipped in ``minillm_cli/resources`` (a Traversable: it may live in a zip, use as_file for a path)."""
    from importlib.resources import files

    return files("minillm_cli").joinpath("resources", name)


def is_embedded(source) -> bool:
    """True for the source ``"default"``, the embedded data (a path object named default is a file, not this)."""
    return not isinstance(source, os.PathLike) and str(source) == "default"


def embedded_resource(name: str, what: str, instead: str):
    """The packaged resource behind ``"default"``; when it is missing, a MinillmError that suggests ``instead``."""
    resource = packaged_resource(name)
    if not resource.is_file():
        raise MinillmError(f"the embedded default {what} is missing (broken installation?); pass {instead}")
    return resource


def _looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path (so a missing one is 'file not found', not a hub lookup)."""
    if source.startswith((".", "/", "~")) or "\\" in source:
        return True
    if source.count("/") > 1 or not _HUB_ID.match(source):
        return True
    return Path(source).suffix.lower() in _PATH_SUFFIXES


def source_records(source, split: Optional[str], what: str) -> Iterator:
    """(label, record) pairs from any supported source; ``what`` names the local files an error suggests.

    ``"default"``: the embedded instruction data; a file; a directory (``split``, default ``train``, picks its
    files); else a hub dataset name (``split`` defaults to ``train``).
    """
    if is_embedded(source):
        resource = embedded_resource("default_instructions.jsonl", "data set", "a data file")
        # Read eagerly: the resource may live in a temporary file that as_file removes afterwards.
        from importlib.resources import as_file

        with as_file(resource) as path:
            records = list(file_records(Path(path), "default_instructions.jsonl"))
        return iter(records)
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        files = split_files(path, split or "train")
        return (item for file in files for item in file_records(file, str(file)))
    if path.exists():
        if split is not None:
            raise MinillmError(
                f"split '{split}' applies to a directory or a dataset name, not to the file {source}; drop the split"
            )
        return file_records(path, str(source))
    if isinstance(source, os.PathLike) or _looks_like_path(str(source)):
        raise MinillmError(f"file not found: {source}")
    return hub_records(str(source), split or "train", what)


def split_files(directory: Path, split: str) -> list:
    """The file(s) of ``split`` in a directory: ``<split>.<ext>``, else shards ``[data/]<split>-*.<ext>``."""
    exact = [directory / f"{split}{suffix}" for suffix in READABLE_SUFFIXES]
    exact = [p for p in exact if p.is_file()]
    if len(exact) > 1:
        raise MinillmError(
            f"{directory} has several files for split '{split}' ({', '.join(p.name for p in exact)}); pass one file"
        )
    if exact:
        return exact
    # The layout of datasets downloaded from the hub: data/train-00000-of-00002.parquet and so on.
    for folder in (directory, directory / "data"):
        for suffix in READABLE_SUFFIXES:
            shards = sorted(folder.glob(f"{split}-*{suffix}"))
            if shards:
                return shards
    present = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    raise MinillmError(
        f"no file for split '{split}' in {directory} (looked for {split}.jsonl, {split}.json, {split}.csv, "
        f"{split}.parquet); files present: {', '.join(present) if present else 'none'}"
    )
