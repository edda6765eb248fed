"""Resumable checkpoints and exported students.

A checkpoint directory (``checkpoints/step-000100``) holds everything needed to continue exactly: the student
weights (safetensors), the optimizer and scheduler states, every RNG state, the data position, the objective's
own state and the resolved config. It is written into a temporary sibling and renamed into place, so a crash
never leaves a half-written checkpoint, and the previous ones stay until the new one is complete.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .atomic import atomic_directory, atomic_open
from .errors import MinillmError

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    position: int = 0                 # index into this epoch's example order
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    tokens_seen: int = 0
    lm_position: int = 0              # next plain-text chunk for language-modelling losses
    history: list = field(default_factory=list)   # validation results


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file())


def _rng_states() -> dict:
    import numpy as np
    import torch

    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy_state = np.random.get_state()
    states["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    return states


def _set_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    output_dir: Path, state: TrainerState, model, optimizer, scheduler, objective, engine_rng: random.Random,
    config_yaml: str, keep: int = 2,
) -> Path:
    import torch
    from safetensors.torch import save_model

    target = checkpoint_dir(output_dir, state.step)
    with atomic_directory(target, overwrite=True) as tmp:
        save_model(model, str(tmp / "student.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"rng": _rng_states(), "engine_rng": engine_rng.getstate(), "objective": objective.state_dict()}, tmp / "states.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def find_resume_checkpoint(resume: str, output_dir: Path) -> Path:
    """``auto``/``latest`` picks the newest checkpoint of output_dir; otherwise a checkpoint or output directory."""
    candidate = Path(output_dir) if resume in ("auto", "latest") else Path(resume)
    if (candidate / STATE_FILE).is_file():
        return candidate
    found = list_checkpoints(candidate)
    if not found:
        raise MinillmError(
            f"no checkpoint to resume in '{candidate}' (looked for {candidate}/checkpoints/step-*/{STATE_FILE}); "
            "start without --resume, or pass the run's output directory"
        )
    return found[-1]


def load_checkpoint(path: Path, model, optimizer, scheduler, objective, engine_rng: random.Random) -> TrainerState:
    import torch
    from safetensors.torch import load_model

    path = Path(path)
    try:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        load_model(model, str(path / "student.safetensors"))
        # weights_only: a checkpoint is data, never code (torch.load would otherwise unpickle anything).
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        states = torch.load(path / "states.pt", weights_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise MinillmError(f"checkpoint '{path}' cannot be loaded ({exc}); pick another with --resume PATH") from exc
    _set_rng_states(states["rng"])
    version, internal, gauss = states["engine_rng"]
    engine_rng.setstate((version, tuple(internal), gauss))
    objective.load_state_dict(states["objective"])
    return state


def export_model(model, tokenizer, out: Path, metadata: Optional[dict] = None) -> Path:
    """A Hugging Face model directory with safetensors, replaced atomically."""
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if metadata:
            with atomic_open(tmp / "minillm.json") as handle:
                json.dump(metadata, handle, indent=2)
    return out
