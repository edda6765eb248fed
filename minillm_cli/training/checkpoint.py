"""Resumable checkpoints and exported students.

A checkpoint directory (``checkpoints/step-000100``) holds everything needed to continue exactly: the student
weights (safetensors), the optimizer and scheduler states, every RNG state, the data position, the objective's
own state and the resolved config. It is written into a temporary sibling, flushed to disk and renamed into place,
so a crash never leaves a half-written checkpoint, and the previous ones stay until the new one is complete.

``manifest.json`` is written last and lists every other file with its size and sha256: a checkpoint is
*complete* when its manifest is present and every file matches it. Resuming picks the newest complete checkpoint
(and says which it skipped); rotation counts only complete ones, so it never deletes the last good one.
"""

from __future__ import annotations

import errno
import json
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..atomic import atomic_directory, atomic_open, remove_stale_siblings
from ..errors import MinillmError
from ..runs.run_info import file_sha256

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
_STEP_NAME = re.compile(r"^step-(\d+)$")
_OLD_NAME = re.compile(r"^(step-\d+)\.old-\d+$")   # the only copy when a kill fell between atomic_directory's renames


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
    skipped_steps: int = 0            # steps skipped for a non-finite loss or gradient, in all
    bad_steps_in_row: int = 0         # the current run of consecutive skipped steps
    last_bad_term: Optional[str] = None   # the loss term (or 'gradient') that was last non-finite
    seconds_used: float = 0.0         # wall time of the run so far, across resumes (train.max_minutes)
    teacher_tokens: int = 0           # token positions the teacher computed in training steps (teacher_tokens.py)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def _step_of(path: Path) -> int:
    match = _STEP_NAME.match(path.name) or _OLD_NAME.match(path.name)
    return int((match.group(1) if match.re is _OLD_NAME else path.name)[len("step-"):])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint directories by step, oldest first, complete or not (see ``verify_checkpoint``).

    Temporary ``step-N.tmp-PID`` directories of an unfinished save are never listed; ``step-N.old-PID`` is,
    when ``step-N`` itself is missing.
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_NAME.match(p.name)]
    names = {p.name for p in found}
    found += [p for p in root.iterdir() if p.is_dir() and (m := _OLD_NAME.match(p.name)) and m.group(1) not in names]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def write_manifest(directory: Path) -> None:
    """List every file of ``directory`` with its size and sha256; called last, so its presence means 'complete'."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    with atomic_open(directory / MANIFEST) as handle:
        json.dump({"format": 1, "files": files}, handle, indent=2)


def verify_checkpoint(path: Path, full: bool = True) -> Optional[str]:
    """None when ``path`` is a complete checkpoint, else why not (one phrase). ``full=False`` skips the hashes."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}: the save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({type(exc).__name__})"
    if STATE_FILE not in files:
        return f"{MANIFEST} does not list {STATE_FILE}"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the manifest says {expected.get('size')}"
        if full and file_sha256(file) != expected.get("sha256"):
            return f"{name} fails its sha256 check"
    return None


