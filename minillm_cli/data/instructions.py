"""Instruction examples: the example type, the field mapping and ``load_instructions``, with one-line record errors.

Sources are local files (JSONL, JSON, CSV, Parquet), a directory holding one file per split, a Hugging Face
dataset name, or ``"default"`` (the small data set shipped in ``minillm_cli/resources``). Every problem with a
record is reported as one line naming the file, the line (or item / row) and the field, so a user can fix it
without a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from ..errors import MinillmError, unknown_name
from .records import type_name
from .sources import source_records


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

# How a distill run maps fields (a YAML string holding key=field pairs), for its errors.
RUN_FIELDS_HINT = "data.fields='{mapping}'"
_INSTRUCTION_FILES = "JSONL/JSON/CSV/Parquet file with fields instruction, input, output"


def load_instructions(
    source: Union[str, os.PathLike],
    *,
    fields: Union[str, Mapping, FieldMap, None] = None,
    split: Optional[str] = None,
    limit: Optional[int] = None,
    fields_hint: str = "--fields {mapping}",
) -> list:
    """Load instruction examples from ``source``.

    source: ``"default"`` (the embedded data set), a ``.jsonl`` / ``.json`` (a list of objects, or
    ``{"data": [...]}``) / ``.csv`` / ``.parquet`` file, a directory (``split`` picks ``<dir>/<split>.jsonl``
    and so on; default ``train``), or a Hugging Face dataset name (``split`` defaults to ``train``).
    fields: explicit field mapping (``"instruction=question,output=answer"``); keys it does not name are
    detected per record from FIELD_ALIASES (Alpaca's and Dolly's names, among others).
    limit: keep the first ``limit`` examples (records after them are not read or checked).
    fields_hint: how the caller's user maps fields (``data.fields={mapping}`` in a run), for the errors.

    Records are numbered in errors by line for JSONL and CSV (1-based, as editors count), and by 0-based
    item / row for JSON arrays and Parquet / hub datasets (as ``jq '.[5]'`` and ``dataset[5]`` count).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise MinillmError(f"limit must be a non-negative integer, got {limit!r}")
    explicit = _explicit_fields(fields)
    examples = []
    if limit == 0:
        return examples
    for label, record in source_records(source, split, _INSTRUCTION_FILES):
        examples.append(_to_example(record, label, explicit, fields_hint))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def _pick(record: dict, key: str, explicit: dict) -> Optional[str]:
    """The record field that holds ``key``: the explicit mapping, else the first alias present."""
    if key in explicit:
        return explicit[key] if explicit[key] in record else None
    for alias in FIELD_ALIASES[key]:
        if alias in record:
            return alias
    return None


def _missing(label: str, key: str, record: dict, explicit: dict, fields_hint: str) -> MinillmError:
    wanted = explicit.get(key, key)
    present = ", ".join(map(str, record)) if record else "none"
    return MinillmError(
        f"{label}: missing field '{wanted}' (fields present: {present}; "
        f"map fields with {fields_hint.format(mapping=_MAPPING_EXAMPLE[key])})"
    )


def _to_example(record: dict, label: str, explicit: dict, fields_hint: str) -> InstructionExample:
    instruction_field = _pick(record, "instruction", explicit)
    if instruction_field is None:
        raise _missing(label, "instruction", record, explicit, fields_hint)
    output_field = _pick(record, "output", explicit)
    if output_field is None:
        raise _missing(label, "output", record, explicit, fields_hint)
    input_field = _pick(record, "input", explicit)

    instruction = record[instruction_field]
    if not isinstance(instruction, str):
        raise MinillmError(f"{label}: field '{instruction_field}' must be a string, got {type_name(instruction)}")
    value = None if input_field is None else record[input_field]
    if value is None:
        value = ""   # Dolly and Alpaca leave the input empty or null when there is none
    elif not isinstance(value, str):
        raise MinillmError(f"{label}: field '{input_field}' must be a string, got {type_name(value)}")
    output = record[output_field]
    if isinstance(output, str):
        references = [output]
    elif isinstance(output, (list, tuple)) and all(isinstance(item, str) for item in output):
        if not output:
            raise MinillmError(f"{label}: field '{output_field}' is an empty list; give at least one reference")
        references = list(output)
    else:
        raise MinillmError(
            f"{label}: field '{output_field}' must be a string or a list of strings, got {type_name(output)}"
        )
    if not instruction.strip() and not value.strip() and not any(r.strip() for r in references):
        raise MinillmError(f"{label}: instruction, input and output are all empty; fill them in or remove the record")
    return InstructionExample(instruction=instruction, input=value, references=references, fields=dict(record))
