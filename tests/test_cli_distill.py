"""``minillm distill`` through the real entry point, on tiny random-init models (a few seconds per run).

Every builtin objective runs end to end (config → vocabulary check → data → engine → export), and the command's
failure modes exit with status 2 and one line on stderr.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
import torch

from minillm_cli.training.engine import Engine
from minillm_cli.pytest_plugin import TINY_DISTILL
from minillm_cli.config.recipes import load_config
from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

# Settings that make one run take a second or two on a CPU (the pytest plugin's, shared with plugin authors).
TINY = list(TINY_DISTILL)

# objective -> (extra overrides, {loss term: weight in the total loss}); the weights are the objectives' defaults.
OBJECTIVES = {
    "sft": ([], {"ce": 1.0}),
    "kd": ([], {"ce": 0.5, "fkl": 0.5}),
    "rkl": ([], {"rkl": 1.0}),
    "gkd": (["objective.lmbda=1"], {"jsd": 1.0}),          # every batch is sampled from the student
    "distillm": ([], {"srkl": 1.0}),
    "tvd": ([], {"tvd": 1.0}),
    "seqkd": ([], {"ce": 1.0}),                            # SFT on the teacher's (cached) responses
}
USES_TEACHER = {"kd", "rkl", "gkd", "distillm", "tvd"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """MINILLM_HOME for this module: the 2-layer student is cut from the teacher once."""
    path = tmp_path_factory.mktemp("minillm-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILLM_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def teacher(tiny_models):
    return tiny_models("llama", layers=4)


run = run_cli


def distill(capsys, teacher, output, *args):
    """``minillm distill`` on tiny models; kd unless the test names an objective or a recipe (without either, the
    command runs the embedded default job, tested on its own below)."""
    named = {"--objective", "-o", "--recipe", "-r"} & {str(a) for a in args}
    default = [] if named else ["--objective", "kd"]
    return run(capsys, "distill", "--teacher", teacher, "--output-dir", output, "--no-progress", *TINY, *default,
               *args)


def flat(text: str) -> str:
    """Rich wraps long lines (at spaces) to the console width: compare with whitespace collapsed."""
    return " ".join(text.split())


def error_line(err: str) -> str:
    """The one line an error printed (nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    return lines[0]


def read_metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_records(records):
    return [r for r in records if "loss" in r]


def assert_loadable(directory: Path, layers: int = 2, vocab_size: int = 384):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (directory / "config.json").is_file()
    assert list(directory.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert model.config.num_hidden_layers == layers
    assert model.get_output_embeddings().weight.shape[0] == vocab_size
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], vocab_size) and torch.isfinite(logits).all()


@pytest.fixture
def sample_spy(monkeypatch):
    """Counts the engine's student samples."""
    calls = []
    original = Engine.sample_student

    def spy(self, batch):
        calls.append(len(batch.prompts))
        return original(self, batch)

    monkeypatch.setattr(Engine, "sample_student", spy)
    return calls


# --- every objective ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_runs_and_exports(objective, teacher, home, tmp_path, capsys, sample_spy):
    extra, terms = OBJECTIVES[objective]
    output = tmp_path / "run"
    code, out, err = distill(capsys, teacher, output, "--objective", objective, *extra)
    assert code == 0, err
    assert f"minillm distill {objective}" in flat(err)
    assert "2 steps" in flat(err)

    # The student was cut from the teacher into MINILLM_HOME, not next to the teacher or in the run.
    students = list((home / "models" / "students").iterdir())
    assert students and all(s.name.startswith("tiny-llama") and "-2L-" in s.name for s in students)

    assert_loadable(output / "final")
    meta = json.loads((output / "final" / "minillm.json").read_text()) if (output / "final" / "minillm.json").is_file() else None
    if meta is not None:
        assert meta["step"] == 2 and meta["objective"] == objective

    records = read_metrics(output)
    steps = train_records(records)
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        for term in terms:
            assert term in record, f"{objective}: no '{term}' in {record}"
            assert math.isfinite(record[term]) and record[term] >= 0
        assert math.isfinite(record["loss"]) and record["tokens"] > 0
        # The logged loss is the weighted sum of the logged terms.
        total = sum(weight * record[term] for term, weight in terms.items())
        assert record["loss"] == pytest.approx(total, rel=1e-4, abs=1e-6)
    validations = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in validations] == [0, 2]           # before and after
    for record in validations:
        assert ("valid_fkl" in record) == (objective in USES_TEACHER)
        assert "valid_rougeL" in record

    if objective == "gkd":
        assert sample_spy == [2, 2]                               # lmbda=1: both steps sample the student
    elif objective == "distillm":
        assert "threshold" in steps[0] and steps[0]["threshold"] == 0   # init_threshold 0: gold responses only
        assert sample_spy == []
    else:
        assert sample_spy == []
    if objective == "seqkd":
        caches = list((home / "seqkd").glob("seqkd-*.jsonl"))
        assert caches
        cached = [json.loads(line) for line in caches[0].read_text(encoding="utf-8").split("\n") if line]
        assert len(cached) == 36 and all(isinstance(r["response"], str) for r in cached)   # 40 - 10% valid


