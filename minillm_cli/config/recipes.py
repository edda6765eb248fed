"""Recipes: load a YAML recipe, merge the command line into it, validate everything, report every problem at once.

Precedence, lowest first: the schema's defaults (``schema.py``) < the recipe file < ``options`` (dotted keys from
command-line flags) < ``overrides`` (``key=value`` strings, the value parsed as YAML). The ``objective`` section is
``{name: kd, ...options}``; its options are checked against the objective's ``Options`` dataclass. When a later
layer changes the objective's name, the options an earlier layer gave the previous objective are dropped (they
belong to that objective): ``--objective sft`` on a KD recipe does not trip over KD's ``ratio``.

Every problem names where it is (``recipe.yaml:12``, ``override 'train.lr=fast'``) and what would fix it; all of
them are raised together in one :class:`MinillmError`. ``dump_config`` writes the result back as YAML.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from .library import resolve_recipe
from .schema import DistillConfig
from .validate import (
    Location,
    Problems,
    build_options,
    check_field,
    convert_value,
    dataclass_fields,
    is_section,
    leaf_fields,
    show_value,
    unknown_key_message,
)
from .yaml_io import read_yaml_with_lines, yaml_dumper, yaml_loader, yaml_problem
from ..errors import MinillmError, unknown_name

__all__ = ["config_keys", "config_to_dict", "dump_config", "load_config"]


def config_keys() -> dict[tuple, tuple[dataclasses.Field, Any]]:
    """Key path -> (field, type) of every plain key of the run configuration (the objective section aside)."""
    return {path: leaf for path, leaf in leaf_fields(DistillConfig).items() if path != ("objective",)}


def _get(obj, path: tuple):
    for name in path:
        obj = getattr(obj, name)
    return obj


def _set(obj, path: tuple, value) -> None:
    setattr(_get(obj, path[:-1]), path[-1], value)


@dataclass
class _Entry:
    path: tuple
    value: Any
    where: Location

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


# --- layers: recipe file, options, overrides -> entries -----------------------------------------------------


@dataclass
class _Layer:
    entries: list[_Entry] = dataclasses.field(default_factory=list)
    objective: list[_Entry] = dataclasses.field(default_factory=list)


def _flatten(cls, data: Mapping, prefix: tuple, where: Callable[[tuple], Location], layer: _Layer, problems: Problems):
    fields = dataclass_fields(cls)
    for key, item in data.items():
        path = prefix + (key,)
        if not isinstance(key, str):
            w = where(prefix)
            problems.add(w, w.problem(".".join(prefix), f"keys must be strings, got {show_value(key)}"))
            continue
        w = where(path)
        dotted = ".".join(path)
        if cls is DistillConfig and key == "objective":
            _flatten_objective(item, path, where, layer, problems)
        elif key not in fields:
            problems.add(w, w.problem(None, unknown_key_message(key, prefix, list(fields), elsewhere=config_keys())))
        elif is_section(fields[key][1]):
            if isinstance(item, Mapping):
                _flatten(fields[key][1], item, path, where, layer, problems)
            else:
                known = ", ".join(dataclass_fields(fields[key][1]))
                problems.add(w, w.problem(dotted, f"expected a mapping of {key} keys ({known}), got {show_value(item)}"))
        else:
            layer.entries.append(_Entry(path, item, w))


def _flatten_objective(item, path: tuple, where, layer: _Layer, problems: Problems):
    if isinstance(item, str):  # shorthand: objective: rkl
        layer.objective.append(_Entry(path + ("name",), item, where(path)))
    elif isinstance(item, Mapping):
        for key, value in item.items():
            if not isinstance(key, str):
                w = where(path)
                problems.add(w, w.problem("objective", f"keys must be strings, got {show_value(key)}"))
            else:
                layer.objective.append(_Entry(path + (key,), value, where(path + (key,))))
    else:
        w = where(path)
        problems.add(w, w.problem("objective", f"expected a mapping such as {{name: kd, ratio: 0.5}} or an objective name, got {show_value(item)}"))


def _dotted_layer(items: Sequence[tuple[str, Any, Location]], problems: Problems) -> _Layer:
    layer = _Layer()
    for key, value, where in items:
        parts = key.split(".")
        if not all(part.strip() == part and part for part in parts):
            problems.add(where, where.problem(None, f"bad key '{key}'; use dotted keys such as train.lr"))
            continue
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _flatten(DistillConfig, nested, (), lambda _path, w=where: w, layer, problems)
    return layer


def _parse_override(index: int, text: str, problems: Problems) -> Optional[tuple[str, Any, Location]]:
    import yaml

    if not isinstance(text, str) or "=" not in text:
        where = Location(f"override {show_value(text)}", "the command line", order=(3, index))
        problems.add(where, where.problem(None, "expected key=value, e.g. train.lr=1e-4 or objective.name=rkl"))
        return None
    key, _, raw = text.partition("=")
    key = key.strip()
    where = Location(f"override '{text}'", "the command line", key, order=(3, index))
    try:
        value = yaml.load(raw, Loader=yaml_loader()) if raw.strip() else None
    except yaml.YAMLError as exc:
        problems.add(where, where.problem(None, f"cannot parse the value as YAML ({yaml_problem(exc)[1]}); quote it"))
        return None
    return key, value, where


# --- load_config --------------------------------------------------------------------------------------------------


def load_config(
    recipe: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> tuple[DistillConfig, Any]:
    """Load, merge and validate a configuration: (config, the objective's typed options).

    ``recipe``: a YAML file or a shipped recipe name (``smollm2/135M_to_6L_KD``). ``options``: dotted keys from
    command-line flags, ``None`` values ignored. ``overrides``: ``key=value`` strings, values parsed as YAML.
    Raises one :class:`MinillmError` listing every problem.
    """
    from .. import plugins

    if isinstance(overrides, str):
        overrides = [overrides]
    problems = Problems()
    layers: list[_Layer] = []

    if recipe is not None:
        path, display = resolve_recipe(recipe)
        data, lines, duplicates = read_yaml_with_lines(path, display)

        def where(key_path: tuple) -> Location:
            while key_path and key_path not in lines:
                key_path = key_path[:-1]
            line = lines.get(key_path, 1)
            return Location(f"{display}:{line}", display, order=(1, line))

        for line, dotted in duplicates:
            w = Location(f"{display}:{line}", display, order=(1, line))
            problems.add(w, w.problem(None, f"duplicate key '{dotted}'; keep one"))
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise MinillmError(
                f"{display}:1: a recipe must be a mapping of keys (teacher: …, train: {{lr: …}}), "
                f"got {'a list' if isinstance(data, list) else show_value(data)}"
            )
        layer = _Layer()
        _flatten(DistillConfig, data, (), where, layer, problems)
        layers.append(layer)

    if options:
        items = []
        for index, (key, value) in enumerate(options.items()):
            if value is None:
                continue
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            items.append((key, value, Location(f"option '{key}'", "the command line", key, order=(2, index))))
        layers.append(_dotted_layer(items, problems))

    if overrides:
        parsed = [_parse_override(index, text, problems) for index, text in enumerate(overrides)]
        layers.append(_dotted_layer([p for p in parsed if p is not None], problems))

    # Plain keys: check every entry where it was written; the last good one wins.
    config = DistillConfig()
    keys = config_keys()
    for path, (_, tp) in keys.items():
        _set(config, path, convert_value(_get(config, path), tp)[1])  # tuples -> lists, as a recipe gives them
    for layer in layers:
        for entry in layer.entries:
            problem, converted = check_field(entry.value, *keys[entry.path])
            if problem:
                problems.add(entry.where, entry.where.problem(entry.dotted, problem))
            else:
                _set(config, entry.path, converted)

    # The objective: a later layer that changes the name drops the earlier layers' options.
    name = config.objective.get("name")
    name_where = Location("objective.name (the default)", "the defaults", "objective.name", order=(0,))
    given: dict[str, _Entry] = {}
    for layer in layers:
        names = [e for e in layer.objective if e.path == ("objective", "name")]
        if names:
            if names[-1].value != name:
                given = {}
            name, name_where = names[-1].value, names[-1].where
        for entry in layer.objective:
            if entry.path != ("objective", "name"):
                given[entry.path[1]] = entry
    objective_options = _objective_options(name, name_where, given, plugins, problems)

    problems.raise_if_any()
    config.objective = _objective_dict(name, objective_options)
    return config, objective_options


def _objective_options(name, name_where: Location, given: dict[str, _Entry], plugins, problems: Problems):
    if not isinstance(name, str):
        problems.add(name_where, name_where.problem("objective.name", f"expected an objective name such as kd, got {show_value(name)}"))
        return None
    known = plugins.objectives()
    if name not in known:
        problems.add(name_where, name_where.problem("objective.name", str(unknown_name("objective", name, known))))
        return None
    instance, found = build_options(
        getattr(known[name], "Options", None), {key: entry.value for key, entry in given.items()},
        ("objective",), f"objective '{name}'", require_defaults=True,
    )
    for problem in found:
        # Point at the option the problem is about, when one was given, else at the objective's name.
        where = given[problem.key].where if problem.key is not None else name_where
        problems.add(where, where.problem(f"objective.{problem.key}" if problem.about_value else None, problem.message))
    return instance


# --- dumping ---------------------------------------------------------------------------------------------------------


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _objective_dict(name: str, objective_options) -> dict:
    out = {"name": name}
    if objective_options is not None and dataclasses.is_dataclass(objective_options):
        out.update(_plain(objective_options))
    return out


def config_to_dict(config: DistillConfig, objective_options=None) -> dict:
    """The configuration as plain data in schema order; the objective section is its name and every option."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "objective":
            value = dict(value or {})
            if objective_options is not None:
                value = _objective_dict(value.get("name"), objective_options)
            out["objective"] = {"name": value.pop("name", None), **_plain(value)}
        else:
            out[f.name] = _plain(value)
    return out


def dump_config(config: DistillConfig, objective_options=None, header: str | None = None) -> str:
    """YAML that ``load_config`` reads back into an equal configuration; ``header`` becomes leading comments."""
    import yaml

    text = yaml.dump(
        config_to_dict(config, objective_options),
        Dumper=yaml_dumper(),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=110,
    )
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    return text


