"""Crash safety of checkpoints: SIGKILL at random moments, damaged checkpoints, rotation, a full disk.

The kill test runs a supervisor in its own process (torch imported once there); it forks a ``minillm distill``
child per attempt and kills it with SIGKILL, either after a random delay or at a random file-system event
(a torch.save, a safetensors write, an fsync, a rename: most of them inside a checkpoint save). The next child
resumes with ``--resume``; at the end the student must equal that of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

STEPS = 30
TINY = [
    f"train.steps={STEPS}", "train.batch_size=2", "train.lr=1e-2", "train.schedule=constant", "train.warmup_steps=0",
    "checkpoint.every=1", "checkpoint.keep=2", "eval.every=0", "eval.before_after=false", "eval.rouge_examples=0",
    "eval.max_examples=4", "data.limit=40", "data.max_prompt_tokens=512", "data.max_response_tokens=16",
]
KILLS = 20            # SIGKILLs that must land (half timed, half at a file-system event)
MAX_ATTEMPTS = 60     # bound on children, in case the run finishes before a timed kill lands


# --- the supervisor (its own process) --------------------------------------------------------------------------


def _fork(fn, log: Path) -> int:
    """Run fn() in a forked child with stderr to ``log``; returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        fn()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - report, then leave without running the parent's cleanup
        os.write(2, f"child crashed: {exc!r}\n".encode())
    finally:
        os._exit(code)


