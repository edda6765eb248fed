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
