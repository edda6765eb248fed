"""Where a resumed run writes, and which config changes it accepts: the folder ``--resume`` points at, the checkpoint's
config unless ``--allow-changes``.

A checkpoint's ``config.yaml`` holds the ``output_dir`` its run was started with, possibly relative to another
working directory, possibly the original of a copied run: a resume never writes there, but in the run folder it was
pointed at (the folder itself, or the one holding ``checkpoints/step-N`` when pointed at a checkpoint). A resumed
run continues exactly only with the config it was saved with, so a change to any key that steers training (the
objective, the learning rate, the data, …) is refused, naming each key, unless ``--allow-changes`` says it is meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import MinillmError

# Keys a resumed run may change and still continue exactly: how long it runs, where it writes, how it checkpoints.
CHANGEABLE_ON_RESUME = (
    "output_dir", "train.steps", "train.epochs", "train.max_minutes", "train.max_bad_steps", "checkpoint.every",
    "checkpoint.keep",
)


def run_folder_of(resume: str, checkpoint: Path, given: Optional[str]) -> Optional[Path]:
    """The run folder ``--resume`` names: the folder itself, or the run holding the checkpoint it names; None for
    ``auto``/``latest`` (the config's output_dir). ``given``: the output directory the command names, which must
    be that folder (a checkpoint outside a run's ``checkpoints/`` needs it)."""
    if resume in ("auto", "latest"):
        return None
    pointed = Path(resume)
    if pointed.resolve() == Path(checkpoint).resolve():
        if pointed.resolve().parent.name != "checkpoints":
            if given is None:
                raise MinillmError(
                    f"checkpoint '{pointed}' is not inside a run's checkpoints/ folder; name the folder the resumed "
                    "run writes to with --output-dir"
                )
            return Path(given)
        pointed = pointed.resolve().parent.parent
    check_output_dir(pointed, given)
    return pointed


def output_dir_given(options: dict, overrides: Sequence[str]) -> Optional[str]:
    """The output directory this command names itself (--output-dir or an output_dir= override), else None."""
    given = options.get("output_dir")
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "output_dir":
            given = value.strip()
    return given


def check_output_dir(run_folder: Path, given: Optional[str]) -> None:
    """A resume writes into the run it continues: an --output-dir elsewhere is refused rather than half-honoured."""
    if given is not None and Path(given).resolve() != run_folder.resolve():
        raise MinillmError(
            f"--resume {run_folder} continues that run in {run_folder}, but --output-dir names {given}; drop "
            f"--output-dir, or copy the run to {given} and resume it there"
        )


def _flatten(data: Any, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_keys(saved: dict, current: dict, also_changeable: Sequence[str] = ()) -> list[str]:
    """``key: saved → current`` for every key that differs, except those in ``CHANGEABLE_ON_RESUME`` and
    ``also_changeable``."""
    before, after = _flatten(saved), _flatten(current)
    other_objective = before.get("objective.name") != after.get("objective.name")
    changes = []
    for key in list(dict.fromkeys([*before, *after])):
        if key in CHANGEABLE_ON_RESUME or key in also_changeable or before.get(key) == after.get(key):
            continue
        if other_objective and key.startswith("objective.") and key != "objective.name":
            continue   # another objective has other options: its name says it all
        changes.append(f"{key}: {_shown(before, key)} → {_shown(after, key)}")
    return changes


def _shown(values: dict, key: str) -> str:
    from ..config.validate import show_value

    return show_value(values[key]) if key in values else "unset"


def check_unchanged(checkpoint: Path, current: dict, allow_changes: bool, warn) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a key that steers training (each named), or
    with ``allow_changes`` say in one warning line what changes."""
    from ..config.recipes import config_to_dict, load_config

    saved_config, saved_options = load_config(str(Path(checkpoint) / "config.yaml"))
    batch = current.get("train", {}).get("batch_size")
    # A run resumes exactly on another number of processes when the global batch stays (docs/scaling.md).
    same_global_batch = batch is not None and batch * _world_size() == saved_config.train.batch_size * _saved_world(checkpoint)
    changes = changed_keys(config_to_dict(saved_config, saved_options), current,
                           ("train.batch_size",) if same_global_batch else ())
    if not changes:
        return
    if allow_changes:
        warn(f"resuming with a changed config, so the run will not continue exactly: {'; '.join(changes)}")
        return
    raise MinillmError(
        f"the config differs from checkpoint {Path(checkpoint).name}'s, so the run would not continue exactly: "
        f"{'; '.join(changes)}; pass --allow-changes to resume with them anyway, or start a new run with "
        "another --output-dir"
    )


def _world_size() -> int:
    """The processes of this run: WORLD_SIZE under a launcher, else 1 (read before the process group exists)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _saved_world(checkpoint: Path) -> int:
    """The processes that wrote ``checkpoint`` (its ``ranks.pt``; 1 when it has none)."""
    ranks = Path(checkpoint) / "ranks.pt"
    if not ranks.is_file():
        return 1
    import torch

    try:
        return int(torch.load(ranks, weights_only=True).get("world", 1))
    except Exception:  # noqa: BLE001 - an unreadable file is reported when the checkpoint is loaded
        return 1