def test_seqkd_reuses_its_cache(teacher, tmp_path, capsys, monkeypatch):
    """A second run with the same settings reads the teacher's responses from the cache, even when a response
    holds characters that str.splitlines() would split at (a random teacher's byte soup has U+0085)."""
    from minillm_cli.builtin.objectives import seqkd

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    calls = []
    original = seqkd._generate

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(seqkd, "_generate", spy)
    code, _, err = distill(capsys, teacher, tmp_path / "first", "--objective", "seqkd", "train.steps=1")
    assert code == 0, err
    assert calls == [1]
    (cache,) = (tmp_path / "home" / "seqkd").glob("seqkd-*.jsonl")
    text = cache.read_text(encoding="utf-8")
    code, _, err = distill(capsys, teacher, tmp_path / "second", "--objective", "seqkd", "train.steps=1")
    assert code == 0, err
    assert calls == [1], "the second run generated again instead of reading the cache"
    assert cache.read_text(encoding="utf-8") == text
    # A different sampling setting is a different cache.
    code, _, err = distill(capsys, teacher, tmp_path / "third", "--objective", "seqkd", "train.steps=1",
                           "generation.max_new_tokens=5")
    assert code == 0, err
    assert calls == [1, 1] and len(list((tmp_path / "home" / "seqkd").glob("seqkd-*.jsonl"))) == 2


def test_distillm_on_policy_samples_the_student(teacher, home, tmp_path, capsys, sample_spy):
    output = tmp_path / "run"
    code, _, err = distill(capsys, teacher, output, "--objective", "distillm", "objective.init_threshold=1")
    assert code == 0, err
    assert sample_spy == [2, 2]                                   # φ = 1 and an empty replay buffer: fresh samples
    steps = train_records(read_metrics(output))
    assert [r["threshold"] for r in steps] == pytest.approx([1.0, 1.0])
    assert_loadable(output / "final")


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_print_config_reads_back_equal(objective, teacher, tmp_path, capsys):
    extra, _ = OBJECTIVES[objective]
    # --steps (an option) and no train.steps override: overrides win over options.
    tiny = [o for o in TINY if not o.startswith("train.steps=")]
    args = ["--teacher", str(teacher), "--objective", objective, "--output-dir", str(tmp_path / "run"),
            "--steps", "7", "--trim-vocab", *tiny, "train.lr=1e-4", "train.betas=[0.8, 0.9]", *extra]
    code, out, err = run(capsys, "distill", *args, "--print-config")
    assert code == 0, err
    assert not (tmp_path / "run").exists()                         # printing the config runs nothing
    recipe = tmp_path / "printed.yaml"
    recipe.write_text(out)
    config, options = load_config(recipe)
    assert config.objective["name"] == objective
    assert config.teacher == str(teacher) and config.train.steps == 7 and config.trim_vocab is True
    assert config.train.lr == 1e-4 and config.train.betas == [0.8, 0.9] and config.student_layers == 2
    expected = load_config(
        None, overrides=[*tiny, "train.lr=1e-4", "train.betas=[0.8, 0.9]", *extra],
        options={"teacher": str(teacher), "objective.name": objective, "output_dir": str(tmp_path / "run"),
                 "train.steps": 7, "trim_vocab": True},
    )
    assert (config, options) == expected
    # And printing the read-back recipe gives the same text.
    code, again, err = run(capsys, "distill", "--recipe", recipe, "--print-config")
    assert code == 0, err
    assert again == out


