"""Checks that a local model directory is whole (config, weights, tokenizer) before transformers reads it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import MinillmError

# Any one of these lets transformers build a tokenizer; without them it silently builds an empty one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
                   "sentencepiece.bpe.model")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
REPAIR = "download or export the model again"


def read_config(directory: Path) -> dict:
    """config.json as a dict, or one line naming the file, the line and the fix."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MinillmError(f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); {REPAIR}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise MinillmError(f"cannot read '{path}' ({exc}); {REPAIR}") from None
    if not isinstance(config, dict):
        raise MinillmError(f"'{path}' is not a JSON object; {REPAIR}")
    return config


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (short header, bad JSON, data past the end), or None."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than its header"
        (header_length,) = struct.unpack("<Q", head)
        if header_length > size - 8:
            return f"truncated ({size} bytes; its header alone claims {header_length})"
        try:
            header = json.loads(handle.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)]
    needed = 8 + header_length + max(ends, default=0)
    if needed > size:
        return f"truncated ({size} bytes of {needed})"
    return None


def check_weights(directory: Path) -> None:
    """Fail in one line if the directory has no weights or a truncated or corrupt .safetensors file."""
    directory = Path(directory)
    weights = [p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern)]
    if not weights:
        raise MinillmError(
            f"model directory '{directory}' has no weights (model.safetensors or pytorch_model.bin); {REPAIR}"
        )
    for path in sorted(p for p in weights if p.suffix == ".safetensors"):
        problem = _safetensors_problem(path)
        if problem:
            raise MinillmError(f"weights file '{path}' is damaged: {problem}; {REPAIR}")


def check_tokenizer_files(directory: Path) -> None:
    """Fail in one line if the directory has no tokenizer files."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise MinillmError(
            f"model directory '{directory}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
            "copy them from the model it was made from, or " + REPAIR
        )
