"""The typed validator: values checked against dataclass fields (type, choices, rule), problems collected with locations.

Any dataclass can be checked: the run configuration (``schema.py``), an objective's ``Options``, an evaluator's
``Options``. A field says what it accepts through its annotation and its metadata, which ``option(default, help,
choices=..., rule=...)`` (``minillm_cli.objective``) fills: ``choices`` is a tuple of allowed values, ``rule`` a
:class:`Rule` (a test and what it demands, e.g. :func:`greater_than`). Messages say what was expected and what was
given, with a "did you mean" where a close name exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple, Optional, Sequence, Union

from ..errors import MinillmError

# --- rules: value checks beyond the type, declared on the fields ---------------------------------------------


class Rule(NamedTuple):
    """A value check beyond the type: ``test(value)`` must hold; ``explanation`` says what it demands."""

    test: Callable[[Any], bool]
    explanation: str


def greater_than(bound) -> Rule:
    """The value must be > ``bound``."""
    return Rule(lambda v: v > bound, f"must be > {bound}")


def at_least(bound) -> Rule:
    """The value must be >= ``bound``."""
    return Rule(lambda v: v >= bound, f"must be >= {bound}")


NOT_EMPTY = Rule(lambda v: v.strip() != "", "must not be empty")

# Names other tools use for our keys, for "did you mean".
KEY_ALIASES = {
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

# --- where a value came from, and the collected problems ----------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a value was written, for messages: ``recipe.yaml:12``, ``override 'train.lr=fast'``."""

    label: str                  # "recipe.yaml:12", "override 'train.lr=fast'", "option 'train.steps'"
    origin: str                 # for the header: "recipe.yaml", "the command line"
    key: Optional[str] = None   # the dotted key the label already shows
    order: tuple = ()           # problems are reported in input order: (layer, line or position)

    def problem(self, dotted: Optional[str], message: str) -> str:
        """The message prefixed with this location, and with the key unless the label already shows it."""
        if dotted and dotted != self.key:
            return f"{self.label}: {dotted}: {message}"
        return f"{self.label}: {message}"


class Problems:
    """Every problem found, raised together in input order as one :class:`MinillmError`."""

    def __init__(self):
        self.items: list[tuple[Location, str]] = []

    def add(self, where: Location, text: str) -> None:
        self.items.append((where, text))

    def raise_if_any(self) -> None:
        if self.items:
            items = sorted(self.items, key=lambda item: item[0].order)  # stable: same place keeps its order
            origins = list(dict.fromkeys(where.origin for where, _ in items))
            n = len(items)
            raise MinillmError(
                f"{n} problem{'s' if n != 1 else ''} in {' and '.join(origins)}: " + "; ".join(t for _, t in items)
            )


# --- the dataclass field walk --------------------------------------------------------------------------------

_SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "Any": Any}


def dataclass_fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
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


def is_section(tp) -> bool:
    """A field type that is itself a dataclass: a section of keys, not a value."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls, prefix: tuple = ()) -> dict[tuple, tuple[dataclasses.Field, Any]]:
    """Key path -> (field, type) of every plain key of a dataclass, sections walked depth-first in field order."""
    leaves = {}
    for name, (f, tp) in dataclass_fields(cls).items():
        path = prefix + (name,)
        if is_section(tp):
            leaves.update(leaf_fields(tp, path))
        else:
            leaves[path] = (f, tp)
    return leaves


def field_default(f: dataclasses.Field):
    """A field's default value (from its factory if it has one), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


# --- unknown keys --------------------------------------------------------------------------------------------


def _suggest(name: str, known: Sequence[str], prefix: tuple, elsewhere: Iterable[tuple]) -> Optional[str]:
    """The key the user probably meant, as a dotted key."""
    candidate = KEY_ALIASES.get(name, name)
    if candidate in known and candidate != name:
        return ".".join(prefix + (candidate,))
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return ".".join(prefix + (close[0],))
    for path in elsewhere:  # the right key in the wrong section: top-level 'lr' -> 'train.lr'
        if path[-1] in (name, candidate) and path[:-1] != prefix:
            return ".".join(path)
    return None


def unknown_key_message(
    name: str,
    prefix: tuple,
    known: Sequence[str],
    what: str = "key",
    elsewhere: Iterable[tuple] = (),
    section: Optional[str] = None,
) -> str:
    """The message for an unknown key: what was meant, if guessable, and the known keys of its section.

    ``elsewhere``: every key path, to point at the right key in another section; ``section``: how the known
    names are introduced (``objective 'kd'`` gives "known options of objective 'kd'"), by default the prefix.
    """
    dotted = ".".join(prefix + (name,))
    message = f"unknown {what} '{dotted}'"
    hint = _suggest(name, known, prefix, elsewhere)
    if hint:
        message += f" (did you mean '{hint}'?)"
    if section is not None:
        where = f"of {section}"
    else:
        where = f"in {'.'.join(prefix)}" if prefix else "at the top level"
    return message + f"; known {what}s {where}: {', '.join(known) if known else '(none)'}"


# --- type and value checks -----------------------------------------------------------------------------------