def test_bad_override_exits_2_with_one_line(teacher, tmp_path, capsys):
    code, out, err = distill(capsys, teacher, tmp_path / "run", "train.lr=fast")
    assert code == 2
    line = error_line(err)
    assert "train.lr" in line and "fast" in line
    assert not (tmp_path / "run").exists()


def test_unknown_objective_exits_2_with_one_line(teacher, tmp_path, capsys):
    code, out, err = distill(capsys, teacher, tmp_path / "run", "--objective", "rkll")
    assert code == 2
    line = error_line(err)
    assert "rkll" in line and "objective" in line
    assert "rkl" in line.replace("rkll", "")                        # the known ones (or a suggestion) are named
    assert not (tmp_path / "run").exists()


def test_errors_through_python_m(teacher, tmp_path):
    """The real process: ``python -m minillm_cli`` exits 2 with one line for a bad override and a bad objective."""
    env = {**os.environ, "MINILLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for args, words in (
        (["train.lr=fast"], ["train.lr", "fast"]),
        (["--objective", "nope"], ["nope", "objective"]),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "minillm_cli", "distill", "--teacher", str(teacher), "--output-dir",
             str(tmp_path / "run"), *args],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        line = error_line(proc.stderr)
        assert all(word in line for word in words), line
        assert proc.stdout == ""
    assert not (tmp_path / "run").exists()


# --- resume ---------------------------------------------------------------------------------------------------------


def test_resume_continues_a_stopped_run(teacher, home, tmp_path, capsys):
    output = tmp_path / "run"
    code, _, err = distill(capsys, teacher, output, "--objective", "kd", "checkpoint.every=1")
    assert code == 0, err
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["step-000001", "step-000002"]            # every step, and the end of the run

    # Continue with the run's own config (from its checkpoint) and more steps.
    code, _, err = run(capsys, "distill", "--resume", output, "train.steps=4", "--no-progress")
    assert code == 0, err
    assert "resumed from" in flat(err) and "at step 2" in flat(err)
    records = read_metrics(output)
    assert [r["step"] for r in train_records(records)] == [1, 2, 3, 4]
    assert all("fkl" in r and "ce" in r for r in train_records(records))
    # No second "before" evaluation; a final one at step 4.
    assert [r["step"] for r in records if "valid_loss" in r] == [0, 2, 4]
    assert_loadable(output / "final")
    meta = output / "final" / "minillm.json"
    if meta.is_file():
        assert json.loads(meta.read_text())["step"] == 4


