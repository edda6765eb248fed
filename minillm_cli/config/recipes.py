"""Recipes: load a YAML recipe, merge the command line into it, validate everything, report every problem at once.

Precedence, lowest first: the schema's defaults (``config.py``) < the recipe file < ``options`` (dotted keys from
command-line flags) < ``overrides`` (``key=value`` strings, the value parsed as YAML). The ``objective`` section is
``{name: kd, ...options}``; its options are checked against the objective's ``Options`` dataclass. When a later
layer changes the objective's name, the options an earlier layer gave the previous objective are dropped (they
belong to that objective): ``--objective sft`` on a KD recipe does not trip over KD's ``ratio``.

Every problem names where it is (``recipe.yaml:12``, ``override 'train.lr=fast'``) and what would fix it; all of
them are raised together in one :class:`MinillmError`.

Shipped recipes live in the repository's top-level ``recipes/`` folder (the layout is fixed by the design) and are
found from this file's location, ``Path(__file__).parents[2] / "recipes"``. That works for source checkouts and
editable installs, which is how this project is installed; a wheel would not carry them (they are not package
data), so ``list_recipes`` is then empty and ``--recipe NAME`` fails with the list of shipped recipes (none).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

from .schema import DistillConfig
from ..errors import MinillmError, unknown_name

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

__all__ = [
    "RECIPES_DIR",
    "config_to_dict",
    "copy_recipe",
    "dump_config",
    "list_recipes",
    "load_config",
    "recipe_path",
]

# --- value checks beyond the types: small and table-driven --------------------------------------------------

_PRECISIONS = ("fp32", "bf16", "fp16")
CHOICES: dict[str, tuple] = {
    "train.schedule": ("constant", "constant_with_warmup", "linear", "cosine"),
    "train.precision": _PRECISIONS,
    "train.teacher_dtype": _PRECISIONS,
    "eval.select_by": ("rougeL", "loss"),
    "data.prompt_format": ("alpaca", "chat"),
    "parallel.engine": ("accelerate", "deepspeed"),
    "parallel.offload_optimizer": ("none", "cpu", "nvme"),
    "parallel.offload_params": ("none", "cpu", "nvme"),
    "parallel.teacher_shard": ("none", "device_map", "zero3"),
}


def _gt(bound):
    return (lambda v: v > bound), f"must be > {bound}"


def _ge(bound):
    return (lambda v: v >= bound), f"must be >= {bound}"


_NOT_EMPTY = (lambda v: v.strip() != ""), "must not be empty"

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "teacher": _NOT_EMPTY,
    "output_dir": _NOT_EMPTY,
    "student_layers": _gt(0),
    "data.valid_size": _ge(0),
    "data.limit": _gt(0),
    "data.max_prompt_tokens": _gt(0),
    "data.max_response_tokens": _gt(0),
    "data.lm_chunk_tokens": _gt(0),
    "train.steps": _gt(0),
    "train.max_minutes": _gt(0),
    "train.epochs": _gt(0),
    "train.batch_size": _gt(0),
    "train.grad_accum": _gt(0),
    "train.lr": _gt(0),
    "train.warmup_steps": _ge(0),
    "train.min_lr": _ge(0),
    "train.weight_decay": _ge(0),
    "train.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1), e.g. [0.9, 0.95]"),
    "train.eps": _gt(0),
    "train.max_grad_norm": _ge(0),
    "train.chunk_tokens": _gt(0),
    "train.max_bad_steps": _ge(0),
    "generation.temperature": _ge(0),
    "generation.top_k": _ge(0),
    "generation.top_p": ((lambda v: 0 < v <= 1), "must be in (0, 1]"),
    "generation.max_new_tokens": _gt(0),
    "generation.no_repeat_ngram_size": _ge(0),
    "generation.batch_size": _gt(0),
    "eval.every": _ge(0),
    "eval.max_examples": _ge(0),
    "eval.rouge_examples": _ge(0),
    "eval.max_new_tokens": _gt(0),
    "checkpoint.every": _ge(0),
    "checkpoint.keep": _gt(0),
    "parallel.zero_stage": ((lambda v: v in (0, 1, 2, 3)), "must be 0, 1, 2 or 3"),
    "train.lora.r": _ge(0),
    "train.lora.alpha": _gt(0),
    "train.lora.dropout": ((lambda v: 0 <= v < 1), "must be in [0, 1)"),
}

# Names other tools use for our keys, for "did you mean".
ALIASES = {
    "learning_rate": "lr",
    "max_steps": "steps",
    "num_steps": "steps",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum",
    "gradient_accumulation": "grad_accum",
    "per_device_train_batch_size": "batch_size",
    "lr_scheduler": "schedule",
    "lr_scheduler_type": "schedule",
    "scheduler": "schedule",
    "warmup": "warmup_steps",
    "num_warmup_steps": "warmup_steps",
    "grad_clip": "max_grad_norm",
    "clip_grad": "max_grad_norm",
    "dtype": "precision",
    "mixed_precision": "precision",
    "output": "output_dir",
    "out_dir": "output_dir",
    "save_steps": "every",
    "eval_steps": "every",
    "eval_interval": "every",
    "save_total_limit": "keep",
    "model": "student",
    "teacher_model": "teacher",
    "student_model": "student",
}

# --- YAML: a SafeLoader that also reads 1e-4 as a number (YAML 1.1 wants a dot), and records key lines --------

_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_yaml_classes: Optional[tuple[type, type]] = None


def _yaml():
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


def _yaml_error(exc) -> tuple[Optional[int], str]:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    parts = [p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p]
    text = ", ".join(parts) if parts else str(exc).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), text


def _read_yaml(path: Path, display: str) -> tuple[Any, dict[tuple, int], list[tuple[int, str]]]:
    """(data, key path -> 1-based line, duplicate keys as (line, dotted key))."""
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
        loader = _yaml()[0](text)
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
        line, problem = _yaml_error(exc)
        raise MinillmError(f"{display}:{line or '?'}: invalid YAML: {problem}; fix the recipe's syntax") from exc
    finally:
        loader.dispose()
    return data, lines, duplicates


# --- where a value came from, and the collected problems ----------------------------------------------------


@dataclass(frozen=True)
class _Where:
    label: str                  # "recipe.yaml:12", "override 'train.lr=fast'", "option 'train.steps'"
    origin: str                 # for the header: "recipe.yaml", "the command line"
    key: Optional[str] = None   # the dotted key the label already shows
    order: tuple = ()           # problems are reported in input order: (layer, line or position)

    def problem(self, dotted: Optional[str], message: str) -> str:
        if dotted and dotted != self.key:
            return f"{self.label}: {dotted}: {message}"
        return f"{self.label}: {message}"


class _Problems:
    def __init__(self):
        self.items: list[tuple[_Where, str]] = []

    def add(self, where: _Where, text: str) -> None:
        self.items.append((where, text))

    def raise_if_any(self) -> None:
        if self.items:
            items = sorted(self.items, key=lambda item: item[0].order)  # stable: same place keeps its order
            origins = list(dict.fromkeys(where.origin for where, _ in items))
            n = len(items)
            raise MinillmError(
                f"{n} problem{'s' if n != 1 else ''} in {' and '.join(origins)}: " + "; ".join(t for _, t in items)
            )


@dataclass
class _Entry:
    path: tuple
    value: Any
    where: _Where

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


# --- the schema ------------------------------------------------------------------------------------------------

_SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "Any": Any}


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (field, resolved type) of a dataclass; unresolvable annotations check nothing."""
    if not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a plugin's Options with forward references we cannot resolve
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        if isinstance(tp, str):
            tp = _SIMPLE_TYPES.get(tp, Any)
        out[f.name] = (f, tp)
    return out


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _leaves(cls=DistillConfig, prefix=()) -> dict[tuple, Any]:
    """Key path -> type of every plain key of the schema (the objective section aside)."""
    leaves = {}
    for name, (_, tp) in _fields(cls).items():
        path = prefix + (name,)
        if _is_section(tp):
            leaves.update(_leaves(tp, path))
        elif path != ("objective",):
            leaves[path] = tp
    return leaves


