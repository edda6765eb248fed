"""Instruction data: loading, splitting, prompt templating, tokenisation and text packing (REFERENCE.md §3).

Sources are local files (JSONL, JSON, CSV, Parquet), a directory holding one file per split, a Hugging Face
dataset name, or ``"default"`` (the small data set shipped in ``minillm_cli/resources``). Every problem with a
record is reported as one line naming the file, the line (or item / row) and the field, so a user can fix it
without a traceback.

Heavy libraries (torch, datasets, pyarrow) are imported inside the functions that need them: the CLI imports
this module on every start.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

from ..errors import MinillmError, unknown_name

__all__ = [
    "ALPACA_PROMPT", "ALPACA_PROMPT_WITH_INPUT", "FIELD_ALIASES", "FieldMap", "InstructionExample",
    "TokenizedData", "TokenizedExample", "format_prompt", "load_instructions", "load_texts", "pack_texts",
    "split_examples", "tokenize_examples", "tokenize_prompts",
]

# --------------------------------------------------------------------------------------------------------------
# Examples and field mapping
# --------------------------------------------------------------------------------------------------------------


@dataclass
class InstructionExample:
    """One instruction-following example.

    ``references`` holds the gold output(s): the first is the training target, evaluation takes the maximum
    over all of them (Self-Instruct has several). ``fields`` is the original record, so that outputs derived
    from it (``minillm generate``) can carry the input's fields along.
    """

    instruction: str
    input: str = ""
    references: list = field(default_factory=list)
    fields: dict = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.references[0] if self.references else ""


FIELD_KEYS = ("instruction", "input", "output")

# Tried in order when no explicit mapping names a key: Alpaca's names first, then Dolly's (context /
# response), then names common in other instruction sets.
FIELD_ALIASES: dict = {
    "instruction": ("instruction", "prompt", "question"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion", "answer"),
}

# What the "missing field" message suggests for each key.
_MAPPING_EXAMPLE = {"instruction": "instruction=question", "input": "input=context", "output": "output=answer"}


@dataclass(frozen=True)
class FieldMap:
    """Which record field holds the instruction, the input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def parse(cls, spec: Union[str, Mapping, "FieldMap", None]) -> "FieldMap":
        """``"instruction=question,output=answer"`` (or a dict, or None) -> FieldMap; unnamed keys keep defaults."""
        if isinstance(spec, FieldMap):
            return spec
        return cls(**_explicit_fields(spec))


def _explicit_fields(spec) -> dict:
    """The keys a field-map spec names explicitly (so that auto-detection still applies to the others)."""
    if spec is None:
        return {}
    if isinstance(spec, FieldMap):
        return {key: getattr(spec, key) for key in FIELD_KEYS}
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise MinillmError(
                    f"bad field mapping '{item}' in '{spec}'; expected key=field, "
                    "e.g. 'instruction=question,output=answer'"
                )
            key, _, value = item.partition("=")
            pairs.append((key.strip(), value.strip()))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise MinillmError(
            f"field mapping must be a string like 'output=answer' or a mapping, got {type(spec).__name__}"
        )
    result: dict = {}
    for key, value in pairs:
        if key not in FIELD_KEYS:
            raise unknown_name("field-map key", str(key), FIELD_KEYS)
        if not isinstance(value, str) or not value:
            raise MinillmError(f"field mapping for '{key}' must name a field, got {value!r}")
        if key in result:
            raise MinillmError(f"field mapping names '{key}' twice")
        result[key] = value
    return result


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------

_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_READABLE_SUFFIXES = _FILE_SUFFIXES + (".ndjson", ".tsv")
# Suffixes that mark a string as a file name rather than a hub dataset id ("teknium/OpenHermes-2.5" has the
# suffix ".5" to pathlib, so "has a suffix" alone would misfire).
_PATH_SUFFIXES = _READABLE_SUFFIXES + (".txt", ".gz", ".zip", ".arrow", ".yaml", ".yml")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _default_resource(name: str):
    from importlib.resources import files

    return files("minillm_cli").joinpath("resources", name)