def rng_states() -> dict:
    """This process's random states (Python, torch, CUDA, NumPy), in a form torch.save can store."""
    import numpy as np
    import torch

    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy_state = np.random.get_state()
    states["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    return states


def set_rng_states(states: dict) -> None:
    """Restore the random states ``rng_states`` returned, so sampling continues as if never interrupted."""
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
    config_yaml: str, keep: int = 2, extra: Optional[dict] = None, write_extra: Optional[Callable] = None,
) -> Path:
    """``extra``: name -> file or directory moved into the checkpoint (DeepSpeed's ZeRO shards, written by every
    process); ``write_extra(directory)`` writes more files into it (every process's random state). Both are listed
    in the manifest like the rest."""
    import torch
    from safetensors.torch import save_model

    target = checkpoint_dir(output_dir, state.step)
    try:
        with atomic_directory(target, overwrite=True) as tmp:
            save_model(model, str(tmp / "student.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"rng": rng_states(), "engine_rng": engine_rng.getstate(), "objective": objective.state_dict()}, tmp / "states.pt")
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
            for name, source in (extra or {}).items():
                shutil.move(str(source), str(tmp / name))
            if write_extra is not None:
                write_extra(tmp)
            write_manifest(tmp)
    except Exception as exc:
        error = write_failure_error(exc, f"checkpoint {target.name} in {target.parent}", output_dir, "the previous ")
        if error is None:
            raise
        raise error from exc
    remove_stale_siblings(target.parent)
    _rotate(output_dir, keep, target)
    return target


# How torch's zip writer reports a write the disk refused, as RuntimeError (each seen on a full disk): its C++ stream
# checks the position after each write ("unexpected pos N vs M" when one fell short), fails the write itself, or
# fails to flush at the end ("basic_ios::clear: iostream error").
_TORCH_WRITER_FAILURES = ("inline_container", "pytorchstreamwriter", "unexpected pos", "file write failed",
                          "iostream error", "basic_ios")


def is_write_failure(exc: BaseException) -> bool:
    """OSError, or what torch/safetensors/tokenizers make of one (their C++/Rust writers re-raise it as their own
    type: a Rust I/O error reads "No space left on device (os error 28)", raised by tokenizers as a bare Exception)."""
    if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
        return True
    text = str(exc).lower()
    if "(os error " in text or "no space left" in text:
        return True
    return isinstance(exc, RuntimeError) and ("writ" in text or any(mark in text for mark in _TORCH_WRITER_FAILURES))


def _write_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left" in text or "storagefull" in text:
        return "no space left on device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if any(mark in text for mark in _TORCH_WRITER_FAILURES):   # torch's writer says no more than that a write failed
        return f"torch's writer failed, the disk is full or failing: {first}"
    return first


def write_failure_error(exc: BaseException, what: str, output_dir: Path, previous: str = "") -> Optional[MinillmError]:
    """The one line for a save that the disk refused (full, read-only, …), naming the newest complete checkpoint
    that stays intact; None when ``exc`` is not a write failure (a bug: it keeps its traceback)."""
    if not is_write_failure(exc):
        return None
    kept = [p.name for p in list_checkpoints(output_dir) if verify_checkpoint(p, full=False) is None]
    return MinillmError(
        f"cannot save {what} ({_write_reason(exc)}); "
        + (f"{previous}checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists")
        + f"; free disk space (or lower checkpoint.keep) and resume with --resume {output_dir}"
    )


def _rotate(output_dir: Path, keep: int, newest: Path) -> None:
    """Keep the ``keep`` newest complete checkpoints and the one just written; delete what is older.

    Only complete checkpoints count toward ``keep`` (sizes checked, not hashes: rotation runs at every save), so
    a damaged newer checkpoint can never push the last good one out.
    """
    if keep <= 0:
        return
    found = list_checkpoints(output_dir)
    complete = [p for p in found if p == newest or verify_checkpoint(p, full=False) is None]
    kept = set(complete[-keep:]) | {newest}
    oldest_kept = min(_step_of(p) for p in kept)
    for path in found:
        if path not in kept and (path in complete or _step_of(path) < oldest_kept):
            shutil.rmtree(path, ignore_errors=True)


def find_resume_checkpoint(resume: str, output_dir: Path, warn: Optional[Callable[[str], None]] = None) -> Path:
    """``auto``/``latest`` picks the newest complete checkpoint of output_dir; otherwise a checkpoint or output
    directory. Incomplete checkpoints newer than the one chosen are reported through ``warn`` (one line)."""
    candidate = Path(output_dir) if resume in ("auto", "latest") else Path(resume)
    if (candidate / STATE_FILE).is_file() or (candidate / MANIFEST).is_file():
        problem = verify_checkpoint(candidate)
        if problem:
            raise MinillmError(
                f"checkpoint '{candidate}' is incomplete or damaged ({problem}); pass the run's output directory "
                "to resume from its newest complete checkpoint, or another checkpoint with --resume PATH"
            )
        return candidate
    found = list_checkpoints(candidate)
    if not found:
        raise MinillmError(
            f"no checkpoint to resume in '{candidate}' (looked for {candidate}/checkpoints/step-*/{STATE_FILE}); "
            "start without --resume, or pass the run's output directory"
        )
    skipped = []
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            if skipped and warn is not None:
                warn(f"skipped incomplete checkpoint{'s' if len(skipped) > 1 else ''} {'; '.join(skipped)}; "
                     f"resuming from {path.name}")
            return path
        skipped.append(f"{path.name} ({problem})")
    raise MinillmError(
        f"no complete checkpoint in '{candidate}' ({'; '.join(skipped)}); start over with --overwrite, "
        "or pass a checkpoint you trust with --resume PATH"
    )


def rewind_metrics(output_dir: Path, step: int) -> int:
    """Drop metrics.jsonl records after ``step`` (and a line torn by a kill): the resumed run logs them again.

    Returns how many lines were dropped.
    """
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += bool(line.strip())
    if dropped:
        with atomic_open(path) as handle:
            handle.write("".join(line + "\n" for line in kept))
    return dropped


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
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        if isinstance(exc, pickle.UnpicklingError):  # weights_only refused it: unpickling it would have run code
            first = "it holds Python objects other than tensors and plain data, which are never unpickled"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MinillmError(f"checkpoint '{path}' cannot be loaded ({first}); pick another with --resume PATH") from exc
    set_rng_states(states["rng"])
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
