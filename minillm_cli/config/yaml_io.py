"""Recipe YAML: read a file with the line of every key, and a loader/dumper pair that reads 1e-4 as a number.

YAML 1.1 (PyYAML) wants a dot in a float, so ``lr: 1e-4`` would be the string "1e-4"; recipes are written by
people who mean a number, so the loader and dumper here add the exponent form to the float resolver.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ..errors import MinillmError

_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_yaml_classes: Optional[tuple[type, type]] = None


def _loader_and_dumper() -> tuple[type, type]:
    """(Loader, Dumper): SafeLoader/SafeDumper subclasses that agree that 1e-4 is a float."""
    global _yaml_classes
    if _yaml_classes is None:
        import yaml

        def with_exp_floats(base):
            cls = type(f"Minillm{base.__name__}", (base,), {})
            cls.yaml_implicit_resolvers = {k: list(v) for k, v in base.yaml_implicit_resolvers.items()}
            cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))
            return cls

        dumper = with_exp_floats(yaml.SafeDumper)
        # Sections as blocks, lists inline: betas: [0.9, 0.95].
        dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
        _yaml_classes = (with_exp_floats(yaml.SafeLoader), dumper)
    return _yaml_classes


def yaml_loader() -> type:
    """A SafeLoader that also reads 1e-4 as a float."""
    return _loader_and_dumper()[0]


def yaml_dumper() -> type:
    """A SafeDumper that writes floats the loader reads back, lists inline."""
    return _loader_and_dumper()[1]


def yaml_problem(exc) -> tuple[Optional[int], str]:
    """(1-based line or None, what is wrong) of a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    parts = [p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p]
    text = ", ".join(parts) if parts else str(exc).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), text


def read_yaml_with_lines(path: Path, display: str) -> tuple[Any, dict[tuple, int], list[tuple[int, str]]]:
    """(data, key path -> 1-based line, duplicate keys as (line, dotted key)); ``display`` names the file in errors."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MinillmError(f"cannot read recipe {display}: {getattr(exc, 'strerror', None) or exc}") from exc
    lines: dict[tuple, int] = {}
    duplicates: list[tuple[int, str]] = []
    visits = [0]

    def walk(node, prefix, ancestors=()):
        # Before construction: constructing flattens merge keys (<<) into the node, which would look like duplicates.
        if isinstance(node, yaml.MappingNode):
            if node in ancestors:  # `a: &x {b: *x}`: a mapping inside itself would recurse forever
                raise MinillmError(
                    f"{display}:{node.start_mark.line + 1}: a YAML anchor refers to a mapping that contains it; "
                    "a recipe must be a plain tree of keys"
                )
            visits[0] += 1
            if visits[0] > 100_000:  # aliases of aliases ("billion laughs") expand exponentially
                raise MinillmError(
                    f"{display}: more than 100000 mappings after expanding aliases; write the recipe out plainly"
                )
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                path = prefix + (key_node.value,)
                line = key_node.start_mark.line + 1
                if path in lines:
                    duplicates.append((line, ".".join(path)))
                lines.setdefault(path, line)
                walk(value_node, path, ancestors + (node,))

    try:
        loader = yaml_loader()(text)
    except yaml.reader.ReaderError as exc:  # raised before parsing: a control character anywhere in the file
        line = text.count("\n", 0, exc.position) + 1
        raise MinillmError(
            f"{display}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed; remove it"
        ) from None
    try:
        node = loader.get_single_node()
        walk(node, ())
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        raise MinillmError(f"{display}:{line or '?'}: invalid YAML: {problem}; fix the recipe's syntax") from exc
    finally:
        loader.dispose()
    return data, lines, duplicates