def _looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path (so a missing one is 'file not found', not a hub lookup)."""
    if source.startswith((".", "/", "~")) or "\\" in source:
        return True
    if source.count("/") > 1 or not _HUB_ID.match(source):
        return True
    return Path(source).suffix.lower() in _PATH_SUFFIXES


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _offline_message(name: str, what: str) -> str:
    return (
        f"dataset '{name}' is not available offline; download it when online, or pass a local {what}"
    )


_INSTRUCTION_FILES = "JSONL/JSON/CSV/Parquet file with fields instruction, input, output"


def load_instructions(
    source: Union[str, os.PathLike],
    *,
    fields: Union[str, Mapping, FieldMap, None] = None,
    split: Optional[str] = None,
    limit: Optional[int] = None,
) -> list:
    """Load instruction examples from ``source``.

    source: ``"default"`` (the embedded data set), a ``.jsonl`` / ``.json`` (a list of objects, or
    ``{"data": [...]}``) / ``.csv`` / ``.parquet`` file, a directory (``split`` picks ``<dir>/<split>.jsonl``
    and so on; default ``train``), or a Hugging Face dataset name (``split`` defaults to ``train``).
    fields: explicit field mapping (``"instruction=question,output=answer"``); keys it does not name are
    detected per record from FIELD_ALIASES (Alpaca's and Dolly's names, among others).
    limit: keep the first ``limit`` examples (records after them are not read or checked).

    Records are numbered in errors by line for JSONL and CSV (1-based, as editors count), and by 0-based
    item / row for JSON arrays and Parquet / hub datasets (as ``jq '.[5]'`` and ``dataset[5]`` count).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise MinillmError(f"limit must be a non-negative integer, got {limit!r}")
    explicit = _explicit_fields(fields)
    examples = []
    if limit == 0:
        return examples
    for label, record in _records(source, split, _INSTRUCTION_FILES):
        examples.append(_to_example(record, label, explicit))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def _records(source, split: Optional[str], what: str) -> Iterator:
    """(label, record) pairs from any supported source; ``label`` is how errors name the record."""
    if not isinstance(source, os.PathLike) and str(source) == "default":
        resource = _default_resource("default_instructions.jsonl")
        if not resource.is_file():
            raise MinillmError("the embedded default data set is missing (broken installation?); pass a data file")
        # Read eagerly: the resource may live in a temporary file that as_file removes afterwards.
        from importlib.resources import as_file

        with as_file(resource) as path:
            records = list(_file_records(Path(path), "default_instructions.jsonl"))
        return iter(records)
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        files = _split_files(path, split or "train")
        return (item for file in files for item in _file_records(file, str(file)))
    if path.exists():
        if split is not None:
            raise MinillmError(
                f"split '{split}' applies to a directory or a dataset name, not to the file {source}; drop the split"
            )
        return _file_records(path, str(source))
    if isinstance(source, os.PathLike) or _looks_like_path(str(source)):
        raise MinillmError(f"file not found: {source}")
    return _hub_records(str(source), split or "train", what)


def _split_files(directory: Path, split: str) -> list:
    """The file(s) of ``split`` in a directory: ``<split>.<ext>``, else shards ``[data/]<split>-*.<ext>``."""
    exact = [directory / f"{split}{suffix}" for suffix in _READABLE_SUFFIXES]
    exact = [p for p in exact if p.is_file()]
    if len(exact) > 1:
        raise MinillmError(
            f"{directory} has several files for split '{split}' ({', '.join(p.name for p in exact)}); pass one file"
        )
    if exact:
        return exact
    # The layout of datasets downloaded from the hub: data/train-00000-of-00002.parquet and so on.
    for folder in (directory, directory / "data"):
        for suffix in _READABLE_SUFFIXES:
            shards = sorted(folder.glob(f"{split}-*{suffix}"))
            if shards:
                return shards
    present = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    raise MinillmError(
        f"no file for split '{split}' in {directory} (looked for {split}.jsonl, {split}.json, {split}.csv, "
        f"{split}.parquet); files present: {', '.join(present) if present else 'none'}"
    )


def _file_records(path: Path, name: str) -> Iterator:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_records(path, name)
    if suffix == ".json":
        return _json_records(path, name)
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, name, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet_records(path, name)
    raise MinillmError(
        f"{name}: unsupported file type '{path.suffix or '(none)'}'; use .jsonl, .json, .csv or .parquet"
    )


