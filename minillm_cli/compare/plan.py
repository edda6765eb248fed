"""A comparison plan: the stages of a fair comparison of objectives (YAML), checked before anything runs.

A plan names distill stages (each a recipe plus overrides) and the models to evaluate. Overrides may use
``{data_dir}``, ``{output_dir}`` and ``{STAGE}`` (the exported model of another stage, which makes that stage
a dependency). Stages marked ``budget: true`` get the same wall time, ``train.max_minutes = budget_minutes``.
A stage with ``sweep`` runs once per swept value; its name then stands for the winner on validation (``sweep``).
Shipped plans live in ``recipes/compare/``; ``minillm compare --plan NAME`` finds them by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import MinillmError, unknown_name
from ..config.library import RECIPES_DIR
from .sweep import expand

PLANS_DIR = RECIPES_DIR / "compare"
EXPORTS = ("final", "best")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_RESERVED = {"data_dir", "output_dir"}


@dataclass
class Stage:
    name: str
    recipe: str
    export: str = "final"            # which export of the run stands for this stage: final or best
    budget: bool = False             # gets train.max_minutes = plan.budget_minutes
    overrides: list = field(default_factory=list)
    after: list = field(default_factory=list)   # stages whose exports this one uses (from the overrides), and explicit ones
    sweep_of: Optional[str] = None   # the swept stage this run is one value of
    swept: list = field(default_factory=list)   # its swept settings, as overrides ("train.lr=0.0001")


@dataclass
class EvalPlan:
    models: list                     # stage names
    suites: list = field(default_factory=lambda: ["dolly", "selfinst"])
    seeds: list = field(default_factory=lambda: [10, 20, 30, 40, 50])
    limit: Optional[int] = None
    max_new_tokens: int = 256
    batch_size: int = 8
    exposure: Optional[dict] = None  # {teacher: STAGE, suite, limit, max_len}: ExAccErr against that stage's model
    args: list = field(default_factory=list)     # extra `minillm eval` arguments
    suites_for: dict = field(default_factory=dict)   # model -> its own suites (e.g. ablations on Dolly only)


@dataclass
class Plan:
    path: Path
    title: str
    output_dir: str
    stages: list
    evaluate: EvalPlan
    parallel: int = 1
    threads: Optional[int] = None
    budget_minutes: Optional[float] = None
    overrides: list = field(default_factory=list)   # applied to every stage, before its own
    sweeps: dict = field(default_factory=dict)      # swept stage name -> its runs' names (stages of their own)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def names(self) -> list:
        """Every name a plan may refer to: the stages and the swept stages (which stand for their winners)."""
        return [s.name for s in self.stages] + list(self.sweeps)


def list_plans() -> list[tuple[str, str]]:
    """(name, first description line) of every shipped plan."""
    if not PLANS_DIR.is_dir():
        return []
    rows = []
    for path in sorted(PLANS_DIR.glob("*.yaml")):
        lines = [ln.lstrip("#").strip() for ln in path.read_text(encoding="utf-8").splitlines()[:2] if ln.startswith("#")]
        rows.append((path.stem, lines[1] if len(lines) > 1 else ""))
    return rows


def plan_path(plan: str) -> Path:
    path = Path(plan)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = PLANS_DIR / f"{plan.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise unknown_name("comparison plan (a shipped name or a YAML file)", plan, [n for n, _ in list_plans()])


def _where(path: Path, lines: dict, key: str) -> str:
    line = lines.get(key)
    return f"{path}:{line}" if line else str(path)


def _key_lines(text: str) -> dict:
    """'stages' / 'evaluate.models' / stage names -> the line they appear on, for error messages."""
    lines: dict = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^(\s*)(?:-\s*)?(?:name:\s*)?([A-Za-z_][\w-]*)\s*:", line)
        if match and match.group(2) not in lines:
            lines[match.group(2)] = number
        named = re.search(r"name:\s*([A-Za-z][\w-]*)", line)
        if named and f"stage:{named.group(1)}" not in lines:
            lines[f"stage:{named.group(1)}"] = number
    return lines


def _check_keys(data: dict, known: tuple, what: str, where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise MinillmError(f"{where}: unknown key '{key}' in {what}; known: {', '.join(known)}{hint}")


def _fields(template: str, where: str) -> list:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise MinillmError(f"{where}: bad placeholder in override '{template}': {exc}; use {{data_dir}}, {{output_dir}} or {{STAGE}}") from None


def load_plan(plan: str) -> Plan:
    import yaml

    path = plan_path(plan)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MinillmError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the plan file") from None
    lines = _key_lines(text)
    if not isinstance(data, dict):
        raise MinillmError(f"{path}: a plan is a mapping with 'stages' and 'evaluate'; see recipes/compare/")
    top = ("output_dir", "parallel", "threads", "budget_minutes", "overrides", "stages", "evaluate")
    _check_keys(data, top, "the plan", str(path))
    for key in ("stages", "evaluate"):
        if key not in data:
            raise MinillmError(f"{path}: the plan has no '{key}'; see recipes/compare/smollm2_dolly.yaml for an example")
    stages: list = []
    sweeps: dict = {}
    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise MinillmError(f"{_where(path, lines, 'stages')}: 'stages' must be a non-empty list of {{name, recipe, ...}}")
    for item in raw_stages:
        if not isinstance(item, dict) or "name" not in item or "recipe" not in item:
            raise MinillmError(f"{_where(path, lines, 'stages')}: every stage needs a name and a recipe, got {item!r}")
        where = _where(path, lines, f"stage:{item['name']}")
        _check_keys(item, ("name", "recipe", "export", "budget", "overrides", "after", "sweep"), f"stage '{item['name']}'", where)
        name = str(item["name"])
        if not _NAME.match(name) or name in _RESERVED:
            raise MinillmError(f"{where}: stage name '{name}' must be a letter then letters, digits, _ or - (and not data_dir/output_dir)")
        if any(s.name == name or s.sweep_of == name for s in stages):
            raise MinillmError(f"{where}: two stages are named '{name}'; give each a different name")
        export = item.get("export", "final")
        if export not in EXPORTS:
            raise MinillmError(f"{where}: export must be one of {', '.join(EXPORTS)}, got '{export}'")
        overrides = item.get("overrides") or []
        after = item.get("after") or []
        if not isinstance(overrides, list) or not isinstance(after, list):
            raise MinillmError(f"{where}: 'overrides' and 'after' are lists")
        stage = Stage(name=name, recipe=str(item["recipe"]), export=export, budget=bool(item.get("budget", False)),
                      overrides=[str(o) for o in overrides], after=[str(a) for a in after])
        if "sweep" in item:
            runs = expand(name, item["sweep"], where)
            sweeps[name] = [child for child, _ in runs]
            stages.extend(dataclasses.replace(stage, name=child, overrides=stage.overrides + extra, after=list(stage.after),
                                              sweep_of=name, swept=extra) for child, extra in runs)
        else:
            stages.append(stage)
    names = [s.name for s in stages] + list(sweeps)
    shared = [str(o) for o in data.get("overrides") or []]
    for stage in stages:
        where = _where(path, lines, f"stage:{stage.sweep_of or stage.name}")
        for template in shared + stage.overrides:
            for ref in _fields(template, where):
                if ref in _RESERVED:
                    continue
                if ref not in names:
                    raise unknown_name(f"stage in {where} override '{template}'", ref, names + sorted(_RESERVED))
                if ref not in stage.after:
                    stage.after.append(ref)
        for ref in stage.after:
            if ref not in names:
                raise unknown_name(f"stage in {where} 'after'", ref, names)
        # a swept stage is ready when all its runs are: the winner is known only then
        stage.after = list(dict.fromkeys(r for ref in stage.after for r in sweeps.get(ref, [ref])))
        if stage.name in stage.after:
            raise MinillmError(f"{where}: stage '{stage.sweep_of or stage.name}' uses its own export; remove that reference")
    _check_acyclic(stages, path)
    budget = data.get("budget_minutes")
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise MinillmError(f"{_where(path, lines, 'budget_minutes')}: budget_minutes must be a positive number of minutes, got {budget!r}")
    if any(s.budget for s in stages) and budget is None:
        raise MinillmError(f"{path}: stages marked budget: true need a top-level budget_minutes")
    for key in ("parallel", "threads"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise MinillmError(f"{_where(path, lines, key)}: {key} must be a positive integer, got {value!r}")
    evaluate = _load_eval(data["evaluate"], names, path, lines)
    return Plan(
        path=path, title=_title(text), output_dir=str(data.get("output_dir") or f"runs/{path.stem}"), stages=stages,
        evaluate=evaluate, parallel=data.get("parallel") or 1, threads=data.get("threads"),
        budget_minutes=budget, overrides=shared, sweeps=sweeps,
    )


def _title(text: str) -> str:
    comments = [ln.lstrip("#").strip() for ln in text.splitlines()[:2] if ln.startswith("#")]
    return comments[1] if len(comments) > 1 else ""


def _check_acyclic(stages: list, path: Path) -> None:
    after = {s.name: s.after for s in stages}
    state: dict = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = " → ".join(trail[trail.index(name):] + [name])
            raise MinillmError(f"{path}: the stages depend on each other in a cycle ({cycle}); remove one dependency")
        state[name] = "open"
        for dep in after[name]:
            visit(dep, trail + [name])
        state[name] = "done"

    for stage in stages:
        visit(stage.name, [])


def _load_eval(raw, names: list, path: Path, lines: dict) -> EvalPlan:
    where = _where(path, lines, "evaluate")
    if not isinstance(raw, dict):
        raise MinillmError(f"{where}: 'evaluate' is a mapping with models, suites, seeds, ...")
    known = ("models", "suites", "seeds", "limit", "max_new_tokens", "batch_size", "exposure", "args", "suites_for")
    _check_keys(raw, known, "evaluate", where)
    models = raw.get("models") or []
    if not isinstance(models, list) or not models:
        raise MinillmError(f"{where}: evaluate.models must list the stages whose models are evaluated")
    for model in models:
        if model not in names:
            raise unknown_name(f"stage in {where} evaluate.models", str(model), names)
    exposure = raw.get("exposure")
    if exposure is not None:
        if not isinstance(exposure, dict) or "teacher" not in exposure:
            raise MinillmError(f"{where}: evaluate.exposure needs teacher: STAGE (and optionally suite, limit, max_len)")
        _check_keys(exposure, ("teacher", "suite", "limit", "max_len"), "evaluate.exposure", where)
        if exposure["teacher"] not in names:
            raise unknown_name(f"stage in {where} evaluate.exposure.teacher", str(exposure["teacher"]), names)
    plan = EvalPlan(models=[str(m) for m in models], exposure=exposure)
    suites_for = raw.get("suites_for") or {}
    if not isinstance(suites_for, dict) or not all(isinstance(v, list) and v for v in suites_for.values()):
        raise MinillmError(f"{where}: evaluate.suites_for maps a model to its non-empty list of suites")
    for model in suites_for:
        if model not in plan.models:
            raise unknown_name(f"model in {where} evaluate.suites_for", str(model), plan.models)
    plan.suites_for = {str(k): [str(s) for s in v] for k, v in suites_for.items()}
    for key in ("suites", "seeds", "args"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, list) or not value and key != "args":
                raise MinillmError(f"{where}: evaluate.{key} must be a non-empty list")
            setattr(plan, key, [str(v) for v in value] if key != "seeds" else value)
    for key in ("limit", "max_new_tokens", "batch_size"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or value < 1:
                raise MinillmError(f"{where}: evaluate.{key} must be a positive integer, got {value!r}")
            setattr(plan, key, value)
    if not all(isinstance(s, int) for s in plan.seeds):
        raise MinillmError(f"{where}: evaluate.seeds must be integers, got {plan.seeds!r}")
    return plan