def _get(obj, path: tuple):
    for name in path:
        obj = getattr(obj, name)
    return obj


def _set(obj, path: tuple, value) -> None:
    setattr(_get(obj, path[:-1]), path[-1], value)


def _suggest(name: str, known: Sequence[str], prefix: tuple, elsewhere: bool = True) -> Optional[str]:
    """The key the user probably meant, as a dotted key."""
    candidate = ALIASES.get(name, name)
    if candidate in known and candidate != name:
        return ".".join(prefix + (candidate,))
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return ".".join(prefix + (close[0],))
    if elsewhere:  # the right key in the wrong section: top-level 'lr' -> 'train.lr'
        for path in _leaves():
            if path[-1] in (name, candidate) and path[:-1] != prefix:
                return ".".join(path)
    return None


def _unknown_key(name: str, prefix: tuple, known: Sequence[str], what: str = "key") -> str:
    dotted = ".".join(prefix + (name,))
    message = f"unknown {what} '{dotted}'"
    hint = _suggest(name, known, prefix, elsewhere=what == "key")
    if hint:
        message += f" (did you mean '{hint}'?)"
    where = f"in {'.'.join(prefix)}" if prefix else "at the top level"
    return message + f"; known {what}s {where}: {', '.join(known) if known else '(none)'}"