def _kill_at_event(k: int, counter: list) -> None:
    """SIGKILL this process at its k-th file-system event of a save (torch.save, save_model, fsync, rename)."""
    import safetensors.torch
    import torch

    def wrap(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counter[0] += 1
            if counter[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    for owner, name in ((torch, "save"), (safetensors.torch, "save_model"), (os, "fsync"), (os, "replace")):
        wrap(owner, name)


def _supervise(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.set_num_threads(1)
    from minillm_cli.training.checkpoint import list_checkpoints, verify_checkpoint
    from minillm_cli.cli import build_app, main

    build_app()   # plugins are loaded once, before any fork
    root = Path(spec["root"])
    common = ["distill", "--teacher", spec["teacher"], "--student", spec["student"], "--objective", "kd",
              "--no-progress", *TINY]
    rng = random.Random(spec["seed"])
    summary = {"timed_kills": 0, "event_kills": 0, "kills_mid_save": 0, "attempts": 0, "finished_early": 0,
               "resumes": 0, "resumed_newest_complete": 0, "skipped_warnings": 0, "complete_checkpoint_lost": 0,
               "errors": [], "trace": []}   # trace: (attempt, step resumed, kill, printed 'resumed from', killed)

    # A warm-up run here first, so that every lazy import is done before the children are forked (each child then
    # spends its time training, not importing); then the uninterrupted run, counting the file-system events.
    try:
        main(common + ["--output-dir", str(root / "warm-up"), "train.steps=1"])
    except SystemExit as exc:
        assert not exc.code, exc
    reference = root / "reference"
    events = [0]

    def straight():
        from minillm_cli.training.engine import Engine

        _kill_at_event(-1, events)
        original, first = Engine.train_step, []

        def train_step(self):
            if not first:   # where the first step begins: the start-up's share of time and events
                first.append((time.perf_counter() - started, events[0]))
            return original(self)

        Engine.train_step = train_step
        try:
            main(common + ["--output-dir", str(reference)])
        finally:   # Typer ends with SystemExit(0)
            (root / "events.json").write_text(json.dumps([events[0], *first[0]]))

    started = time.perf_counter()
    pid = _fork(straight, root / "reference.err")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (root / "reference.err").read_text()
    duration = time.perf_counter() - started
    total_events, startup_seconds, startup_events = json.loads((root / "events.json").read_text())
    # A resumed child starts slower (it verifies and loads a checkpoint): time one, on the finished reference.
    started = time.perf_counter()
    pid = _fork(lambda: main(common + ["--output-dir", str(reference), "--resume", str(reference)]), root / "again.err")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (root / "again.err").read_text()
    startup_seconds = max(startup_seconds, time.perf_counter() - started)
    # Kills fall within the start-up and the next few steps of each child, so that the run advances a step or
    # two per kill and the kills spread over the whole run.
    window_seconds = startup_seconds + 3 * (duration - startup_seconds) / STEPS
    window_events = int(startup_events + 3 * (total_events - startup_events) / STEPS)

    out = root / "killed"
    landed = 0
    while landed < KILLS and summary["attempts"] < MAX_ATTEMPTS:
        attempt = summary["attempts"]
        summary["attempts"] += 1
        complete = [p for p in list_checkpoints(out) if verify_checkpoint(p) is None]
        args = common + ["--output-dir", str(out)] + (["--resume", str(out)] if complete else ["--overwrite"])
        timed = attempt % 2 == 0
        done = int(complete[-1].name.split("-")[1].split(".")[0]) if complete else 0
        k = rng.randint(1, window_events)
        counter = [0]

        def child(timed=timed, k=k, counter=counter, args=args):
            if not timed:
                _kill_at_event(k, counter)
            main(args)

        log = root / f"attempt-{attempt}.err"
        pid = _fork(child, log)
        if timed:
            time.sleep(rng.uniform(0.0, window_seconds))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        text = log.read_text(errors="replace")
        if not killed and os.waitstatus_to_exitcode(status) != 0:
            summary["errors"].append(f"attempt {attempt}: exit {os.waitstatus_to_exitcode(status)}: {text[-500:]}")
        if killed:
            landed += 1
            summary["timed_kills" if timed else "event_kills"] += 1
            # A half-written step-N.tmp-PID left behind: this kill fell inside a checkpoint save.
            checkpoints = out / "checkpoints"
            summary["kills_mid_save"] += checkpoints.is_dir() and any(
                p.name.endswith(f".tmp-{pid}") for p in checkpoints.iterdir())
        else:
            summary["finished_early"] += 1
        summary["trace"].append((attempt, done, "timed" if timed else f"event {k}", "resumed from" in text,
                                 killed))
        if complete and "resumed from" in text:
            summary["resumes"] += 1
            # The checkpoint the child chose is the newest complete one the supervisor saw.
            if f"resumed from {complete[-1]}" in " ".join(text.split()):
                summary["resumed_newest_complete"] += 1
            else:
                summary["errors"].append(f"attempt {attempt}: resumed from something else than {complete[-1]}: {text[-300:]}")
        summary["skipped_warnings"] += "skipped incomplete checkpoint" in text
        # A complete checkpoint, once there, never disappears (rotation keeps the last good one).
        if complete and not [p for p in list_checkpoints(out) if verify_checkpoint(p, full=False) is None]:
            summary["complete_checkpoint_lost"] += 1

    # The last child runs to the end.
    args = common + ["--output-dir", str(out)] + (["--resume", str(out)] if list_checkpoints(out) else ["--overwrite"])
    pid = _fork(lambda: main(args), root / "final.err")
    _, status = os.waitpid(pid, 0)
    summary["final_exit"] = os.waitstatus_to_exitcode(status)
    summary["final_err"] = (root / "final.err").read_text(errors="replace")[-500:]

    from safetensors.torch import load_file

    want = load_file(reference / "final" / "model.safetensors")
    got = load_file(out / "final" / "model.safetensors")
    summary["same_keys"] = sorted(want) == sorted(got)
    summary["identical_parameters"] = summary["same_keys"] and all(torch.equal(want[k], got[k]) for k in want)

    def losses(path):
        records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if "loss" in r]

    summary["identical_metrics"] = losses(out) == losses(reference)
    summary["leftovers"] = sorted(p.name for folder in (out, out / "checkpoints") for p in folder.iterdir()
                                  if ".tmp-" in p.name or ".old-" in p.name)
    summary["kept"] = sorted(p.name for p in list_checkpoints(out))
    summary["total_events"] = total_events
    summary["windows"] = [round(window_seconds, 3), window_events, round(startup_seconds, 3), startup_events]
    summary["reference_seconds"] = round(duration, 2)
    Path(spec["summary"]).write_text(json.dumps(summary, indent=2))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the supervisor forks its children")
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_student(tiny_models, tmp_path):
    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    spec = {"root": str(tmp_path), "teacher": str(teacher), "student": str(student), "seed": 1234,
            "summary": str(tmp_path / "summary.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "MINILLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "1000", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    code = f"from test_faults_checkpoint import _supervise; _supervise({str(tmp_path / 'spec.json')!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    print("kill test:", json.dumps(summary))
    assert summary["errors"] == []
    assert summary["timed_kills"] + summary["event_kills"] == KILLS, summary
    assert summary["event_kills"] >= KILLS // 2 - 1
    assert summary["resumes"] >= KILLS // 4 and summary["resumed_newest_complete"] == summary["resumes"]
    assert summary["complete_checkpoint_lost"] == 0
    assert summary["kills_mid_save"] >= 2, summary          # some kills left a half-written save behind
    assert summary["final_exit"] == 0, summary["final_err"]
    assert summary["identical_parameters"], summary
    assert summary["identical_metrics"], summary
    assert summary["leftovers"] == [] and len(summary["kept"]) <= 2


# --- damaged checkpoints, rotation, a full disk ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A finished 3-step run with a checkpoint every step (keep 3): step-000001 .. step-000003."""
    import pytest as _pytest

    root = tmp_path_factory.mktemp("faults")
    output = root / "run"
    with _pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILLM_HOME", str(root / "home"))
        code, _, err = _distill(None, tiny_models, output, "train.steps=3", "checkpoint.keep=3")
    assert code == 0, err
    return output


def _distill(capsys, tiny_models, output, *extra, resume=None):
    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    args = ["distill", "--teacher", teacher, "--student", student, "--objective", "kd", "--no-progress",
            "--output-dir", output, *TINY, *extra]
    if resume:
        args += ["--resume", resume]
    if capsys is None:
        from minillm_cli.cli import main

        try:
            main([str(a) for a in args])
            return 0, "", ""
        except SystemExit as exc:
            return exc.code, "", ""
    return run_cli(capsys, *args)


def _copy(trained, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def test_every_checkpoint_has_a_manifest_that_verifies(trained):
    from minillm_cli.training.checkpoint import MANIFEST, list_checkpoints, verify_checkpoint

    found = list_checkpoints(trained)
    assert [p.name for p in found] == ["step-000001", "step-000002", "step-000003"]
    for path in found:
        assert verify_checkpoint(path) is None
        manifest = json.loads((path / MANIFEST).read_text())["files"]
        on_disk = sorted(p.name for p in path.iterdir() if p.name != MANIFEST)
        assert sorted(manifest) == on_disk
        assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in manifest.values())


@pytest.mark.parametrize("damage", ["no-manifest", "flipped-byte", "truncated", "missing-file"])
def test_resume_skips_a_damaged_newest_checkpoint_with_one_warning(trained, tmp_path, capsys, tiny_models, monkeypatch, damage):
    from minillm_cli.training.checkpoint import MANIFEST

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    output = _copy(trained, tmp_path)
    newest = output / "checkpoints" / "step-000003"
    weights = newest / "student.safetensors"
    if damage == "no-manifest":
        (newest / MANIFEST).unlink()
    elif damage == "flipped-byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (newest / "optimizer.pt").unlink()
    code, _, err = _distill(capsys, tiny_models, output, "train.steps=4", resume=output)
    assert code == 0, err
    text = " ".join(err.split())
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step-000003" in warnings[0] and "resuming from step-000002" in text
    assert "resumed from" in text and "at step 2" in text
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]   # step 3 was logged again, once


def test_resume_from_a_named_damaged_checkpoint_fails_in_one_line(trained, tmp_path, capsys, tiny_models):
    output = _copy(trained, tmp_path)
    (output / "checkpoints" / "step-000002" / "manifest.json").unlink()
    code, _, err = _distill(capsys, tiny_models, output, resume=output / "checkpoints" / "step-000002")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "incomplete or damaged" in lines[0]


def test_no_complete_checkpoint_at_all_fails_in_one_line(trained, tmp_path, capsys, tiny_models):
    output = _copy(trained, tmp_path)
    for path in (output / "checkpoints").iterdir():
        (path / "manifest.json").unlink()
    code, _, err = _distill(capsys, tiny_models, output, resume=output)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no complete checkpoint" in lines[0] and "--overwrite" in lines[0]


def test_a_killed_save_leaves_nothing_resume_would_pick(trained, tmp_path):
    """A ``step-N.tmp-PID`` directory (a save killed before its rename) is never listed; ``step-N.old-PID`` (killed
    between the two renames of an overwrite) is used when ``step-N`` is gone, and kept by the stale-file sweep."""
    import shutil

    from minillm_cli.atomic import remove_stale_siblings
    from minillm_cli.training.checkpoint import find_resume_checkpoint, list_checkpoints

    output = _copy(trained, tmp_path)
    root = output / "checkpoints"
    shutil.copytree(root / "step-000003", root / "step-000004.tmp-999999")
    assert find_resume_checkpoint("auto", output).name == "step-000003"
    os.replace(root / "step-000003", root / "step-000003.old-999998")
    assert find_resume_checkpoint("auto", output).name == "step-000003.old-999998"
    removed = remove_stale_siblings(root)
    assert [p.name for p in removed] == ["step-000004.tmp-999999"]
    assert [p.name for p in list_checkpoints(output)][-1] == "step-000003.old-999998"


def test_rotation_never_deletes_the_only_complete_checkpoint(trained, tmp_path, capsys, tiny_models, monkeypatch):
    """Newer checkpoints that are damaged do not count toward keep: the last good one survives every rotation.
    (Counting every directory, as before manifests, kept step-000003 and deleted the only good one.)"""
    from minillm_cli.training.checkpoint import _rotate, list_checkpoints, verify_checkpoint

    output = _copy(trained, tmp_path)
    root = output / "checkpoints"
    for name in ("step-000002", "step-000003"):
        (root / name / "manifest.json").unlink()               # only step-000001 is complete now
    _rotate(output, keep=1, newest=root / "step-000001")      # as after saving step 1 again
    names = [p.name for p in list_checkpoints(output)]
    assert "step-000001" in names and verify_checkpoint(root / "step-000001") is None

    # And through a run: resume from step 1 (the newest complete) with keep=1; at every save the checkpoint
    # just written is kept, and the damaged ones are swept out once a newer complete one exists.
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    code, _, err = _distill(capsys, tiny_models, output, "train.steps=3", "checkpoint.keep=1", resume=output)
    assert code == 0, err
    assert [p.name for p in list_checkpoints(output)] == ["step-000003"]
    assert verify_checkpoint(root / "step-000003") is None


@pytest.mark.parametrize("where", ["torch.save", "safetensors", "manifest"])
def test_full_disk_fails_the_save_clearly_and_keeps_the_previous_checkpoint(trained, tmp_path, capsys, tiny_models, monkeypatch, where):
    import safetensors.torch
    import torch

    from minillm_cli.training import checkpoint
    from minillm_cli.training.checkpoint import list_checkpoints, verify_checkpoint

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    output = _copy(trained, tmp_path)
    before = {p.name: (p / "manifest.json").read_text() for p in list_checkpoints(output)}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = {"torch.save": (torch, "save"), "safetensors": (safetensors.torch, "save_model"),
              "manifest": (checkpoint, "write_manifest")}[where]
    monkeypatch.setattr(*target, no_space)
    code, _, err = _distill(capsys, tiny_models, output, "train.steps=4", resume=output)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0]
    line = lines[0]
    assert "cannot save checkpoint step-000004" in line and "no space left on device" in line
    assert "step-000003 is intact" in line and "--resume" in line
    after = list_checkpoints(output)
    assert {p.name: (p / "manifest.json").read_text() for p in after} == before      # untouched
    assert all(verify_checkpoint(p) is None for p in after)
    assert not [p for p in (output / "checkpoints").iterdir() if ".tmp-" in p.name]   # the half-save is gone


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_atomic_directory_flushes_before_the_rename(tmp_path, monkeypatch):
    """Every file is fsync'ed before the rename makes it visible (a power cut cannot expose empty files)."""
    from minillm_cli import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("rename", str(source)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic.atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"x" * 10)
        (tmp / "b.bin").write_bytes(b"y" * 10)
    rename = next(i for i, (kind, _) in enumerate(events) if kind == "rename")
    assert sorted(Path(p).name for kind, p in events[:rename] if kind == "fsync" and p.endswith(".bin")) == ["a.bin", "b.bin"]
    assert events[-1] == ("fsync", str(tmp_path))             # and the rename itself is made durable
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin", "b.bin"]
