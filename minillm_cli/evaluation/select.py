"""From ``--suite`` and ``--set`` to evaluator instances with typed options, every problem reported at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from ..errors import MinillmError, unknown_name


def suite_names(specs: Iterable[str]) -> list:
    """``["dolly,selfinst", "vicuna"]`` -> ``["dolly", "selfinst", "vicuna"]``, duplicates dropped, order kept."""
    names: list = []
    for spec in specs:
        for name in str(spec).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def _is_file_spec(name: str) -> bool:
    """A --suite value meant as a local file: it exists, or it has a data-file suffix or a path separator."""
    path = Path(name).expanduser()
    return path.exists() or path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet") or "/" in name


def parse_settings(settings: Sequence[str]) -> dict:
    """``["dolly.limit=10", "judge.url=http://…"]`` -> ``{"dolly": {"limit": 10}, "judge": {"url": "http://…"}}``.

    Values are parsed as YAML (numbers, booleans, lists); the suite is everything before the last dot of the
    key, so a file suite's options are ``--set data/mine.jsonl.limit=5``.
    """
    import yaml

    parsed: dict = {}
    for text in settings:
        key, sep, raw = str(text).partition("=")
        suite, dot, option_name = key.strip().rpartition(".")
        if not sep or not dot or not suite or not option_name:
            raise MinillmError(f"--set expects SUITE.OPTION=VALUE, e.g. dolly.limit=100; got '{text}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise MinillmError(f"--set {text}: cannot parse the value as YAML; quote it") from None
        parsed.setdefault(suite, {})[option_name] = value
    return parsed


def build_evaluators(specs: Sequence[str], settings: Mapping[str, Mapping] = (), registry: Optional[Mapping] = None) -> list:
    """Instantiate the evaluators named by ``specs`` (registered names or local files) with their options."""
    from ..config.validate import build_options
    from .suites import FileSuite

    if registry is None:
        from ..plugins import evaluators

        registry = evaluators()
    settings = dict(settings or {})
    names = suite_names(specs)
    if not names:
        raise MinillmError("--suite needs at least one suite, e.g. --suite default")
    problems, chosen = [], []
    for name in names:
        if name in registry:
            cls = registry[name]
        elif _is_file_spec(name):
            cls = FileSuite
        else:
            problems.append(str(unknown_name("evaluator", name, registry)) + ", or a local JSONL file")
            continue
        options, found = build_options(
            cls.Options, settings.pop(name, {}), (name,), f"suite '{name}'",
            refused={"path": f"--set {name}.path: a file suite reads the file it is named by"} if cls is FileSuite else None,
        )
        problems += [f"--set {name}.{p.key}: {p.message}" if p.about_value else p.message for p in found]
        if options is None:
            continue
        chosen.append(FileSuite(name, options) if cls is FileSuite else cls(options))
    for name in settings:
        problems.append(f"--set names suite '{name}', which is not among --suite ({', '.join(names)}); add it there")
    if problems:
        raise MinillmError("; ".join(problems))
    return chosen


def options_dict(evaluator) -> dict:
    """An evaluator's options as plain JSON-able values, for the report."""
    options = evaluator.options
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
