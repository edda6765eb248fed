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
def test_damaged_model_folders_are_one_line_in_every_command(how, gpt2, minillm_home, tmp_path, capsys):
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


def test_on_policy_distill_past_the_context_fails_before_training(gpt2, minillm_home, tmp_path, capsys):
    output = tmp_path / "run"
    one_error(run_cli(capsys, "distill", "--teacher", gpt2, "--student", gpt2, "--objective", "gkd",
                      "--output-dir", output, *FAST_DISTILL, "generation.max_new_tokens=600"),
              "sampled sequences", "generation.max_new_tokens")
    assert not output.exists()


# --- output paths ------------------------------------------------------------------------------------------------


def test_output_paths_of_the_wrong_kind_are_one_line(llama, minillm_home, tmp_path, capsys):
    folder, file = tmp_path / "a-folder", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("mine\n")
    one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--out", folder), "--out", "is a folder")
    one_error(run_cli(capsys, "eval", "--model", llama, "--seeds", "1", "--limit", "1", "--no-plots", "--out", file),
              "--out", "is a file")
    one_error(run_cli(capsys, "distill", "--teacher", llama, "--student", llama, "--objective", "sft",
                      "--output-dir", file, *FAST_DISTILL), "--output-dir", "is a file")
    one_error(run_cli(capsys, "convert", "layers", llama, file / "student", "--num-layers", "1"), "is a file")
    assert list(folder.iterdir()) == [] and file.read_text() == "mine\n"