# --- type and value checks ---------------------------------------------------------------------------------------


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _union_args(tp):
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return typing.get_args(tp)
    return None


def _describe(tp) -> str:
    args = _union_args(tp)
    if args is not None:
        names = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    origin, inner = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in inner)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp in (list, tuple) or origin in (list, tuple):
        if inner and inner[0] is not Ellipsis:
            element = _describe(inner[0])
            return f"a list of {element.split(' ', 1)[-1]}s" if element.startswith(("a ", "an ")) else "a list"
        return "a list"
    if tp is dict or origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp) -> tuple[bool, Any]:
    """(ok, value converted to the annotation: ints to floats, tuples to lists)."""
    if tp is Any or tp is object:
        return True, value
    args = _union_args(tp)
    if args is not None:
        if value is None:
            return type(None) in args, None
        for arg in args:
            if arg is not type(None):
                ok, converted = _convert(value, arg)
                if ok:
                    return True, converted
        return False, value
    origin, inner = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in inner, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        element = inner[0] if inner and (origin is list or (len(inner) == 2 and inner[1] is Ellipsis)) else Any
        items = []
        for item in value:
            ok, converted = _convert(item, element)
            if not ok:
                return False, value
            items.append(converted)
        return True, items
    if tp is dict or origin is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _check(value, tp, choices=None, rule=None) -> tuple[Optional[str], Any]:
    """(problem or None, converted value)."""
    ok, converted = _convert(value, tp)
    if not ok:
        return f"expected {_describe(tp)}, got {_show(value)}", value
    if converted is None:
        return None, converted
    if choices is not None and converted not in choices:
        options = ", ".join(choices) + (" or null" if _union_args(tp) and type(None) in _union_args(tp) else "")
        message = f"expected one of {options}, got {_show(value)}"
        close = difflib.get_close_matches(str(converted), list(choices), n=1)
        return message + (f" (did you mean '{close[0]}'?)" if close else ""), value
    if rule is not None:
        test, explanation = rule
        try:
            good = test(converted)
        except TypeError:
            good = False
        if not good:
            return f"{explanation}, got {_show(value)}", value
    return None, converted


# --- layers: recipe file, options, overrides -> entries -----------------------------------------------------


@dataclass
class _Layer:
    entries: list[_Entry] = dataclasses.field(default_factory=list)
    objective: list[_Entry] = dataclasses.field(default_factory=list)


def _flatten(cls, data: Mapping, prefix: tuple, where: Callable[[tuple], _Where], layer: _Layer, problems: _Problems):
    fields = _fields(cls)
    for key, item in data.items():
        path = prefix + (key,)
        if not isinstance(key, str):
            w = where(prefix)
            problems.add(w, w.problem(".".join(prefix), f"keys must be strings, got {_show(key)}"))
            continue
        w = where(path)
        dotted = ".".join(path)
        if cls is DistillConfig and key == "objective":
            _flatten_objective(item, path, where, layer, problems)
        elif key not in fields:
            problems.add(w, w.problem(None, _unknown_key(key, prefix, list(fields))))
        elif _is_section(fields[key][1]):
            if isinstance(item, Mapping):
                _flatten(fields[key][1], item, path, where, layer, problems)
            else:
                known = ", ".join(_fields(fields[key][1]))
                problems.add(w, w.problem(dotted, f"expected a mapping of {key} keys ({known}), got {_show(item)}"))
        else:
            layer.entries.append(_Entry(path, item, w))