def test_time_budget_stops_early_exports_final_and_carries_over_resume(teacher, home, tmp_path, capsys):
    """train.max_minutes stops at the first step past the budget (here: the first step), validates and exports
    final like the last step; the time used is in the checkpoint, so a resume with the same budget stops at once
    and one with a larger budget goes on."""
    output = tmp_path / "run"
    code, out, err = distill(capsys, teacher, output, "--objective", "kd", "train.steps=50", "train.max_minutes=1e-6")
    assert code == 0, err
    assert "time budget of 1e-06 min (train.max_minutes) reached after step 1 of 50" in flat(out + err)
    records = read_metrics(output)
    assert [r["step"] for r in train_records(records)] == [1]
    assert [r["step"] for r in records if "valid_loss" in r] == [0, 1]      # before, and final at the stop
    assert_loadable(output / "final")
    state = json.loads((output / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert state["seconds_used"] > 0

    code, _, err = run(capsys, "distill", "--resume", output, "train.max_minutes=1e-6", "--no-progress")
    assert code == 0, err
    assert [r["step"] for r in train_records(read_metrics(output))] == [1, 2]   # one step: the check follows a step
    code, _, err = run(capsys, "distill", "--resume", output, "train.max_minutes=60", "train.steps=4", "--no-progress")
    assert code == 0, err
    assert [r["step"] for r in train_records(read_metrics(output))] == [1, 2, 3, 4]


def test_time_budget_must_be_positive(teacher, tmp_path, capsys):
    code, _, err = distill(capsys, teacher, tmp_path / "run", "train.max_minutes=0")
    assert code == 2
    assert "train.max_minutes" in error_line(err)


@pytest.mark.parametrize("objective", ["gkd", "distillm"])
def test_interrupted_run_resumes_exactly(objective, teacher, home, tmp_path, capsys, monkeypatch):
    """Ctrl-C after step 1 exits 130 with a checkpoint; --resume then gives the uninterrupted run's losses
    (on-policy sampling included: the RNG states and the objective's state are in the checkpoint)."""
    from minillm_cli.training import streams

    extra = ["objective.lmbda=1"] if objective == "gkd" else ["objective.init_threshold=1", "objective.replay_capacity=2"]
    args = ["--objective", objective, "train.steps=4", "checkpoint.every=0", *extra]
    straight = tmp_path / "straight"
    code, _, err = distill(capsys, teacher, straight, *args)
    assert code == 0, err

    original = streams.StopFlag.__enter__

    def ctrl_c_at_once(self):
        original(self)
        self.requested = True                                       # as if Ctrl-C came during step 1
        return self

    monkeypatch.setattr(streams.StopFlag, "__enter__", ctrl_c_at_once)
    stopped = tmp_path / "stopped"
    code, _, err = distill(capsys, teacher, stopped, *args)
    assert code == 130
    assert "interrupted at step 1" in flat(err) and "--resume" in err
    assert not (stopped / "final").exists()
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["step-000001"]

    monkeypatch.setattr(streams.StopFlag, "__enter__", original)
    code, _, err = run(capsys, "distill", "--resume", stopped, "--no-progress")
    assert code == 0, err
    assert "at step 1" in flat(err)
    resumed, expected = train_records(read_metrics(stopped)), train_records(read_metrics(straight))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed, expected):
        for key in ("loss", "tokens", "lr", *OBJECTIVES[objective][1]):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (got["step"], key)
    assert_loadable(stopped / "final")


def test_output_dir_of_an_earlier_run_needs_resume_or_overwrite(teacher, home, tmp_path, capsys):
    output = tmp_path / "run"
    code, _, err = distill(capsys, teacher, output, "--objective", "sft", "train.steps=1")
    assert code == 0, err
    first = read_metrics(output)
    code, _, err = distill(capsys, teacher, output, "--objective", "sft", "train.steps=1")
    assert code == 2
    line = error_line(err)
    assert "--resume" in line and "--overwrite" in line
    assert read_metrics(output) == first                           # the earlier run is untouched
    code, _, err = distill(capsys, teacher, output, "--objective", "sft", "train.steps=1", "--overwrite")
    assert code == 0, err
    assert [r["step"] for r in train_records(read_metrics(output))] == [1]   # not appended to the old metrics
    assert_loadable(output / "final")


def test_resume_without_checkpoint_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, "distill", "--resume", tmp_path / "nothing-here", "--no-progress")
    assert code == 2
    assert "no checkpoint to resume" in error_line(err)


# --- vocabularies ------------------------------------------------------------------------------------------------


def test_different_tokenizers_fail_before_training(teacher, home, tmp_path, capsys):
    other = make_tiny_tokenizer(
        384,
        corpus=[
            "Zebras quickly jumped over lazy wolves near the frozen lake at midnight.",
            "Quantum chromodynamics describes quarks, gluons and their colour charge.",
            "Jellyfish drift with ocean currents; some glow in the dark water.",
        ],
    )
    student = make_tiny_model(tmp_path / "student-other-tokenizer", "llama", tokenizer=other)
    output = tmp_path / "run"
    code, _, err = distill(capsys, teacher, output, "--student", student, "--objective", "kd")
    assert code == 2
    assert "tokenizers differ" in err.splitlines()[-1]
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1
    assert not output.exists()                                      # nothing trained, nothing written