def _open_text(path: Path, name: str, encoding: str = "utf-8"):
    try:
        return open(path, encoding=encoding, newline="")
    except OSError as exc:
        raise MinillmError(f"{name}: cannot read ({exc.strerror or exc})") from None


_UTF8_FIX = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def _jsonl_records(path: Path, name: str) -> Iterator:
    # Bytes, decoded line by line: a non-UTF-8 byte is then reported with its line, like any other bad record.
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise MinillmError(f"{name}: cannot read ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise MinillmError(
                    f"{name}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line); {_UTF8_FIX}"
                ) from None
            if not line.strip():
                continue   # blank lines (a trailing newline, a separator) are not records
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MinillmError(
                    f"{name}:{number}: invalid JSON ({exc.msg}: column {exc.colno}); fix or remove that line "
                    "(JSON Lines: one object per line)"
                ) from None
            if not isinstance(record, dict):
                raise MinillmError(
                    f"{name}:{number}: expected a JSON object, got {_json_type(record)}; "
                    'write one object per line, such as {"instruction": ..., "output": ...}'
                )
            yield f"{name}:{number}", record


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _json_records(path: Path, name: str) -> Iterator:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MinillmError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start}); {_UTF8_FIX}") from None
    except OSError as exc:
        raise MinillmError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # JSON Lines saved with a .json suffix: one object per line parses as "extra data" after line 1.
            return _jsonl_records(path, name)
        raise MinillmError(
            f"{name}:{exc.lineno}: invalid JSON ({exc.msg}: column {exc.colno}); fix the file's syntax"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        keys = f" with keys {', '.join(map(str, list(data)[:8]))}" if isinstance(data, dict) else ""
        raise MinillmError(
            f'{name}: expected a JSON list of objects or {{"data": [...]}}, got {_json_type(data)}{keys}'
        )
    return _json_items(data, name)


def _json_items(data: list, name: str) -> Iterator:
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise MinillmError(f"{name}: item {index}: expected a JSON object, got {_json_type(record)}")
        yield f"{name}: item {index}", record


def _csv_records(path: Path, name: str, delimiter: str) -> Iterator:
    # utf-8-sig: spreadsheet programs write a byte-order mark that would otherwise stick to the first header.
    with _open_text(path, name, "utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            while True:
                start = reader.line_num + 1   # the physical line a record starts on (quoted fields span lines)
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise MinillmError(f"{name}:{start}: invalid CSV ({exc})") from None
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise MinillmError(
                        f"{name}:{start}: {len(row)} columns, but the header has {len(header)} ({', '.join(header)})"
                    )
                yield f"{name}:{start}", dict(zip(header, row))
        except csv.Error as exc:
            raise MinillmError(f"{name}:{reader.line_num}: invalid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise MinillmError(f"{name}: not UTF-8 text ({exc.reason}); {_UTF8_FIX}") from None


def _parquet_records(path: Path, name: str) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:   # ValueError: UnicodeDecodeError in damaged metadata
        raise MinillmError(f"{name}: not a valid Parquet file ({_first_line(exc)}); write the file again") from None
    index = 0
    # Batches keep memory flat on large files; to_pylist gives plain Python values.
    batches = parquet.iter_batches(batch_size=1024)
    while True:
        try:
            # A damaged page surfaces only when its batch is read: name the file and row, not a pyarrow traceback.
            records = next(batches).to_pylist()
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise MinillmError(
                f"{name}: row {index}: not a valid Parquet file ({_first_line(exc)}); write the file again"
            ) from None
        for record in records:
            yield f"{name}: row {index}", record
            index += 1


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
            raise MinillmError(f"dataset '{name}': {_first_line(exc)}") from None
        raise MinillmError(f"could not load dataset '{name}': {_first_line(exc)}") from None


def _hub_records(name: str, split: str, what: str) -> Iterator:
    dataset = _load_hub_dataset(name, split, what)
    return ((f"{name}: row {index}", dict(record)) for index, record in enumerate(dataset))


def _pick(record: dict, key: str, explicit: dict) -> Optional[str]:
    """The record field that holds ``key``: the explicit mapping, else the first alias present."""
    if key in explicit:
        return explicit[key] if explicit[key] in record else None
    for alias in FIELD_ALIASES[key]:
        if alias in record:
            return alias
    return None


def _missing(label: str, key: str, record: dict, explicit: dict) -> MinillmError:
    wanted = explicit.get(key, key)
    present = ", ".join(map(str, record)) if record else "none"
    return MinillmError(
        f"{label}: missing field '{wanted}' (fields present: {present}; "
        f"map fields with --fields {_MAPPING_EXAMPLE[key]})"
    )


def _to_example(record: dict, label: str, explicit: dict) -> InstructionExample:
    instruction_field = _pick(record, "instruction", explicit)
    if instruction_field is None:
        raise _missing(label, "instruction", record, explicit)
    output_field = _pick(record, "output", explicit)
    if output_field is None:
        raise _missing(label, "output", record, explicit)
    input_field = _pick(record, "input", explicit)

    instruction = record[instruction_field]
    if not isinstance(instruction, str):
        raise MinillmError(f"{label}: field '{instruction_field}' must be a string, got {_type_name(instruction)}")
    value = None if input_field is None else record[input_field]
    if value is None:
        value = ""   # Dolly and Alpaca leave the input empty or null when there is none
    elif not isinstance(value, str):
        raise MinillmError(f"{label}: field '{input_field}' must be a string, got {_type_name(value)}")
    output = record[output_field]
    if isinstance(output, str):
        references = [output]
    elif isinstance(output, (list, tuple)) and all(isinstance(item, str) for item in output):
        if not output:
            raise MinillmError(f"{label}: field '{output_field}' is an empty list; give at least one reference")
        references = list(output)
    else:
        raise MinillmError(
            f"{label}: field '{output_field}' must be a string or a list of strings, got {_type_name(output)}"
        )
    return InstructionExample(instruction=instruction, input=value, references=references, fields=dict(record))


# --------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------


def _split_count(value, n: int, name: str) -> int:
    """A fraction in [0, 1) of ``n`` or an integer count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MinillmError(f"{name} must be a fraction in [0, 1) or a count, got {value!r}")
    if isinstance(value, float) and not (value.is_integer() and value >= 1):
        if not 0 <= value < 1:
            raise MinillmError(f"{name} must be a fraction in [0, 1) or a whole count, got {value!r}")
        count = int(round(value * n))
        # A small positive fraction of a small pool still gets one example: an empty validation set is
        # rarely what "valid=0.1" meant.
        return max(count, 1) if value > 0 and n > 1 else count
    count = int(value)
    if count < 0:
        raise MinillmError(f"{name} must not be negative, got {value!r}")
    return count


def split_examples(examples: Sequence, *, valid=0.1, test=0.0, seed: int = 0) -> dict:
    """Split into ``{"train", "valid", "test"}`` by a seeded random permutation.

    ``valid`` / ``test`` are fractions in [0, 1) or integer counts. The split depends only on ``seed`` and
    the number of examples (random.Random, not hash()), and each part keeps the input order.
    """
    examples = list(examples)
    n = len(examples)
    n_valid = _split_count(valid, n, "valid")
    n_test = _split_count(test, n, "test")
    if n_valid + n_test > n:
        raise MinillmError(
            f"cannot take {n_valid} validation and {n_test} test examples from {n} examples; use smaller sizes"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    valid_idx = sorted(order[:n_valid])
    test_idx = sorted(order[n_valid:n_valid + n_test])
    train_idx = sorted(order[n_valid + n_test:])
    return {
        "train": [examples[i] for i in train_idx],
        "valid": [examples[i] for i in valid_idx],
        "test": [examples[i] for i in test_idx],
    }


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_FORMATS = ("alpaca", "chat")


def _instruction_and_input(example) -> tuple:
    if isinstance(example, Mapping):
        return example.get("instruction", ""), example.get("input") or ""
    return example.instruction, example.input or ""


def format_prompt(example, prompt_format: str = "alpaca", tokenizer=None) -> str:
    """The prompt text of ``example``: the Alpaca template of REFERENCE.md §3, or the tokenizer's chat template."""
    instruction, input_text = _instruction_and_input(example)
    if prompt_format == "alpaca":
        # The reference code tests for an empty input (len == 0), not a blank one; so do we.
        if input_text:
            return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_PROMPT.format(instruction=instruction)
    if prompt_format == "chat":
        if tokenizer is None:
            raise MinillmError("prompt_format 'chat' needs the model's tokenizer")
        if not getattr(tokenizer, "chat_template", None):
            raise MinillmError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''} has no chat template; "
                "use prompt_format alpaca"
            )
        content = instruction + ("\n\n" + input_text if input_text else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise unknown_name("prompt format", str(prompt_format), PROMPT_FORMATS)


# --------------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TokenizedExample:
    prompt_ids: list
    response_ids: list   # ends with eos unless cut by max_response_tokens
    index: int           # position in the list given to tokenize_examples


@dataclass
class TokenizedData:
    examples: list
    dropped_long_prompt: int
    truncated_responses: int


_ENCODE_BATCH = 512


def _encode(tokenizer, texts: Sequence) -> list:
    """Token ids of each text, without special tokens (the templates carry their own)."""
    ids = []
    for start in range(0, len(texts), _ENCODE_BATCH):
        chunk = list(texts[start:start + _ENCODE_BATCH])
        if not chunk:
            continue
        # verbose=False: long documents would otherwise warn about model_max_length, which does not apply
        # to encoding (prompts are cut by max_prompt_tokens, texts by packing).
        ids.extend(list(x) for x in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise MinillmError(
            "the tokenizer has no end-of-sequence token (eos_token); set one in its tokenizer_config.json"
        )
    return eos


def _bos_id(tokenizer) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise MinillmError("the model family prepends a BOS token, but the tokenizer has none (bos_token)")
    return bos


def _prompt_ids(examples, tokenizer, prompt_format: str, add_bos: bool) -> tuple:
    """(prompt texts, their token ids without BOS, the ids the model sees)."""
    prompts = [format_prompt(example, prompt_format, tokenizer) for example in examples]
    raw = _encode(tokenizer, prompts)
    if not add_bos:
        return prompts, raw, raw
    bos = _bos_id(tokenizer)
    # A chat template may already write the BOS token; a second one would be a prompt the model never saw.
    seen = [ids if ids[:1] == [bos] else [bos] + ids for ids in raw]
    return prompts, raw, seen


def _check_limit(value, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise MinillmError(f"{name} must be a positive integer, got {value!r}")


def tokenize_examples(
    examples: Sequence,
    tokenizer,
    *,
    prompt_format: str = "alpaca",
    add_bos: bool = False,
    max_prompt_tokens: Optional[int] = 256,
    max_response_tokens: Optional[int] = None,
) -> TokenizedData:
    """Prompt and response token ids of each example (REFERENCE.md §3).

    response = encode(prompt + output) + [eos] minus the prompt's tokens. Where BPE merges across the
    boundary (the full encoding does not start with the prompt's), the response is encode(output) + [eos]
    instead, so the prompt tokens are always exactly those generation sees. Prompts longer than
    ``max_prompt_tokens`` (BOS included) are dropped and counted; responses longer than
    ``max_response_tokens`` are cut (losing their eos) and counted.
    """
    _check_limit(max_prompt_tokens, "max_prompt_tokens")
    _check_limit(max_response_tokens, "max_response_tokens")
    eos = _eos_id(tokenizer)
    examples = list(examples)
    prompts, raw, seen = _prompt_ids(examples, tokenizer, prompt_format, add_bos)
    keep = [i for i in range(len(examples)) if max_prompt_tokens is None or len(seen[i]) <= max_prompt_tokens]
    full = _encode(tokenizer, [prompts[i] + examples[i].output for i in keep])
    result, truncated, mismatched = [], 0, []
    responses: dict = {}
    for i, ids in zip(keep, full):
        prompt = raw[i]
        if ids[:len(prompt)] == prompt:
            responses[i] = ids[len(prompt):] + [eos]
        else:
            mismatched.append(i)
    for i, ids in zip(mismatched, _encode(tokenizer, [examples[i].output for i in mismatched])):
        responses[i] = ids + [eos]
    for i in keep:
        response = responses[i]
        if max_response_tokens is not None and len(response) > max_response_tokens:
            response = response[:max_response_tokens]
            truncated += 1
        result.append(TokenizedExample(prompt_ids=seen[i], response_ids=response, index=i))
    return TokenizedData(
        examples=result, dropped_long_prompt=len(examples) - len(keep), truncated_responses=truncated
    )


def tokenize_prompts(
    examples: Sequence,
    tokenizer,
    *,
    prompt_format: str = "alpaca",
    add_bos: bool = False,
    max_prompt_tokens: Optional[int] = 256,
) -> tuple:
    """Prompt token ids for generation: (ids of kept prompts, their indices in ``examples``, number dropped)."""
    _check_limit(max_prompt_tokens, "max_prompt_tokens")
    examples = list(examples)
    _, _, seen = _prompt_ids(examples, tokenizer, prompt_format, add_bos)
    kept = [i for i, ids in enumerate(seen) if max_prompt_tokens is None or len(ids) <= max_prompt_tokens]
    return [seen[i] for i in kept], kept, len(examples) - len(kept)


# --------------------------------------------------------------------------------------------------------------
# Plain text for language-modelling losses
# --------------------------------------------------------------------------------------------------------------

_TEXT_FILES = "text file (one document per line) or JSONL/JSON/CSV/Parquet file with a 'text' field"


def load_texts(
    source: Union[str, os.PathLike], *, text_field: str = "text", split: Optional[str] = None
) -> Iterator:
    """Documents of a plain-text corpus, lazily.

    ``"default"``: the embedded corpus. ``.txt``: one document per line; blank lines are skipped (the same
    convention as the embedded corpus, and the same as JSONL with the JSON taken away). ``.jsonl`` /
    ``.json`` / ``.csv`` / ``.parquet`` files, directories (with ``split``) and hub datasets: the
    ``text_field`` of each record. The source is checked now; records as they are read.
    """
    if not isinstance(source, os.PathLike) and str(source) == "default":
        resource = _default_resource("default_corpus.txt")
        if not resource.is_file():
            raise MinillmError("the embedded default corpus is missing (broken installation?); pass a text file")
        return _text_lines(resource.read_text(encoding="utf-8").splitlines())
    path = Path(os.fspath(source)).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        return _txt_documents(path, str(source))
    # Hub datasets load here (not lazily), so an offline hub fails now rather than in the middle of packing.
    records = _records(source, split, _TEXT_FILES)
    return _record_texts(records, text_field)


def _text_lines(lines: Iterable) -> Iterator:
    for line in lines:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _txt_documents(path: Path, name: str) -> Iterator:
    handle = _open_text(path, name)   # opened now, so an unreadable file fails at load_texts

    def documents():
        with handle:
            try:
                yield from _text_lines(handle)
            except UnicodeDecodeError as exc:
                raise MinillmError(f"{name}: not UTF-8 text ({exc.reason})") from None

    return documents()


def _record_texts(records: Iterator, text_field: str) -> Iterator:
    for label, record in records:
        if text_field not in record:
            present = ", ".join(map(str, record)) if record else "none"
            raise MinillmError(
                f"{label}: missing field '{text_field}' (fields present: {present}; choose one with text_field)"
            )
        text = record[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise MinillmError(f"{label}: field '{text_field}' must be a string, got {_type_name(text)}")
        if text:
            yield text


def pack_texts(
    texts: Iterable,
    tokenizer,
    *,
    chunk_tokens: int = 512,
    add_eos: bool = True,
    drop_remainder: bool = True,
) -> list:
    """Concatenate the documents' tokens (each followed by eos when ``add_eos``) and cut ``chunk_tokens``-long chunks.

    Deterministic: the chunks follow the documents' order. The last partial chunk is dropped unless
    ``drop_remainder`` is False. Empty documents are skipped.
    """
    _check_limit(chunk_tokens, "chunk_tokens")
    eos = _eos_id(tokenizer) if add_eos else None
    chunks: list = []
    buffer: list = []
    batch: list = []

    def flush(batch):
        for ids in _encode(tokenizer, batch):
            buffer.extend(ids)
            if eos is not None:
                buffer.append(eos)
        whole = len(buffer) // chunk_tokens * chunk_tokens
        chunks.extend(buffer[start:start + chunk_tokens] for start in range(0, whole, chunk_tokens))
        del buffer[:whole]

    for text in texts:
        if not isinstance(text, str):
            raise MinillmError(f"pack_texts expects strings, got {_type_name(text)}")
        if not text:
            continue
        batch.append(text)
        if len(batch) >= _ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)
    if buffer and not drop_remainder:
        chunks.append(list(buffer))
    return chunks