def _flatten_objective(item, path: tuple, where, layer: _Layer, problems: _Problems):
    if isinstance(item, str):  # shorthand: objective: rkl
        layer.objective.append(_Entry(path + ("name",), item, where(path)))
    elif isinstance(item, Mapping):
        for key, value in item.items():
            if not isinstance(key, str):
                w = where(path)
                problems.add(w, w.problem("objective", f"keys must be strings, got {_show(key)}"))
            else:
                layer.objective.append(_Entry(path + (key,), value, where(path + (key,))))
    else:
        w = where(path)
        problems.add(w, w.problem("objective", f"expected a mapping such as {{name: kd, ratio: 0.5}} or an objective name, got {_show(item)}"))


def _dotted_layer(items: Sequence[tuple[str, Any, _Where]], problems: _Problems) -> _Layer:
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


def _parse_override(index: int, text: str, problems: _Problems) -> Optional[tuple[str, Any, _Where]]:
    import yaml

    if not isinstance(text, str) or "=" not in text:
        where = _Where(f"override {_show(text)}", "the command line", order=(3, index))
        problems.add(where, where.problem(None, "expected key=value, e.g. train.lr=1e-4 or objective.name=rkl"))
        return None
    key, _, raw = text.partition("=")
    key = key.strip()
    where = _Where(f"override '{text}'", "the command line", key, order=(3, index))
    try:
        value = yaml.load(raw, Loader=_yaml()[0]) if raw.strip() else None
    except yaml.YAMLError as exc:
        problems.add(where, where.problem(None, f"cannot parse the value as YAML ({_yaml_error(exc)[1]}); quote it"))
        return None
    return key, value, where


# --- load_config --------------------------------------------------------------------------------------------------