def test_minillm_home_a_file_is_one_line(llama, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home-file"
    home.write_text("")
    monkeypatch.setenv("MINILLM_HOME", str(home))
    one_error(run_cli(capsys, "distill", "--teacher", llama, "--output-dir", tmp_path / "run", *FAST_DISTILL),
              "MINILLM_HOME", "is a file")
    assert not (tmp_path / "run").exists()


def test_read_only_folders_are_one_line(llama, minillm_home, tmp_path, monkeypatch, capsys):
    """The tests run as root, who may write anywhere: the check is made to see the folder as a user would."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        not (mode & os.W_OK) if Path(path).absolute() == locked else real_access(path, mode, **kw)))
    try:
        one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--out", locked / "g.jsonl"),
                  "not writable")
        one_error(run_cli(capsys, "eval", "--model", llama, "--no-plots", "--out", locked / "eval"), "not writable")
        one_error(run_cli(capsys, "convert", "layers", llama, locked / "student", "--num-layers", "1"), "not writable")
        monkeypatch.setenv("MINILLM_HOME", str(locked))
        one_error(run_cli(capsys, "distill", "--teacher", llama, "--output-dir", tmp_path / "run", *FAST_DISTILL),
                  "MINILLM_HOME", "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_write_no_check_foresaw_is_one_line(llama, monkeypatch, tmp_path, capsys):
    """The last resort: an OSError anywhere (a disk turned read-only mid-run) is one line, not a traceback."""
    import errno

    import minillm_cli.runs.generate as generate

    def refuse(records, out):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(generate, "_write_jsonl", refuse)
    one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--out", tmp_path / "g.jsonl"),
              "Permission denied", "g.jsonl", "writable")


def test_names_over_255_bytes_are_one_short_line(llama, tmp_path, capsys):
    long_name = "a" * 100_000
    line = one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE,
                             "--out", tmp_path / f"{long_name}.jsonl"), "255 bytes")
    assert len(line) < 600
    line = one_error(run_cli(capsys, "generate", "--model", long_name, *FAST_GENERATE), "characters")
    assert len(line) < 600


# --- devices, sizes, plugins, processes --------------------------------------------------------------------------


def test_devices_this_machine_lacks_are_one_line(llama, minillm_home, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--device", "cuda"), "no CUDA GPU", "cpu")
    one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--device", "tpu:7"),
              "unknown device 'tpu:7'", "cuda:N")
    one_error(run_cli(capsys, "distill", "--teacher", llama, "--student", llama, "--device", "cuda",
                      "--output-dir", tmp_path / "run", *FAST_DISTILL), "no CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_a_shard_size_without_a_known_unit_is_one_line(llama, tmp_path, capsys):
    one_error(run_cli(capsys, "convert", "dtype", llama, tmp_path / "out", "--dtype", "bf16", "--max-shard-size", "12XB"),
              "--max-shard-size '12XB'", "500MB")
    assert not (tmp_path / "out").exists()


def test_a_plugin_hook_that_raises_names_the_plugin_and_the_hook(register_plugin, capsys):
    import types

    from minillm_cli import hookimpl

    plugin = types.ModuleType("buggy")

    @hookimpl
    def register_objectives(register):
        raise KeyError("oops")

    plugin.register_objectives = register_objectives
    register_plugin(plugin, "buggy-plugin")
    one_error(run_cli(capsys, "distill", "--objective", "nosuch", "--print-config"),
              "plugin 'buggy-plugin'", "register_objectives", "KeyError")


def test_an_objective_with_an_empty_name_is_refused(register_plugin):
    from minillm_cli import Objective, plugins
    from minillm_cli.errors import MinillmError

    class Nameless(Objective):
        name = ""
        needs = frozenset({"gold"})

    register_plugin(objectives=[Nameless])
    with pytest.raises(MinillmError, match="Nameless with the name ''"):
        plugins.objectives()


def test_zero_processes_is_an_error(llama, tmp_path, capsys):
    one_error(run_cli(capsys, "distill", "--teacher", llama, "--num-processes", "0", "--output-dir", tmp_path / "run"),
              "--num-processes must be >= 1")


def test_ctrl_c_ignores_further_ctrl_c_while_exiting(monkeypatch, capsys):
    """After the first Ctrl-C stops a command, a second one must not interrupt the exit handlers (a traceback
    from atexit): SIGINT is ignored from then on."""
    import signal


    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("minillm_cli.runs.launch.strip_local_rank", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    try:
        try:
            code, _, err = run_cli(capsys, "plugins")
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped the command as a traceback")
        assert code == 130 and "Traceback" not in err and "interrupted" in err
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# --- smaller ones ------------------------------------------------------------------------------------------------


def test_recipes_copy_into_a_new_folder_ending_in_a_slash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "recipes", "copy", "gpt2/xl_to_base_KD", "mine/")
    assert code == 0, err
    assert (tmp_path / "mine" / "xl_to_base_KD.yaml").is_file()


def test_records_with_nothing_in_them_are_refused(llama, minillm_home, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi", "input": "", "output": "hi"}\n'
                    '{"instruction": "", "input": "", "output": ""}\n')
    one_error(run_cli(capsys, "distill", "--teacher", llama, "--student", llama, "--objective", "sft",
                      "--output-dir", tmp_path / "run", *FAST_DISTILL, f"data.train={data}"),
              "d.jsonl:2", "all empty")


def test_save_logits_refused_leaves_no_jsonl(llama, tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    one_error(run_cli(capsys, "generate", "--model", llama, *FAST_GENERATE, "--save-logits", "100000", "--out", out),
              "--save-logits")
    assert list(tmp_path.iterdir()) == []


def test_compare_dry_run_checks_the_data(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    one_error(run_cli(capsys, "compare", "--plan", "smollm2_dolly", "--data-dir", tmp_path / "data", "--dry-run"),
              "cannot find its data", "dolly/valid.jsonl", "selfinst")


def test_a_compare_with_no_evaluation_writes_no_table(tmp_path):
    from minillm_cli.compare.plan import load_plan
    from minillm_cli.compare.runner import Comparison, Job

    messages = []
    comparison = Comparison(load_plan("smollm2_dolly"), data_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                            log=messages.append)
    comparison._report(Job("report", "report", "", []))
    assert not (tmp_path / "out" / "results").exists()
    assert "not written" in messages[-1]


# --- the design card: `minillm distill`, then `minillm eval --suite dolly,selfinst` ----------------------------------


def test_eval_after_distill_takes_the_newest_student_and_the_documented_data(minillm_teacher_student, tmp_path,
                                                                              monkeypatch, capsys):
    import json

    from minillm_cli.pytest_plugin import TINY_DISTILL, TINY_EVAL, TINY_RECORDS, write_tiny_data

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("MINILLM_HOME", str(home))
    monkeypatch.delenv("MINILLM_DATA_DIR", raising=False)
    for suite in ("dolly", "selfinst"):   # where docs/evaluation.md says the data go by default
        write_tiny_data(home / "data" / suite / "test.jsonl", TINY_RECORDS[:4])
    code, _, err = run_cli(capsys, "distill", "--teacher", minillm_teacher_student.teacher, "--student",
                           minillm_teacher_student.student, "--no-progress", *TINY_DISTILL, "eval.before_after=false")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", "--suite", "dolly,selfinst", *TINY_EVAL)
    assert code == 0, err
    assert "evaluating runs/default/final" in err
    report = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())
    assert list(report["models"]) == ["runs/default/final"] and report["suites"] == ["dolly", "selfinst"]


def test_eval_with_nothing_to_evaluate_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    one_error(run_cli(capsys, "eval", "--suite", "default"), "pass --model", "minillm distill")
    assert not (tmp_path / "runs").exists()


# --- the progress display ------------------------------------------------------------------------------------------


def test_distill_on_a_terminal_shows_every_phase_and_one_speed(minillm_teacher_student, tmp_path, monkeypatch, capsys):
    import re

    import rich.console

    from minillm_cli.pytest_plugin import TINY_DISTILL

    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capsys, "distill", "--teacher", minillm_teacher_student.teacher, "--student",
                           minillm_teacher_student.student, "--objective", "kd", "--output-dir", tmp_path / "run",
                           *TINY_DISTILL, "train.steps=3")
    assert code == 0, err[-2000:]
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)   # the terminal's colour and cursor codes
    for phase in ("loading the models and the data", "validating at step 0", "step 3/3", "validating at step 3",
                  "saving the checkpoint of step 3", "exporting final/", "elapsed 0:00:"):
        assert phase in err, phase
    bar_speeds = re.findall(r"\| (\d+) sequence tokens/s", err)
    summary_speed = re.search(r"s/step, (\d+) sequence tokens/s", err).group(1)
    assert bar_speeds and bar_speeds[-1] == summary_speed


# --- plots -------------------------------------------------------------------------------------------------------


def test_plots_label_everything_and_give_each_model_one_colour(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from minillm_cli.evaluation import plots

    def result(headline, value, curve=None):
        return {"headline": headline, "metrics": {headline: value, f"{headline}_std": 0.5},
                "curves": {"exposure_bias": curve} if curve else {}}

    curve = {"x": [1, 2, 3], "y": [0.0, -1.0, -2.0], "xlabel": "generation length l (tokens)",
             "ylabel": "ExAccErr(l) (%)", "title": "Exposure bias", "lower_is_better": True}
    report = {"suites": ["dolly", "exposure"], "results": {
        "teacher": {"dolly": result("rougeL", 14.0)},
        "KD": {"dolly": result("rougeL", 8.0), "exposure": result("exaccerr_at_16", -12.0, curve)},
        "MiniLLM": {"dolly": result("rougeL", 7.5), "exposure": result("exaccerr_at_16", -16.0, curve)},
    }}
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.setdefault(path.name, figure) and path)
    written = plots.plot(report, tmp_path, reference="teacher")
    assert [p.name for p in written] == ["comparison.png", "exposure_bias.png"]
    dolly, exposure = figures["comparison.png"].axes
    assert [t.get_text() for t in dolly.get_xticklabels()] == ["teacher", "KD", "MiniLLM"]
    assert dolly.get_title() == "Dolly (DollyEval)" and dolly.get_ylabel() == "Rouge-L, higher is better"
    assert exposure.get_ylabel() == "ExAccErr(16) (%), lower is better"
    bar_colours = {label.get_text(): to_hex(bar.get_facecolor())
                   for axes in (dolly, exposure) for label, bar in zip(axes.get_xticklabels(), axes.patches)}
    (curves,) = figures["exposure_bias.png"].axes
    line_colours = {line.get_label(): to_hex(line.get_color()) for line in curves.get_lines()}
    assert line_colours == {m: bar_colours[m] for m in ("KD", "MiniLLM")}   # the same colour in both figures
    assert len(set(bar_colours.values())) == 3 and bar_colours["teacher"] == to_hex(plots.TEACHER_GREY)
    assert curves.get_xlabel() and curves.get_ylabel().endswith("lower is better") and curves.get_title()


def test_the_committed_results_plot_is_drawn_again_from_its_json(tmp_path):
    from minillm_cli.compare.report import plot_again

    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    (written,) = plot_again(docs / "smollm2_dolly.json", tmp_path)
    assert written.name == "comparison.png" and written.stat().st_size > 10_000


# --- hints that point somewhere ------------------------------------------------------------------------------------


def test_field_hints_name_each_commands_own_option(llama, minillm_home, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text('{"q": "Say hi", "a": "hi"}\n')
    line = one_error(run_cli(capsys, "distill", "--teacher", llama, "--student", llama, "--objective", "sft",
                             "--output-dir", tmp_path / "run", *FAST_DISTILL, f"data.train={data}"), "data.fields=")
    assert "--fields" not in line
    line = one_error(run_cli(capsys, "eval", "--model", llama, "--suite", data, "--no-plots", "--out", tmp_path / "e"),
                     f"--set {data}.fields=")
    assert "--fields" not in line


def test_student_layers_error_names_student_layers(llama, minillm_home, tmp_path, capsys):
    line = one_error(run_cli(capsys, "distill", "--teacher", llama, "--output-dir", tmp_path / "run", *FAST_DISTILL,
                             "student_layers=100"), "student_layers must be between 1 and 2")
    assert "--num-layers" not in line


def test_the_missing_matplotlib_hint_keeps_its_brackets(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from minillm_cli.evaluation import plots, reports

    def no_matplotlib(*args, **kwargs):
        raise ImportError("matplotlib")

    monkeypatch.setattr(plots, "plot", no_matplotlib)
    console = Console(file=io.StringIO(), width=200)
    reports.write_reports({"suites": [], "results": {}, "models": {}}, tmp_path, console=console)
    assert "pip install 'minillm[eval]'" in console.file.getvalue()


def test_the_product_cites_nothing_it_does_not_ship():
    """Help texts, recipes, docs and the README name the project's own docs and public sources, never a file or
    folder of the machine the project was written on."""
    repo = Path(__file__).resolve().parents[1]
    files = [repo / "README.md", *(repo / "minillm_cli").rglob("*.py"), *(repo / "recipes").rglob("*.yaml"),
             *(repo / "docs").rglob("*.md"), *(repo / "docs").rglob("*.json")]
    cited = [f"{path.relative_to(repo)}:{number}" for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if "REFERENCE" in line or "shared/data" in line]
    assert not cited


# --- the README is a front page ------------------------------------------------------------------------------------


def test_the_readme_is_a_short_front_page_that_links_into_docs():
    import re

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "bash scripts/setup && .venv/bin/minillm distill\n" in text
    assert "bash scripts/setup && .venv/bin/python -m pytest -q -p no:cacheprovider\n" in text
    for command in ("distill", "eval", "generate", "convert", "compare", "plugins"):
        assert re.search(rf"^minillm {command}\b", text, re.M), command
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert "docs/performance.md" in links and all((repo / link).is_file() for link in links)
    # what moved out lives once in docs/: the performance text verbatim, the safety guarantees
    assert "Peak memory is the worker process's peak resident set" in (repo / "docs" / "performance.md").read_text()
    assert "Peak memory is the worker process's peak resident set" not in text
