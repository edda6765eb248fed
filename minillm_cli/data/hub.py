"""Hugging Face Hub datasets as records, with one-line errors for an offline hub, a missing dataset or split.

``datasets`` is imported only when a hub dataset is loaded; it is an optional dependency.
"""

from __future__ import annotations

import os
from typing import Iterator

from ..errors import MinillmError
from .records import first_line


def hub_records(name: str, split: str, what: str) -> Iterator:
    """(label, record) pairs of split ``split`` of hub dataset ``name``; ``what`` is the local file errors suggest."""
    dataset = _load_hub_dataset(name, split, what)
    return ((f"{name}: row {index}", dict(record)) for index, record in enumerate(dataset))


def _is_offline_error(exc: BaseException) -> bool:
    """A network failure or hub offline mode anywhere in the exception chain."""
    names = {
        "ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException",
        "NetworkError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "MaxRetryError", "NewConnectionError",
    }
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(cls.__name__ in names for cls in type(exc).__mro__) or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        text = str(exc)
        if "Couldn't reach" in text or "offline" in text.lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _offline_message(name: str, what: str) -> str:
    return (
        f"dataset '{name}' is not available offline; download it when online, or pass a local {what}"
    )


def _load_hub_dataset(name: str, split: str, what: str):
    try:
        import datasets
    except ImportError:
        raise MinillmError(
            f"'{name}' is not a local file, and loading hub datasets needs the 'datasets' package; "
            f"install it, or pass a local {what}"
        ) from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:   # datasets raises many types; each becomes one user-facing line
        if _is_offline_error(exc):
            raise MinillmError(_offline_message(name, what)) from None
        if type(exc).__name__ == "DatasetNotFoundError" or isinstance(exc, FileNotFoundError):
            if _hub_offline():
                raise MinillmError(_offline_message(name, what)) from None
            raise MinillmError(
                f"dataset '{name}' not found on the Hugging Face Hub, and there is no local file of that name"
            ) from None
        if isinstance(exc, ValueError) and "split" in str(exc).lower():
            raise MinillmError(f"dataset '{name}': {first_line(exc)}") from None
        raise MinillmError(f"could not load dataset '{name}': {first_line(exc)}") from None
