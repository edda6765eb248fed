"""Edge cases of every command: damaged inputs, impossible outputs and settings give one `error:` line, exit 2 and
nothing written; hints name options that exist; the design card's commands work as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_cli

FAST_GENERATE = ("--limit", "1", "--max-new-tokens", "2", "--seeds", "1", "--batch-size", "1")
FAST_DISTILL = ("--no-progress", "train.steps=1", "train.batch_size=2", "eval.before_after=false",
                "eval.rouge_examples=0", "data.limit=8", "data.max_prompt_tokens=512")


def one_error(result, *words) -> str:
    """The single `error:` line of a failed command (exit 2, no traceback), holding every word given."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len([line for line in lines if line.startswith("error: ")]) == 1 and lines[-1].startswith("error: "), err
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models("gpt2")


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models("llama", seed=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- damaged or incomplete model folders -------------------------------------------------------------------------


def damage(model: Path, tmp_path: Path, how: str) -> Path:
    broken = tmp_path / f"broken-{how}"
    shutil.copytree(model, broken)
    if how == "truncated weights":
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    elif how == "no tokenizer":
        for path in broken.glob("tokenizer*"):
            path.unlink()
    elif how == "invalid config":
        (broken / "config.json").write_text('{"model_type": "gpt2",\n')
    return broken


DAMAGE = {"truncated weights": ["model.safetensors", "truncated", "again"],
          "no tokenizer": ["no tokenizer files", "copy them"],
          "invalid config": ["config.json", "not valid JSON", "line 2"]}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_model_folders_are_one_line_in_every_command(how, gpt2, home, tmp_path, capsys):
    broken = damage(gpt2, tmp_path, how)
    words = DAMAGE[how]
    one_error(run_cli(capsys, "generate", "--model", broken, *FAST_GENERATE, "--out", tmp_path / "g.jsonl"), *words)
    one_error(run_cli(capsys, "eval", "--model", broken, "--seeds", "1", "--limit", "1", "--max-new-tokens", "2",
                      "--no-plots", "--out", tmp_path / "eval"), *words)
    one_error(run_cli(capsys, "distill", "--teacher", gpt2, "--student", broken, "--objective", "sft",
                      "--output-dir", tmp_path / "run", *FAST_DISTILL), *words)
    if how != "no tokenizer":   # converting weights needs no tokenizer
        one_error(run_cli(capsys, "convert", "dtype", broken, tmp_path / "converted", "--dtype", "bf16"), *words)
    assert not any((tmp_path / name).exists() for name in ("g.jsonl", "eval", "run", "converted"))


# --- past the model's context --------------------------------------------------------------------------------------


def test_generating_past_learned_positions_is_one_line(gpt2, tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    line = one_error(run_cli(capsys, "generate", "--model", gpt2, "--limit", "1", "--max-new-tokens", "600",
                             "--seeds", "1", "--out", out), "600 new tokens", "512", "--max-new-tokens")
    assert "positions" in line and not out.exists()


def test_rope_models_warn_past_their_context(llama, tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "--model", llama, "--limit", "1", "--max-new-tokens", "600",
                           "--temperature", "0", "--seeds", "1", "--out", tmp_path / "g.jsonl")
    assert code == 0 and "warning:" in err and "512" in err, err


def test_on_policy_distill_past_the_context_fails_before_training(gpt2, home, tmp_path, capsys):
    output = tmp_path / "run"
    one_error(run_cli(capsys, "distill", "--teacher", gpt2, "--student", gpt2, "--objective", "gkd",
                      "--output-dir", output, *FAST_DISTILL, "generation.max_new_tokens=600"),
              "sampled sequences", "generation.max_new_tokens")
    assert not output.exists()
