"""Nothing lost at the edges: resume writes where it is pointed, no non-finite exports, every full disk gives the one
line, folders of crashed runs are reusable, exports follow the umask, the fused skew KLs stay finite, and a
multi-process run reports a user error once."""

from __future__ import annotations

import pytest
import torch


# --- the fused skew KLs at extreme log-ratios -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["skl", "srkl"])
@pytest.mark.parametrize("alpha", [0.0, 1e-30, 0.1])
def test_fused_skew_kl_gradients_stay_finite_past_log_ratio_88(name, alpha):
    """At α = 0 the closed form's p/m (skl) or α·exp(log q − log m) (srkl) overflowed float32 once a log-ratio
    passed 88 while the row's value stayed finite, so the fallback never ran: NaN gradients."""
    from minillm_cli.losses import divergences as D
    from minillm_cli.losses.fused import value_and_grad

    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.zeros(3, 8), torch.zeros(3, 8)
    student[0, 0], teacher[0, 1] = 100.0, 100.0          # log q − log p ≈ ±100 on two entries
    student[1, 2], teacher[1, 2] = -95.0, 20.0
    student[2], teacher[2] = torch.randn(8, generator=generator), 3 * torch.randn(8, generator=generator)
    value, _, grad = value_and_grad(name, student.clone().requires_grad_(), teacher, alpha=alpha)
    exact_input = student.double().requires_grad_()
    exact = D.rows_divergence(name, exact_input, teacher.double(), alpha=alpha).sum()
    (exact_grad,) = torch.autograd.grad(exact, exact_input)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(float(value.detach()), float(exact.detach()), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=1e-6)


# --- no non-finite exports --------------------------------------------------------------------------------------

TINY = ["train.steps=3", "train.batch_size=2", "train.schedule=constant", "train.warmup_steps=0", "eval.every=0",
        "eval.before_after=false", "eval.rouge_examples=0", "eval.max_examples=4", "data.limit=20",
        "data.max_response_tokens=16"]


def distill(capsys, tiny_models, output, *extra, objective="kd"):
    from conftest import run_cli

    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    return run_cli(capsys, "distill", "--teacher", teacher, "--student", student, "--objective", objective,
                   "--no-progress", "--output-dir", output, *TINY, *extra)


def error_lines(err: str) -> list:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_in_the_config(capsys, value):
    from conftest import run_cli

    code, _, err = run_cli(capsys, "distill", "--print-config", f"train.lr={value}")
    assert code == 2 and "train.lr" in err and "expected a finite number" in err


def test_weights_gone_non_finite_are_never_exported(capsys, tiny_models, tmp_path, monkeypatch):
    """A learning rate so large that the first update overflows: the later steps are skipped, and final/ and best/
    must not receive NaN weights (they did, with exit 0)."""
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    code, _, err = distill(capsys, tiny_models, tmp_path / "run", "train.lr=1e38", "eval.before_after=true")
    assert code == 2, err
    (line,) = error_lines(err)
    assert "not finite" in line and "nothing was exported" in line and "train.lr" in line
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "best").exists()


def test_a_run_whose_every_step_was_skipped_fails(tmp_path, tiny_models):
    from test_faults_numerics import _engine, faulty
    from minillm_cli.models.load import load_tokenizer, resolve_model
    from minillm_cli.training.numerics import NonFiniteStepsError

    ref = resolve_model(str(tiny_models("llama", seed=1)))
    engine = _engine((ref, load_tokenizer(ref)), tmp_path, faulty(nan=(0, 1)), steps=2, max_bad_steps=0)
    with pytest.raises(NonFiniteStepsError, match="all 2 step"):
        engine.run()
    assert not (tmp_path / "final").exists()


# --- exports follow the umask -------------------------------------------------------------------------------------