def test_padded_vocab_needs_trim_vocab(teacher, tiny_models, home, tmp_path, capsys):
    student = tiny_models("llama", vocab_size=400)                  # same tokenizer, 400 logit rows (teacher: 384)
    output = tmp_path / "run"
    code, _, err = distill(capsys, teacher, output, "--student", student, "--objective", "kd")
    assert code == 2
    line = err.splitlines()[-1]
    assert line.startswith("error: ") and "--trim-vocab" in line and "400" in line and "384" in line
    assert not output.exists()

    code, _, err = distill(capsys, teacher, output, "--student", student, "--objective", "kd", "--trim-vocab")
    assert code == 0, err
    assert "384 shared vocabulary entries" in flat(err)
    assert [r["step"] for r in train_records(read_metrics(output))] == [1, 2]
    assert_loadable(output / "final", layers=2, vocab_size=400)   # the student keeps its own rows


def test_default_job_warm_starts_by_sft_then_runs_minillm(teacher, home, tmp_path, capsys):
    """Without a recipe or an objective, ``minillm distill`` runs the embedded default job: a warm start by SFT in
    OUTPUT/warm_start, then MiniLLM from its best export; the summary shows the three stages side by side, with
    the reverse KL on the student's own samples; a resume continues the MiniLLM run without a second warm start."""
    output = tmp_path / "run"
    code, _, err = run(capsys, "distill", "--teacher", teacher, "--output-dir", output, "--no-progress", *TINY,
                       "warm_start.steps=2", "data.lm_chunk_tokens=32", "checkpoint.every=1")
    assert code == 0, err
    flat = " ".join(err.split())
    assert "warm start sft:" in flat and "minillm distill minillm:" in flat
    assert "after sft" in flat and "after minillm" in flat and "own samples" in flat
    assert (output / "warm_start" / "final" / "config.json").is_file() and (output / "final" / "config.json").is_file()
    info = json.loads((output / "run_info.json").read_text())
    assert info["config"]["objective"]["name"] == "minillm" and info["config"]["warm_start"]["steps"] == 0
    assert info["config"]["student"] in (str(output / "warm_start" / "best"), str(output / "warm_start" / "final"))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_rkl_own_samples" in r for r in records)
    warm_final = (output / "warm_start" / "final").stat().st_mtime_ns

    code, _, err = run(capsys, "distill", "--resume", output, "train.steps=3", "--no-progress")
    assert code == 0, err
    assert "warm start" not in err and (output / "warm_start" / "final").stat().st_mtime_ns == warm_final


def test_patience_stops_when_validation_stops_improving(teacher, home, tmp_path, capsys):
    """eval.patience N: the run ends after N validations in a row without a better select_by metric, exports final
    as at the last step without validating that step twice, and logs the teacher's token count of every step."""
    output = tmp_path / "run"
    code, out, err = distill(capsys, teacher, output, "--objective", "kd", "train.steps=40", "eval.every=1",
                             "eval.patience=2", "eval.select_by=rougeL", "checkpoint.every=0")
    assert code == 0, err
    records = read_metrics(output)
    validations = [r for r in records if "valid_loss" in r and r["step"] > 0]
    best, best_step, stop = None, None, None
    for v in validations:   # the rule, replayed from the log
        if best is None or v["valid_rougeL"] > best:
            best, best_step = v["valid_rougeL"], v["step"]
        if sum(1 for w in validations if best_step < w["step"] <= v["step"]) >= 2:
            stop = v["step"]
            break
    steps = [r["step"] for r in train_records(records)]
    assert stop is not None and steps[-1] == stop < 40
    assert "(eval.patience)" in flat(out + err)
    assert [v["step"] for v in validations].count(stop) == 1      # the final validation is the patience one
    assert_loadable(output / "final")
    tokens = [r["teacher_tokens"] for r in train_records(records)]
    assert tokens[0] > 0 and all(b > a for a, b in zip(tokens, tokens[1:]))   # kd runs the teacher every step
