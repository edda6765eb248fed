"""Plain text for language-modelling losses: documents of a corpus (``load_texts``) packed into token chunks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

from ..errors import MinillmError
from .records import open_text, type_name
from .sources import embedded_resource, is_embedded, source_records
from .tokenization import ENCODE_BATCH, check_token_limit, encode_texts, eos_token_id

_TEXT_FILES = "text file (one document per line) or JSONL/JSON/CSV/Parquet file with a 'text' field"


def load_texts(
    source: Union[str, os.PathLike], *, text_field: Union[str, Sequence[str]] = "text", split: Optional[str] = None
) -> Iterator:
    """Documents of a plain-text corpus, lazily.

    ``"default"``: the embedded corpus. ``.txt``: one document per line; blank lines are skipped (the same
    convention as the embedded corpus, and the same as JSONL with the JSON taken away). ``.jsonl`` /
    ``.json`` / ``.csv`` / ``.parquet`` files, directories (with ``split``) and hub datasets: the
    ``text_field`` of each record, or several fields' texts joined by a blank line (a list: instruction data read
    as plain text). The source is checked now; records as they are read.
    """
    if is_embedded(source):
        resource = embedded_resource("default_corpus.txt", "corpus", "a text file")
        return _text_lines(resource.read_text(encoding="utf-8").splitlines())
    path = Path(os.fspath(source)).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        return _txt_documents(path, str(source))
    # Hub datasets load here (not lazily), so an offline hub fails now rather than in the middle of packing.
    records = source_records(source, split, _TEXT_FILES)
    return _record_texts(records, text_field)


def _text_lines(lines: Iterable) -> Iterator:
    for line in lines:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _txt_documents(path: Path, name: str) -> Iterator:
    handle = open_text(path, name)   # opened now, so an unreadable file fails at load_texts

    def documents():
        with handle:
            try:
                yield from _text_lines(handle)
            except UnicodeDecodeError as exc:
                raise MinillmError(f"{name}: not UTF-8 text ({exc.reason})") from None

    return documents()


def _record_texts(records: Iterator, text_field) -> Iterator:
    fields = [text_field] if isinstance(text_field, str) else list(text_field)
    if not fields:
        raise MinillmError("data.lm_text_fields is empty; name the field(s) that hold the text, e.g. [text]")
    for label, record in records:
        parts = []
        for name in fields:
            if name not in record:
                present = ", ".join(map(str, record)) if record else "none"
                raise MinillmError(
                    f"{label}: missing field '{name}' (fields present: {present}; choose them with data.lm_text_fields)"
                )
            text = record[name]
            if text is None:
                continue
            if not isinstance(text, str):
                raise MinillmError(f"{label}: field '{name}' must be a string, got {type_name(text)}")
            if text:
                parts.append(text)
        if parts:
            yield "\n\n".join(parts)


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
    check_token_limit(chunk_tokens, "chunk_tokens")
    eos = eos_token_id(tokenizer) if add_eos else None
    chunks: list = []
    buffer: list = []
    batch: list = []

    def flush(batch):
        for ids in encode_texts(tokenizer, batch):
            buffer.extend(ids)
            if eos is not None:
                buffer.append(eos)
        whole = len(buffer) // chunk_tokens * chunk_tokens
        chunks.extend(buffer[start:start + chunk_tokens] for start in range(0, whole, chunk_tokens))
        del buffer[:whole]

    for text in texts:
        if not isinstance(text, str):
            raise MinillmError(f"pack_texts expects strings, got {type_name(text)}")
        if not text:
            continue
        batch.append(text)
        if len(batch) >= ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)
    if buffer and not drop_remainder:
        chunks.append(list(buffer))
    return chunks