def test_every_written_file_follows_the_umask(capsys, tiny_models, tmp_path, monkeypatch):
    """safetensors creates its files 0600: exported weights were unreadable to the other users of a machine."""
    import os

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        code, _, err = distill(capsys, tiny_models, tmp_path / "run", "train.steps=1")
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {p.relative_to(tmp_path / "run").as_posix(): p.stat().st_mode & 0o777
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "final/model.safetensors" in modes and "checkpoints/step-000001/student.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


# --- a user error in several processes ----------------------------------------------------------------------------


def test_a_user_error_in_launched_processes_is_printed_once(tiny_models, tmp_path):
    """Each process printed the line, then torch elastic added its ChildFailedError traceback (exit 1)."""
    import os
    import subprocess
    import sys

    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    env = {**os.environ, "MINILLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "minillm_cli", "distill", "--num-processes", "2", "--teacher", str(teacher),
         "--student", str(student), "--no-progress", "--output-dir", str(tmp_path / "run"), "train.lr=fast"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == ["error: 1 problem in the command line: override 'train.lr=fast': expected a number, got 'fast'"], lines


def test_the_launcher_reports_each_distinct_line_in_rank_order(tmp_path, monkeypatch):
    from minillm_cli.runs.launch import ERRORS_VARIABLE, report_to_launcher, reported_errors

    assert not report_to_launcher("alone")                      # not launched: the caller prints it
    monkeypatch.setenv(ERRORS_VARIABLE, str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank, message in ((2, "disk full"), (0, "bad lr"), (1, "bad lr")):
        monkeypatch.setenv("RANK", str(rank))
        assert report_to_launcher(message)
    assert reported_errors(tmp_path) == ["bad lr", "disk full"]


# --- resume writes where it is pointed -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    """A finished one-step kd run started in its own working directory with the relative --output-dir runs/default."""
    import os

    from minillm_cli.cli import main

    root = tmp_path_factory.mktemp("edges-run")
    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    previous, home = os.getcwd(), os.environ.get("MINILLM_HOME")
    os.chdir(root)
    os.environ["MINILLM_HOME"] = str(root / "home")
    try:
        main(["distill", "--teacher", str(teacher), "--student", str(student), "--objective", "kd", "--no-progress",
              "--output-dir", "runs/default", *TINY, "train.steps=1"])
    except SystemExit as exc:
        assert not exc.code, exc
    finally:
        os.chdir(previous)
        os.environ.pop("MINILLM_HOME") if home is None else os.environ.__setitem__("MINILLM_HOME", home)
    return root / "runs" / "default"


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(finished_run, target):
    import shutil

    shutil.copytree(finished_run, target)
    return target


def test_resuming_a_copied_run_from_elsewhere_writes_only_into_the_copy(finished_run, tmp_path, capsys, monkeypatch):
    """The checkpoint's config says output_dir: runs/default (relative to where the run started): resuming the copy
    from another working directory wrote into ./runs/default there, or into the original run."""
    import json

    from conftest import run_cli

    original = snapshot(finished_run)
    copy = copy_run(finished_run, tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capsys, "distill", "--resume", str(copy), "train.steps=2", "--no-progress")
    assert code == 0, err
    assert snapshot(finished_run) == original                          # the original run is untouched
    assert list(elsewhere.iterdir()) == []                             # nothing in the working directory
    assert (copy / "checkpoints" / "step-000002").is_dir()
    assert json.loads((copy / "final" / "minillm.json").read_text())["step"] == 2
    # Pointed at one checkpoint, the run is the one holding it.
    code, _, err = run_cli(capsys, "distill", "--resume", str(copy / "checkpoints" / "step-000002"),
                           "--output-dir", str(tmp_path / "another"), "--no-progress")
    assert code == 2 and "drop --output-dir" in error_lines(err)[0]


def test_a_changed_config_on_resume_is_refused_naming_each_key(finished_run, tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    copy = copy_run(finished_run, tmp_path / "copy")
    before = snapshot(copy)
    code, _, err = run_cli(capsys, "distill", "--resume", str(copy), "objective.name=rkl", "train.lr=1e-3",
                           "train.steps=2", "--no-progress")
    assert code == 2, err
    (line,) = error_lines(err)
    assert "objective.name: 'kd' → 'rkl'" in line and "train.lr: 0.0005 → 0.001" in line
    assert "train.steps" not in line and "--allow-changes" in line
    assert snapshot(copy) == before
    code, _, err = run_cli(capsys, "distill", "--resume", str(copy), "train.lr=1e-3", "train.steps=2",
                           "--allow-changes", "--no-progress")
    assert code == 0, err
    assert "train.lr: 0.0005 → 0.001" in " ".join(err.split()) and (copy / "checkpoints" / "step-000002").is_dir()


# --- folders of runs that never reached a checkpoint ----------------------------------------------------------------


def test_a_folder_left_before_the_first_checkpoint_is_reused_with_a_warning(capsys, tiny_models, tmp_path, monkeypatch):
    """A run that crashed before its first checkpoint left run_info.json, metrics and a half-written save: the folder
    'already held a run', and --resume then found nothing."""
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000001").mkdir(parents=True)          # no manifest: the save never finished
    (run / "run_info.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    code, _, err = distill(capsys, tiny_models, run, "train.steps=1")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "before its first checkpoint" in " ".join(err.split())
    assert (run / "final" / "minillm.json").is_file() and (run / "checkpoints" / "step-000001" / "manifest.json").is_file()


def test_a_users_own_final_folder_is_never_called_a_run(capsys, tiny_models, tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"mine")
    code, _, err = distill(capsys, tiny_models, run)
    assert code == 2
    (line,) = error_lines(err)
    assert "not a model minillm exported" in line and "--resume" not in line
    assert (run / "final" / "model.safetensors").read_bytes() == b"mine"


# --- a full disk at any moment of a save ---------------------------------------------------------------------------


def _torch_writer_full(*args, **kwargs):
    # What torch.save raises when the disk fills during its zip writer's output (measured on a full tmpfs).
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5184 vs 5076")


def _safetensors_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _metrics_full(self, record):
    import errno
    import os

    if record.get("step") == 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("message", [
    "[enforce fail at inline_container.cc:672] . unexpected pos 5184 vs 5076",     # measured on a full tmpfs
    "basic_ios::clear: iostream error",                                            # the same, at another fill level
])
def test_torch_writer_failures_are_write_failures(message, tmp_path):
    from minillm_cli.training.checkpoint import is_write_failure, write_failure_error

    error = write_failure_error(RuntimeError(message), "checkpoint step-000002", tmp_path)
    assert is_write_failure(RuntimeError(message)) and "disk is full" in str(error)
    assert not is_write_failure(RuntimeError("CUDA error: device-side assert triggered"))   # a bug keeps its traceback


def test_the_tokenizers_writer_failure_is_a_write_failure(tmp_path):
    """tokenizers (Rust) raises a bare Exception on a full disk while an export saves tokenizer.json."""
    from minillm_cli.training.checkpoint import write_failure_error

    error = write_failure_error(Exception("No space left on device (os error 28)"), "final/ in run", tmp_path)
    assert error is not None and "no space left on device" in str(error)


@pytest.mark.parametrize("where", ["torch-writer", "export", "metrics"])
def test_a_full_disk_gives_the_one_line_wherever_it_strikes(finished_run, tmp_path, capsys, monkeypatch, where):
    """torch's writer reports a full disk as RuntimeError 'unexpected pos' (a traceback at some fill levels), an export
    or a metrics line could fail on it too: each gives the one line, and the last complete checkpoint stays."""
    import torch

    from conftest import run_cli
    from minillm_cli.training import engine, run_log
    from minillm_cli.training.checkpoint import list_checkpoints, verify_checkpoint

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    copy = copy_run(finished_run, tmp_path / "copy")
    target = {"torch-writer": (torch, "save", _torch_writer_full), "export": (engine, "export_model", _safetensors_full),
              "metrics": (run_log.RunLog, "_write", _metrics_full)}[where]
    monkeypatch.setattr(*target)
    code, _, err = run_cli(capsys, "distill", "--resume", str(copy), "train.steps=2", "--no-progress")
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot save ") and "Traceback" not in err, err
    assert "free disk space" in lines[-1] and "is intact" in lines[-1]
    if where != "metrics":
        assert "full" in lines[-1] or "no space left on device" in lines[-1]
    complete = [p.name for p in list_checkpoints(copy) if verify_checkpoint(p) is None]
    assert complete and complete[-1] in lines[-1]
    assert not [p for p in (copy / "checkpoints").iterdir() if ".tmp-" in p.name]
