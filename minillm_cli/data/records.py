"""Records from local files: the JSONL, JSON, CSV and Parquet readers, whose errors name the file and the record.

A record is a ``(label, dict)`` pair; the label is how an error names the record: ``file:line`` for JSONL and
CSV (1-based, as editors count), ``file: item N`` / ``file: row N`` (0-based, as ``jq '.[5]'`` and
``dataset[5]`` count) for JSON arrays and Parquet. pyarrow is imported only when a Parquet file is read.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from ..errors import MinillmError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# What file_records reads: the documented suffixes and two aliases (NDJSON is JSONL, TSV is CSV with tabs).
READABLE_SUFFIXES = FILE_SUFFIXES + (".ndjson", ".tsv")

_UTF8_FIX = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def type_name(value) -> str:
    """How an error names the type of a record's value: ``null`` for None (as JSON says), else the Python type."""
    return "null" if value is None else type(value).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): a library's error as one user-facing line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_text(path: Path, name: str, encoding: str = "utf-8"):
    """``path`` opened for reading text; a file that cannot be opened is one MinillmError naming it as ``name``."""
    try:
        return open(path, encoding=encoding, newline="")
    except OSError as exc:
        raise MinillmError(f"{name}: cannot read ({exc.strerror or exc})") from None


def file_records(path: Path, name: str) -> Iterator:
    """(label, record) pairs of one file, read by its suffix; ``name`` is how labels and errors name the file."""
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
    with open_text(path, name, "utf-8-sig") as handle:
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
                    # a quoted header cell may hold a line break: the error stays on one line
                    names = ", ".join(cell.replace("\r", "\\r").replace("\n", "\\n") for cell in header)
                    raise MinillmError(f"{name}:{start}: {len(row)} columns, but the header has {len(header)} ({names})")
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
        raise MinillmError(f"{name}: not a valid Parquet file ({first_line(exc)}); write the file again") from None
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
                f"{name}: row {index}: not a valid Parquet file ({first_line(exc)}); write the file again"
            ) from None
        for record in records:
            yield f"{name}: row {index}", record
            index += 1