def _resolve_recipe(recipe: str | os.PathLike) -> tuple[Path, str]:
    path = Path(recipe)
    if path.is_file():
        return path, str(recipe)
    if path.is_dir():
        raise MinillmError(f"recipe '{recipe}' is a directory; give a YAML file or a shipped recipe name")
    names = [row[0] for row in list_recipes()]
    shipped = _shipped(str(recipe))
    if shipped is not None:
        display = os.path.relpath(shipped)
        return shipped, display if not display.startswith("..") else str(shipped)
    message = f"recipe '{recipe}' is neither a file nor a shipped recipe; shipped: {', '.join(names) or '(none)'}"
    close = difflib.get_close_matches(str(recipe).removesuffix(".yaml"), names, n=1)
    if close:
        message += f" (did you mean '{close[0]}'?)"
    raise MinillmError(message + "; see `minillm recipes list`")


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
    problems = _Problems()
    layers: list[_Layer] = []

    if recipe is not None:
        path, display = _resolve_recipe(recipe)
        data, lines, duplicates = _read_yaml(path, display)

        def where(key_path: tuple) -> _Where:
            while key_path and key_path not in lines:
                key_path = key_path[:-1]
            line = lines.get(key_path, 1)
            return _Where(f"{display}:{line}", display, order=(1, line))

        for line, dotted in duplicates:
            w = _Where(f"{display}:{line}", display, order=(1, line))
            problems.add(w, w.problem(None, f"duplicate key '{dotted}'; keep one"))
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise MinillmError(
                f"{display}:1: a recipe must be a mapping of keys (teacher: …, train: {{lr: …}}), "
                f"got {'a list' if isinstance(data, list) else _show(data)}"
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
            items.append((key, value, _Where(f"option '{key}'", "the command line", key, order=(2, index))))
        layers.append(_dotted_layer(items, problems))

    if overrides:
        parsed = [_parse_override(index, text, problems) for index, text in enumerate(overrides)]
        layers.append(_dotted_layer([p for p in parsed if p is not None], problems))

    # Plain keys: check every entry where it was written; the last good one wins.
    config = DistillConfig()
    leaves = _leaves()
    for path, tp in leaves.items():
        _set(config, path, _convert(_get(config, path), tp)[1])  # tuples -> lists, as a recipe gives them
    for layer in layers:
        for entry in layer.entries:
            dotted = entry.dotted
            problem, converted = _check(entry.value, leaves[entry.path], CHOICES.get(dotted), RULES.get(dotted))
            if problem:
                problems.add(entry.where, entry.where.problem(dotted, problem))
            else:
                _set(config, entry.path, converted)

    # The objective: a later layer that changes the name drops the earlier layers' options.
    name = config.objective.get("name")
    name_where = _Where("objective.name (the default)", "the defaults", "objective.name", order=(0,))
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


def _objective_options(name, name_where: _Where, given: dict[str, _Entry], plugins, problems: _Problems):
    if not isinstance(name, str):
        problems.add(name_where, name_where.problem("objective.name", f"expected an objective name such as kd, got {_show(name)}"))
        return None
    known = plugins.objectives()
    if name not in known:
        problems.add(name_where, name_where.problem("objective.name", str(unknown_name("objective", name, known))))
        return None
    options_cls = getattr(known[name], "Options", None)
    fields = _fields(options_cls) if options_cls is not None else {}
    kwargs = {}
    bad = False  # some option is wrong: still build the others and run validate(), to report everything at once
    for key, entry in given.items():
        dotted = f"objective.{key}"
        if key not in fields:
            message = _unknown_key(key, ("objective",), list(fields), what="option").replace(
                "known options in objective", f"known options of objective '{name}'"
            )
            problems.add(entry.where, entry.where.problem(None, message))
            bad = True
            continue
        problem, converted = _check(entry.value, fields[key][1])
        if problem:
            problems.add(entry.where, entry.where.problem(dotted, problem))
            bad = True
        else:
            kwargs[key] = converted
    missing = [key for key, (f, _) in fields.items() if key not in given and _default(f) is dataclasses.MISSING]
    for key in missing:
        problems.add(name_where, name_where.problem(None, f"objective '{name}' needs option '{key}'; add objective.{key}"))
    if missing or options_cls is None:
        return None
    try:
        instance = options_cls(**kwargs)
    except (MinillmError, ValueError, TypeError) as exc:
        problems.add(name_where, name_where.problem(None, f"objective '{name}' options: {exc}"))
        return None
    validate = getattr(instance, "validate", None)
    if callable(validate):
        for problem in validate() or ():
            # Point at the option the problem names, when one was given, else at the objective's name.
            where = next((e.where for k, e in given.items() if re.search(rf"\b{re.escape(k)}\b", problem)), name_where)
            problems.add(where, where.problem(None, f"objective '{name}': {problem}"))
    return None if bad else instance


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
        Dumper=_yaml()[1],
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=110,
    )
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    return text


# --- shipped recipes ------------------------------------------------------------------------------------------------


def _header(path: Path) -> tuple[str, str]:
    """(command, description) from a recipe's first two comment lines."""
    comments = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#") or len(comments) == 2:
                break
            comments.append(line.lstrip("#").strip())
    comments += ["", ""]
    return comments[0], comments[1]


def list_recipes() -> list[tuple[str, str, str]]:
    """(name, command, description) of every shipped recipe, sorted by name."""
    if not RECIPES_DIR.is_dir():
        return []
    rows = []
    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        name = path.relative_to(RECIPES_DIR).with_suffix("").as_posix()
        if name.startswith("compare/"):
            continue   # comparison plans (`minillm compare`), not distill recipes
        rows.append((name, *_header(path)))
    return rows


def _shipped(name: str) -> Optional[Path]:
    name = name.removesuffix(".yaml")
    if not name or not RECIPES_DIR.is_dir() or name.startswith("compare/"):
        return None
    path = (RECIPES_DIR / f"{name}.yaml").resolve()
    if path.is_file() and path.is_relative_to(RECIPES_DIR):
        return path
    return None


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe (``smollm2/135M_to_6L_KD``, ``.yaml`` optional)."""
    path = _shipped(name)
    if path is None:
        raise unknown_name("recipe", name, [row[0] for row in list_recipes()])
    return path


def copy_recipe(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Copy a shipped recipe to ``dest`` (default ``./<basename>.yaml``; a directory gets that name inside)."""
    source = recipe_path(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise MinillmError(f"{target} already exists; pass --force to overwrite it, or give another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
