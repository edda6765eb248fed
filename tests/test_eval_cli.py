"""``minillm eval`` through the real entry point, on tiny random-init models saved to temporary directories."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import run_cli
from minillm_cli import Evaluator, SuiteResult, hookimpl

FAST = ("--max-new-tokens", 6, "--batch-size", 4)
RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Add the numbers.", "input": "two plus two", "output": ["four", "4"]},
    {"instruction": "Is this review positive or negative?", "input": "The film was wonderful.", "output": "positive"},
]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    return lines[0]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("llama", seed=1)


@pytest.fixture(scope="module")
def default_run(model, tmp_path_factory):
    """One evaluation on the embedded default suite, shared by the tests that read its outputs."""
    from minillm_cli.cli import main

    out = tmp_path_factory.mktemp("eval") / "out"
    # Module-scoped, so no capsys (run_cli needs it): Typer ends even a success with SystemExit(0).
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(model), "--seeds", "10,20", "--limit", "4", "--out", str(out), *map(str, FAST)])
    assert exit_info.value.code in (0, None)
    return out


def test_default_suite_end_to_end(default_run, model):
    report = json.loads((default_run / "results.json").read_text())
    assert report["suites"] == ["default"]
    result = report["results"][str(model)]["default"]
    assert result["headline"] == "rougeL"
    for key in ("rougeL", "rougeL_std", "exact_match", "dist4", "test_loss"):
        assert key in result["metrics"]
    assert 0 <= result["metrics"]["rougeL"] <= 100 and result["metrics"]["test_loss"] > 0
    assert result["details"]["seeds"] == [10, 20] and result["details"]["examples"] == 4
    assert "validation split" in result["settings"]["source"]
    settings = report["settings"]
    assert settings["seeds"] == [10, 20]
    assert settings["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 6,
                                    "no_repeat_ngram_size": 6}
    info = report["models"][str(model)]
    assert info["family"] == "llama" and info["weight_files"] == ["model.safetensors"]
    assert len(info["weights_sha256"]) == 64
    assert (default_run / "report.md").read_text().startswith("# minillm eval")
    assert (default_run / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folder = default_run / "suites" / Path(result["files"]["generations_seed_10"]).parent.name
    assert folder.name == "default"
    generations = read_jsonl(Path(result["files"]["generations_seed_10"]))
    assert len(generations) == 4 and {g["seed"] for g in generations} == {10}
    assert {"prompt", "generation", "references", "num_tokens", "finished"} <= set(generations[0])


def test_default_suite_is_the_split_distill_holds_out():
    from minillm_cli.config.schema import DataConfig
    from minillm_cli.data.instructions import load_instructions
    from minillm_cli.data.splits import split_examples
    from minillm_cli.evaluation.base import EvalContext
    from minillm_cli.evaluation.suites import DefaultSuite

    held_out = split_examples(load_instructions("default"), valid=DataConfig().valid_size, seed=DataConfig().seed)["valid"]
    examples, settings = DefaultSuite().load(EvalContext(model_name="m"))
    assert [e.instruction for e in examples] == [e.instruction for e in held_out]
    assert settings["examples"] == len(held_out) == 36


def test_rescoring_saved_generations_needs_no_model_and_gives_identical_numbers(default_run, model, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(default_run, copy)
    hidden = tmp_path / "moved-model"
    shutil.move(str(model), hidden)    # the model is gone: re-scoring must not need it
    try:
        code, out, err = run_cli(capsys, "eval", "--from-generations", copy, "--no-plots")
    finally:
        shutil.move(str(hidden), model)
    assert code == 0, err
    original = json.loads((copy / "results.json").read_text())
    rescored = json.loads((copy / "rescored" / "results.json").read_text())
    for name, per_suite in original["results"].items():
        for suite, result in per_suite.items():
            assert rescored["results"][name][suite]["metrics"] == result["metrics"]
            assert rescored["results"][name][suite]["details"] == result["details"]
    assert rescored["models"] == original["models"] and rescored["rescored_from"] == str(copy)
    assert "default" in out    # the table


def test_same_seed_reproduces_and_seeds_differ(model, tmp_path, capsys):
    out = tmp_path / "again"
    code, _, err = run_cli(capsys, "eval", "--model", model, "--seeds", "10,20", "--limit", 4, "--out", out, "--no-plots", *FAST)
    assert code == 0, err
    gens = {s: [r["generation"] for r in read_jsonl(out / "suites" / _only_dir(out / "suites") / "default" / f"seed-{s}.jsonl")] for s in (10, 20)}
    assert gens[10] != gens[20]
    code, _, err = run_cli(capsys, "eval", "--model", model, "--seeds", "10", "--limit", 4, "--out", tmp_path / "once", "--no-plots", *FAST)
    assert code == 0, err
    once = read_jsonl(tmp_path / "once" / "suites" / _only_dir(tmp_path / "once" / "suites") / "default" / "seed-10.jsonl")
    assert [r["generation"] for r in once] == gens[10]


def _only_dir(path: Path) -> str:
    (entry,) = [p.name for p in path.iterdir() if p.is_dir()]
    return entry


def test_local_jsonl_file_is_a_suite_with_several_references(model, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", data, "--seeds", "3", "--out", out, "--no-plots", *FAST)
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    result = report["results"][str(model)][str(data)]
    assert result["details"]["examples"] == 3
    assert result["details"]["test_loss"]["sequences"] == 4      # one (prompt, reference) pair per reference
    assert result["settings"]["source"] == str(data)


def test_missing_suite_data_is_one_line_saying_where_to_put_it(model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINILLM_DATA_DIR", raising=False)
    empty = tmp_path / "data"
    empty.mkdir()
    code, out, err = run_cli(capsys, "eval", "--model", model, "--suite", "vicuna", "--data-dir", empty)
    assert code == 2
    line = error_line(err)
    assert "suite 'vicuna'" in line and str(empty / "vicuna" / "test.jsonl") in line
    assert "instruction" in line and "output" in line and "--data-dir" in line
    # Offline, a suite with a hub name says the same, not a traceback from the hub.
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", "dolly", "--data-dir", empty)
    assert code == 2 and "dolly/test.jsonl" in error_line(err)


def test_bad_files_and_names_are_one_line_errors(model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", bad)
    assert code == 2 and f"{bad}:2: invalid JSON" in error_line(err)
    no_output = tmp_path / "no_output.jsonl"
    no_output.write_text(json.dumps({"instruction": "x", "input": ""}) + "\n")
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", no_output)
    assert code == 2 and f"{no_output}:1" in error_line(err)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", tmp_path / "absent.jsonl")
    assert code == 2 and "suite file not found" in error_line(err)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", "dollyy,default", "--set", "default.limt=2")
    line = error_line(err)
    assert code == 2 and "unknown evaluator 'dollyy'" in line and "did you mean 'dolly'?" in line
    assert "unknown option 'default.limt'" in line
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", "exposure")
    assert code == 2 and "--teacher" in error_line(err)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", "judge")
    assert code == 2 and "--judge-url" in error_line(err)


def test_shared_dolly_and_selfinst(shared_data, model, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "eval", "--model", model, "--suite", "dolly,selfinst", "--data-dir", shared_data, "--limit", 2,
        "--seeds", "10", "--set", "selfinst.paper_subset=true", "--out", out, "--no-plots", *FAST,
        "--max-prompt-tokens", 2048,   # the tiny test tokenizer spends many tokens on real text
    )
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    results = report["results"][str(model)]
    assert results["dolly"]["settings"]["available"] == 500
    assert results["selfinst"]["settings"]["available"] == 242
    gens = read_jsonl(results["dolly"]["files"]["generations_seed_10"])
    assert gens[0]["instruction"] == "When did Virgin Australia start operating?"


class EchoSuite(Evaluator):
    """A plugin evaluator: scores nothing but what the context gave it."""

    name = "echo"
    help = "test plugin"

    def evaluate(self, ctx):
        return SuiteResult(suite=self.name, metrics={"seeds": float(len(ctx.seeds))}, headline="seeds",
                           curves={"line": {"x": [1, 2], "y": [0.5, 1.5]}})


def test_plugin_evaluator_runs_and_is_listed(register_plugin, model, tmp_path, capsys):
    plugin = types.ModuleType("echo_plugin")

    @hookimpl
    def register_evaluators(register):
        register(EchoSuite)

    plugin.register_evaluators = register_evaluators
    register_plugin(plugin, "echo-plugin")
    code, out, _ = run_cli(capsys, "plugins", "--json")
    listed = json.loads(out)["evaluators"]
    assert {"default", "dolly", "selfinst", "vicuna", "sinst", "uinst", "exposure", "calibration", "judge", "echo"} <= set(listed)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--suite", "echo", "--seeds", "1,2,3", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["results"][str(model)]["echo"]["metrics"] == {"seeds": 3.0}
    assert (tmp_path / "line.png").is_file()


def test_exposure_and_calibration_wired_in(model, tiny_models, tmp_path, capsys):
    teacher = tiny_models("llama", layers=3, seed=2)
    sst2 = tmp_path / "data" / "sst2" / "test.jsonl"
    sst2.parent.mkdir(parents=True)
    sst2.write_text("".join(json.dumps({"sentence": s, "label": l}) + "\n" for s, l in [("great film", 1), ("dull", 0), ("lovely", 1)]))
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "eval", "--model", model, "--teacher", teacher, "--suite", "exposure,calibration", "--data-dir",
        tmp_path / "data", "--seeds", "5", "--set", "exposure.limit=2", "--set", "exposure.max_len=4", "--out", out,
        *FAST,
    )
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())["results"][str(model)]
    exposure = results["exposure"]
    assert exposure["headline"] == "exaccerr_at_4" and exposure["curves"]["exposure_bias"]["x"] == [1, 2, 3, 4]
    assert exposure["settings"]["seed"] == 5
    calibration = results["calibration"]
    assert calibration["headline"] == "ece" and 0 <= calibration["metrics"]["ece"] <= 1
    assert Path(calibration["files"]["reliability_diagram"]).is_file()
    assert (out / "exposure_bias.png").is_file()


def test_judge_wired_in_with_a_local_endpoint(model, tmp_path, capsys):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"content": "6 8\nfine"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, _, err = run_cli(
            capsys, "eval", "--model", model, "--suite", "judge", "--judge-url", f"http://127.0.0.1:{server.server_port}/v1",
            "--judge-model", "stub", "--limit", 2, "--out", tmp_path, "--no-plots", *FAST,
        )
    finally:
        server.shutdown()
    assert code == 0, err
    result = json.loads((tmp_path / "results.json").read_text())["results"][str(model)]["judge"]
    assert result["metrics"]["judge_ratio"] == pytest.approx(75.0) and result["details"]["scored"] == 2
    assert len(read_jsonl(result["files"]["judged"])) == 2


def test_cli_start_up_stays_light():
    code = (
        "import sys\nfrom minillm_cli.cli import build_app\nbuild_app()\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
