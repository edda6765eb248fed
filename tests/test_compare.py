"""``minillm compare``: the shipped SmolLM2 comparison plan, reduced to tiny models and a few steps, runs end to
end (every stage, every evaluation, the table and JSON), resumes without redoing finished stages, reports a
failed stage without losing the others, and rejects bad plans with one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minillm_cli.compare.plan import PLANS_DIR, load_plan
from minillm_cli.pytest_plugin import TINY_RECORDS, write_tiny_data
from minillm_cli.config.library import list_recipes, recipe_path
from minillm_cli.config.recipes import load_config

SHIPPED = PLANS_DIR / "smollm2_dolly.yaml"

# Every stage: a few steps on tiny data; the shipped recipes' sizes (valid_size 100, max_prompts 256) shrink to fit.
TINY_SHARED = [
    "train.steps=2", "train.batch_size=2", "data.valid_size=4", "data.max_prompt_tokens=512",
    "eval.rouge_examples=2", "eval.max_examples=4", "eval.max_new_tokens=4", "generation.max_new_tokens=6",
    "checkpoint.every=1",
]


def tiny_plan(tmp_path: Path, teacher: Path, *, stage_overrides=None) -> Path:
    """The shipped plan with tiny models: same stages, recipes, dependencies and evaluation suites."""
    plan = yaml.safe_load(SHIPPED.read_text())
    plan["output_dir"] = str(tmp_path / "out")
    plan["budget_minutes"] = 5
    plan["overrides"] = plan["overrides"] + TINY_SHARED
    extra = {
        "teacher": [f"teacher={teacher}", f"student={teacher}"],
        "student_SFT": [f"teacher={teacher}", "student_layers=2"],
        **(stage_overrides or {}),
    }
    for stage in plan["stages"]:
        stage["overrides"] = list(stage.get("overrides") or []) + extra.get(stage["name"], [])
    plan["evaluate"].update(seeds=[10, 20], limit=2, max_new_tokens=4, batch_size=2,
                            exposure={"teacher": "teacher", "suite": "dolly", "limit": 2, "max_len": 4})
    path = tmp_path / "tiny_plan.yaml"
    path.write_text("# minillm compare --plan tiny_plan.yaml\n# the shipped plan on tiny models\n" + yaml.safe_dump(plan))
    return path


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    write_tiny_data(root / "dolly" / "valid.jsonl")
    write_tiny_data(root / "dolly" / "test.jsonl", TINY_RECORDS[:4])
    write_tiny_data(root / "selfinst" / "test.jsonl", TINY_RECORDS[4:8])
    return root


def compare(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "minillm_cli", "compare", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


def test_shipped_plan_and_its_recipes_load():
    plan = load_plan("smollm2_dolly")
    assert [s.name for s in plan.stages] == ["teacher", "student_SFT", "SFT", "KD", "SeqKD", "SeqKD_pregen", "GKD", "MiniLLM"]
    budgeted = [s for s in plan.stages if s.budget]
    assert [s.name for s in budgeted] == ["SFT", "KD", "SeqKD", "SeqKD_pregen", "GKD", "MiniLLM"]
    for stage in budgeted:
        assert set(stage.after) - {"SeqKD"} == {"teacher", "student_SFT"}
    for stage in plan.stages:
        config, options = load_config(recipe_path(stage.recipe))
        assert config.objective["name"] in ("sft", "kd", "seqkd", "gkd", "minillm")
    # every compared method has the same batch of budget-related settings: no method validates mid-budget
    for stage in budgeted:
        config, _ = load_config(recipe_path(stage.recipe))
        assert config.eval.every == 0 and config.eval.before_after is False
        assert config.train.schedule == "constant_with_warmup"
    # plans are not distill recipes
    assert not any(name.startswith("compare/") for name, _, _ in list_recipes())


def test_reduced_comparison_runs_resumes_and_reports(tiny_models, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher = tiny_models("llama", layers=4)
    plan = tiny_plan(tmp_path, teacher)
    done = compare("--plan", plan, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    results = json.loads((out / "results" / "comparison.json").read_text())
    models = ["teacher", "student_SFT", "SFT", "KD", "SeqKD", "SeqKD_pregen", "GKD", "MiniLLM"]
    assert list(results["results"]) == models
    for model in models:
        assert {"dolly", "selfinst"} <= set(results["results"][model])
        assert "rougeL" in results["results"][model]["dolly"] and "rougeL_std" in results["results"][model]["dolly"]
        # exposure bias is measured against the teacher, for every model but the teacher itself
        assert ("exposure" in results["results"][model]) == (model != "teacher")
    stages = results["stages"]
    assert [stages[m]["objective"] for m in models] == ["sft", "sft", "sft", "kd", "seqkd", "seqkd", "gkd", "minillm"]
    assert all(stages[m]["steps"] == 2 for m in models)
    assert stages["KD"]["budget_minutes"] == 5 and stages["teacher"]["budget_minutes"] is None
    # SeqKD_pregen found SeqKD's teacher responses: one generation for both
    assert len(list((tmp_path / "home" / "seqkd").glob("seqkd-*.jsonl"))) == 1
    table = (out / "results" / "comparison.md").read_text()
    for model in models:
        assert f"| {model} |" in table
    assert (out / "results" / "comparison.png").is_file()
    state = json.loads((out / "compare.json").read_text())
    assert all(job["status"] == "done" for job in state["jobs"].values())
    # the stage-2 runs start from the SFT student and learn from the fine-tuned teacher
    config = yaml.safe_load((out / "KD" / "config.yaml").read_text()) if (out / "KD" / "config.yaml").is_file() else None
    kd_log = (out / "logs" / "train_KD.log").read_text()
    assert f"teacher={out / 'teacher' / 'final'}" in kd_log and f"student={out / 'student_SFT'}" in kd_log
    assert config is None or config["train"]["max_minutes"] == 5

    again = compare("--plan", plan, "--data-dir", data_dir)
    assert again.returncode == 0, again.stderr
    assert "16 of 17 stages done, 1 to run" in again.stdout      # only the report is rewritten
    assert "start" not in again.stdout


def test_resume_continues_an_interrupted_stage_from_its_checkpoint(tiny_models, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher = tiny_models("llama", layers=4)
    plan = tiny_plan(tmp_path, teacher)
    out = tmp_path / "out"
    # as if the driver died after the teacher's first checkpoint: the stage's run has a checkpoint, no final
    first = subprocess.run(
        [sys.executable, "-m", "minillm_cli", "distill", "--recipe", "smollm2/dolly/teacher_SFT", "--output-dir",
         out / "teacher", "--no-progress", f"data.train={data_dir}/dolly/valid.jsonl", *TINY_SHARED,
         "train.steps=1", f"teacher={teacher}", f"student={teacher}"],
        capture_output=True, text=True, timeout=300,
    )
    assert first.returncode == 0, first.stderr
    import shutil

    shutil.rmtree(out / "teacher" / "final")
    dry = compare("--plan", plan, "--data-dir", data_dir, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    line = next(ln for ln in dry.stdout.splitlines() if "train teacher" in ln)
    assert "--resume" in line and "to run" in line


def test_sigterm_stops_the_driver_and_its_stages_with_checkpoints(tiny_models, tmp_path, data_dir, monkeypatch):
    """SIGTERM (or Ctrl-C) stops the running stages cleanly: distill saves a checkpoint, the driver exits 130 and
    records 'interrupted', and the next run resumes the stage. Works for a driver started in the background
    (which inherits an ignored SIGINT)."""
    import signal
    import time

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher = tiny_models("llama", layers=4)
    plan = tiny_plan(tmp_path, teacher, stage_overrides={"teacher": [f"teacher={teacher}", f"student={teacher}", "train.steps=5000"]})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "minillm_cli", "compare", "--plan", str(plan), "--data-dir", str(data_dir),
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    metrics = out / "teacher" / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.is_file() and '"loss"' in metrics.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout
    assert "interrupted" in stdout
    state = json.loads((out / "compare.json").read_text())
    assert state["jobs"]["train teacher"]["status"] == "interrupted"
    dry = compare("--plan", plan, "--data-dir", data_dir, "--dry-run")
    line = next(ln for ln in dry.stdout.splitlines() if "train teacher" in ln)
    assert "--resume" in line


def test_a_failed_stage_blocks_its_dependents_only(tiny_models, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher = tiny_models("llama", layers=4)
    plan = yaml.safe_load(tiny_plan(tmp_path, teacher, stage_overrides={"GKD": ["objective.beta=7"]}).read_text())
    plan["stages"] = [s for s in plan["stages"] if s["name"] in ("teacher", "student_SFT", "GKD")]
    plan["evaluate"]["models"] = ["teacher", "GKD"]
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(plan))
    result = compare("--plan", path, "--data-dir", data_dir)
    assert result.returncode == 1
    assert "FAILED  train GKD" in result.stdout and "beta" in result.stdout
    assert "skipped eval GKD" in result.stdout
    assert "done    eval teacher" in result.stdout                      # the rest of the plan still ran
    table = (tmp_path / "out" / "results" / "comparison.md").read_text()    # and the table has what was evaluated
    assert "| teacher |" in table and "| GKD |" in table
    state = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert state["jobs"]["train GKD"]["status"] == "failed" and state["jobs"]["eval GKD"]["status"] == "blocked"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(stagez=[]), "unknown key 'stagez' in the plan"),
        (lambda p: p["stages"][2]["overrides"].append("student={studentSFT}"), "unknown stage"),
        (lambda p: p["stages"][0].update(overrides=["student={KD}"]), "cycle"),
        (lambda p: p["evaluate"].update(models=["KD", "BigTeacher"]), "unknown stage"),
        (lambda p: p.update(budget_minutes=0), "budget_minutes must be a positive number"),
        (lambda p: p["stages"][1].update(export="last"), "export must be one of final, best"),
        (lambda p: p["stages"].append(dict(p["stages"][0])), "two stages are named 'teacher'"),
    ],
)
def test_bad_plans_fail_with_one_line(tmp_path, edit, message):
    plan = yaml.safe_load(SHIPPED.read_text())
    edit(plan)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    result = compare("--plan", path, "--data-dir", tmp_path, "--dry-run")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_unknown_plan_name_and_missing_data_dir(tmp_path):
    result = compare("--plan", "smollm2_doly")
    assert result.returncode == 2 and "did you mean 'smollm2_dolly'" in result.stderr
    result = compare("--plan", "smollm2_dolly")
    assert result.returncode == 2 and "pass --data-dir" in result.stderr


CONVERGED = PLANS_DIR / "smollm2_dolly_converged.yaml"


def test_converged_plan_loads_with_its_sweeps_and_ablations():
    plan = load_plan("smollm2_dolly_converged")
    assert plan.sweeps["KD"] == ["KD-lr5e-05", "KD-lr0.0002"]
    assert set(plan.sweeps) == {"SFT", "MiniLLM", "KD", "GKD", "DistiLLM", "SeqKD"}
    runs = {s.name: s for s in plan.stages}
    # everything that starts from the SFT student waits for both of its runs: the winner is known only then
    assert {"SFT-lr0.0002", "SFT-lr0.0005", "teacher"} <= set(runs["KD-lr0.0002"].after)
    assert runs["KD-lr0.0002"].overrides[-1] == "train.lr=0.0002" and runs["KD-lr0.0002"].swept == ["train.lr=0.0002"]
    ablations = {"MiniLLM_no_length_norm": "objective.length_norm=false", "MiniLLM_no_teacher_mix": "objective.alpha=0",
                 "MiniLLM_no_single_step": "objective.single_step=false"}
    for name, override in ablations.items():
        assert override in runs[name].overrides and runs[name].recipe == "smollm2/dolly_converged/MiniLLM"
    for stage in plan.stages:
        config, _ = load_config(recipe_path(stage.recipe))
        assert config.train.precision == "fp32"
    assert "SeqKD_data" in runs["SeqKD-lr5e-05"].after
    assert plan.evaluate.models[:2] == ["teacher", "SFT"] and plan.evaluate.limit == 100
    assert plan.evaluate.suites_for["MiniLLM_no_single_step"] == ["dolly"]


def test_reduced_converged_comparison_sweeps_and_picks_winners(tiny_models, tmp_path, data_dir, monkeypatch):
    """The paper-regime plan on tiny models (the reduced version CI runs): healing, sweeps, ablations, report."""
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher = tiny_models("llama", layers=4)
    plan = yaml.safe_load(CONVERGED.read_text())
    plan["output_dir"] = str(tmp_path / "out")
    plan["budget_minutes"] = 5
    plan["overrides"] = plan["overrides"] + TINY_SHARED + ["eval.every=1", "eval.patience=0"]
    extra = {"teacher": [f"teacher={teacher}", f"student={teacher}"],
             "student_heal": [f"teacher={teacher}", "student_layers=2", "data.lm_chunk_tokens=16"],
             "MiniLLM": ["data.lm_chunk_tokens=16"], "SeqKD_data": ["train.steps=1"]}
    for stage in plan["stages"]:
        stage["overrides"] = list(stage.get("overrides") or []) + extra.get(stage["name"], [])
        if stage["name"].startswith("MiniLLM_"):
            stage["overrides"].append("data.lm_chunk_tokens=16")
        if stage["name"] not in ("SFT", "MiniLLM", "KD"):
            stage.pop("sweep", None)   # CI time: three sweeps show the mechanism
    plan["evaluate"].update(seeds=[10, 20], limit=2, max_new_tokens=4, batch_size=2,
                            exposure={"teacher": "teacher", "suite": "dolly", "limit": 2, "max_len": 4},
                            args=["--set", "dolly.teacher_measures_limit=1", "--set", "dolly.teacher_measures_seeds=1"])
    path = tmp_path / "converged.yaml"
    path.write_text("# minillm compare --plan converged.yaml\n# the converged plan on tiny models\n" + yaml.safe_dump(plan))
    done = compare("--plan", path, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    results = json.loads((out / "results" / "comparison.json").read_text())
    models = plan["evaluate"]["models"]
    assert list(results["results"]) == models
    for model in models:   # the ablations on Dolly only (evaluate.suites_for), as the paper's ablation table
        assert ("selfinst" in results["results"][model]) == (not model.startswith("MiniLLM_"))
        dolly = results["results"][model]["dolly"]
        assert "rougeL" in dolly
        assert dolly["mean_new_tokens"] > 0 and 0 <= dolly["finished_percent"] <= 100   # response lengths
        if model != "teacher" and not model.startswith("MiniLLM_"):   # the mode-seeking measures, against the teacher
            assert {"teacher_nll", "student_nll_on_teacher", "rkl_own_samples"} <= set(dolly)
            assert "exposure" in results["results"][model]
        if model.startswith("MiniLLM_"):   # exactly their own suites: no exposure, no teacher
            assert "exposure" not in results["results"][model] and "teacher_nll" not in dolly
    stages = results["stages"]
    # a swept stage reads as its winner: the run with the best validation by its own select_by
    for name, select_by in (("SFT", "loss"), ("KD", "rougeL")):
        sweep = stages[name]["sweep"]
        assert set(sweep) == set(load_plan(str(path)).sweeps[name]) and stages[name]["chosen"] in sweep
        assert all(s["select_by"] == select_by for s in sweep.values())
        if select_by == "loss":
            assert sweep[stages[name]["chosen"]]["valid_loss"] == min(s["valid_loss"] for s in sweep.values())
        assert stages[name]["settings"]["train.lr"] in {"0.0002", "0.0005", "5e-05"}
    chosen_sft = stages["SFT"]["chosen"]
    assert f"student={out / chosen_sft / 'best'}" in (out / "logs" / "train_KD-lr5e-05.log").read_text()
    assert stages["student_heal"]["objective"] == "text_kd" if "student_heal" in stages else True
    # the budget's second unit: teacher-forward tokens, counted by every run that used the teacher
    metrics = [json.loads(line) for line in (out / "KD-lr5e-05" / "metrics.jsonl").read_text().splitlines()]
    assert [m["teacher_tokens"] for m in metrics if "loss" in m][-1] > 0
    sft = [json.loads(line) for line in (out / chosen_sft / "metrics.jsonl").read_text().splitlines()]
    assert all(m["teacher_tokens"] == 0 for m in sft if "loss" in m)
    # the validation curves, in both units of the budget
    curve = stages["KD"]["validations"]
    assert [v["step"] for v in curve] == [1, 2] and curve[-1]["teacher_tokens"] == stages["KD"]["teacher_tokens"] > 0
    assert (out / "results" / "validation.png").is_file() and (out / "results" / "mode_seeking.png").is_file()


def test_eval_arguments_for_suites_a_model_is_not_scored_on_are_dropped():
    from minillm_cli.compare.runner import _args_for

    args = ["--set", "dolly.teacher_measures_limit=30", "--set", "selfinst.teacher_measures_limit=30",
            "--set=exposure.limit=16", "--dtype", "fp32"]
    assert _args_for(args, ["dolly"]) == ["--set", "dolly.teacher_measures_limit=30", "--dtype", "fp32"]
    assert _args_for(args, ["dolly", "selfinst", "exposure"]) == args