def show_value(value) -> str:
    """A value as a message shows it: YAML's null/true/false, long values cut to 60 characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _union_members(tp):
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return typing.get_args(tp)
    return None


def describe_type(tp) -> str:
    """A type annotation in words: ``Optional[int]`` -> "an integer or null"."""
    args = _union_members(tp)
    if args is not None:
        names = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    origin, inner = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(show_value(a) for a in inner)
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
            element = describe_type(inner[0])
            return f"a list of {element.split(' ', 1)[-1]}s" if element.startswith(("a ", "an ")) else "a list"
        return "a list"
    if tp is dict or origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def convert_value(value, tp) -> tuple[bool, Any]:
    """(ok, value converted to the annotation: ints to floats, tuples to lists)."""
    if tp is Any or tp is object:
        return True, value
    args = _union_members(tp)
    if args is not None:
        if value is None:
            return type(None) in args, None
        for arg in args:
            if arg is not type(None):
                ok, converted = convert_value(value, arg)
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
            ok, converted = convert_value(item, element)
            if not ok:
                return False, value
            items.append(converted)
        return True, items
    if tp is dict or origin is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def check_value(value, tp, choices: Optional[Sequence] = None, rule: Optional[Rule] = None) -> tuple[Optional[str], Any]:
    """(problem or None, converted value): the type first, then the choices, then the rule."""
    ok, converted = convert_value(value, tp)
    if not ok:
        return f"expected {describe_type(tp)}, got {show_value(value)}", value
    if converted is None:
        return None, converted
    if _holds_nonfinite(converted):   # YAML's .inf and .nan are floats: no setting means them (an .inf lr is NaN weights)
        return f"expected a finite number, got {show_value(value)}", value
    if choices is not None and converted not in choices:
        members = _union_members(tp)
        options = ", ".join(choices) + (" or null" if members and type(None) in members else "")
        message = f"expected one of {options}, got {show_value(value)}"
        close = difflib.get_close_matches(str(converted), list(choices), n=1)
        return message + (f" (did you mean '{close[0]}'?)" if close else ""), value
    if rule is not None:
        test, explanation = rule
        try:
            good = test(converted)
        except TypeError:
            good = False
        if not good:
            return f"{explanation}, got {show_value(value)}", value
    return None, converted


def _holds_nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_holds_nonfinite(item) for item in value)
    return False


def check_field(value, f: dataclasses.Field, tp) -> tuple[Optional[str], Any]:
    """:func:`check_value` with the choices and rule the field declares in its metadata."""
    return check_value(value, tp, f.metadata.get("choices"), f.metadata.get("rule"))


# --- an Options dataclass from given values ------------------------------------------------------------------


@dataclass(frozen=True)
class OptionProblem:
    """A problem with given options: about a key (unknown), a key's value, or the options as a whole."""

    key: Optional[str]      # the given key it is about; None: the options as a whole
    message: str
    about_value: bool = False   # the key is known, its value wrong: messages show the key before the problem


def build_options(
    options_cls,
    given: Mapping[str, Any],
    prefix: tuple,
    owner: str,
    *,
    refused: Optional[Mapping[str, str]] = None,
    require_defaults: bool = False,
) -> tuple[Any, list[OptionProblem]]:
    """(``options_cls`` built from ``given``, each value checked against its field, or None on any problem; the problems).

    A problem for each unknown key, wrong value, failed construction and each problem the instance's
    ``validate()`` reports (keyed by the first given option it names); the good options are still built and
    validated, so that everything is reported at once. ``owner`` names the options in messages (``objective
    'kd'``, ``suite 'dolly'``), ``prefix`` is the keys' section. ``refused``: keys the caller sets itself, with the
    message to report; ``require_defaults``: report the fields without a default that are not given (instead of
    a failed construction).
    """
    fields = dataclass_fields(options_cls) if options_cls is not None else {}
    kwargs, problems = {}, []
    for key, value in given.items():
        if refused and key in refused:
            problems.append(OptionProblem(key, refused[key]))
        elif key not in fields:
            message = unknown_key_message(key, prefix, list(fields), what="option", section=owner)
            problems.append(OptionProblem(key, message))
        else:
            problem, converted = check_field(value, *fields[key])
            if problem:
                problems.append(OptionProblem(key, problem, about_value=True))
            else:
                kwargs[key] = converted
    if require_defaults:
        missing = [key for key, (f, _) in fields.items() if key not in given and field_default(f) is dataclasses.MISSING]
        section = ".".join(prefix)
        problems += [OptionProblem(None, f"{owner} needs option '{key}'; add {section}.{key}") for key in missing]
        if missing:
            return None, problems
    if options_cls is None:
        return None, problems
    try:
        instance = options_cls(**kwargs)
    except (MinillmError, ValueError, TypeError) as exc:
        problems.append(OptionProblem(None, f"{owner} options: {exc}"))
        return None, problems
    validate = getattr(instance, "validate", None)
    for problem in (validate() or ()) if callable(validate) else ():
        named = next((k for k in given if re.search(rf"\b{re.escape(k)}\b", problem)), None)
        problems.append(OptionProblem(named, f"{owner}: {problem}"))
    return (None if problems else instance), problems
