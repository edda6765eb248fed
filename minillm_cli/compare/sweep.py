"""Learning-rate (or any setting) sweeps inside a comparison plan, and the choice of their winner.

A stage with ``sweep: {train.lr: [1.0e-4, 3.0e-4]}`` runs once per value (once per combination when it sweeps
several settings), as stages named ``STAGE-lr0.0001``, ... Everything that refers to ``STAGE`` (another stage's
``{STAGE}``, ``evaluate.models``) waits for all of them and then uses the winner, judged by the runs' own
``eval.select_by``: the highest validation Rouge-L at any of a run's validations (its ``best`` export holds that
checkpoint), ties decided by the lower loss; or, for runs that select by loss (an SFT initialisation, as the
paper picks it), the lowest validation loss. Always on the validation split, never on a test set
(docs/method.md §2).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

from ..errors import MinillmError


def expand(name: str, sweep, where: str) -> list[tuple[str, list]]:
    """(child name, its extra overrides) for every combination of the swept values, in the plan's order."""
    if not isinstance(sweep, dict) or not sweep:
        raise MinillmError(f"{where}: 'sweep' maps a setting to its values, e.g. {{train.lr: [1.0e-4, 3.0e-4]}}")
    keys = list(sweep)
    for key in keys:
        values = sweep[key]
        if not isinstance(values, list) or not values:
            raise MinillmError(f"{where}: sweep.{key} must be a non-empty list of values, got {values!r}")
        if len(set(map(str, values))) != len(values):
            raise MinillmError(f"{where}: sweep.{key} lists a value twice: {values!r}")
    children = []
    for combination in itertools.product(*(sweep[k] for k in keys)):
        label = "-".join(f"{str(k).split('.')[-1]}{_value(v)}" for k, v in zip(keys, combination))
        children.append((f"{name}-{label}", [f"{k}={_value(v)}" for k, v in zip(keys, combination)]))
    return children


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def validation_score(run: Path) -> Optional[dict]:
    """The best validation of a finished run by its own eval.select_by: {valid_rougeL, valid_loss, step,
    select_by}; None when the run has not validated."""
    try:
        with open(Path(run) / "metrics.jsonl", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        return None
    validations = [r for r in records if "valid_loss" in r]
    if not validations:
        return None
    try:
        select_by = json.loads((Path(run) / "run_info.json").read_text())["config"]["eval"]["select_by"]
    except (OSError, ValueError, KeyError, TypeError):
        select_by = "rougeL"
    with_rouge = [r for r in validations if r.get("valid_rougeL") is not None]
    if select_by == "rougeL" and with_rouge:
        best = max(with_rouge, key=lambda r: (r["valid_rougeL"], -r["valid_loss"]))
    else:
        select_by = "loss"
        best = min(validations, key=lambda r: r["valid_loss"])
    return {"valid_rougeL": best.get("valid_rougeL"), "valid_loss": best["valid_loss"], "step": best.get("step"),
            "select_by": select_by}


def choose(scores: dict) -> Optional[str]:
    """The winning run of {run: validation_score or None}: by Rouge-L (then loss) when every run selects by
    Rouge-L, else by loss."""
    scored = {name: s for name, s in scores.items() if s is not None}
    if not scored:
        return None
    if all(s["select_by"] == "rougeL" for s in scored.values()):
        return max(scored, key=lambda n: (scored[n]["valid_rougeL"], -scored[n]["valid_loss"]))
    return min(scored, key=lambda n: scored[n]["valid_loss"])
