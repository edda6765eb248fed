"""Tests of the lengthstats suite: the statistics on known records, then a real `minillm eval` on a tiny model.

They use the fixtures minillm ships to plugin authors (minillm_cli/pytest_plugin.py): no conftest.py needed.
"""

import importlib.metadata
import json

import minillm_lengthstats
import pytest
from minillm_lengthstats import length_cdf, length_stats

from minillm_cli.pytest_plugin import TINY_EVAL


def record(tokens, finished, text, reference="one two"):
    return {"num_tokens": tokens, "finished": finished, "generation": text, "references": [reference]}


def test_statistics_of_known_records():
    records = [record(2, True, "a b"), record(4, True, "a b c d"), record(0, True, ""), record(8, False, "a b c d e f")]
    stats = length_stats(records)
    assert stats["eos_rate"] == 75.0 and stats["empty_rate"] == 25.0
    assert stats["mean_tokens"] == 3.5 and stats["median_tokens"] == 3.0
    assert stats["max_tokens"] == 8.0 and stats["p90_tokens"] == 8.0
    assert stats["mean_words"] == 3.0 and stats["length_ratio"] == 1.5
    cdf = length_cdf(records, 8)
    assert cdf["x"] == list(range(9)) and cdf["y"][0] == 0.25 and cdf["y"][4] == 0.75 and cdf["y"][-1] == 1.0


def test_listed_with_help_and_options(minillm_run, minillm_plugin):
    minillm_plugin(minillm_lengthstats)
    result = minillm_run("plugins", "--json")
    assert "lengthstats" in json.loads(result.stdout)["evaluators"]
    info = json.loads(minillm_run("plugins", "--show", "lengthstats", "--json").stdout)
    assert info["kind"] == "evaluator" and "end-of-text" in info["help"]
    assert {"path", "limit"} <= {row["name"] for row in info["options"]}


def test_eval_on_a_tiny_model(minillm_run, minillm_plugin, minillm_teacher_student, tmp_path):
    minillm_plugin(minillm_lengthstats)
    out = tmp_path / "eval"
    result = minillm_run("eval", "--model", minillm_teacher_student.student, "--suite", "default,lengthstats",
                         "--out", out, *TINY_EVAL, "--seeds", "10,20")
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    stats = report["results"][str(minillm_teacher_student.student)]["lengthstats"]
    assert stats["headline"] == "eos_rate"
    assert 0 <= stats["metrics"]["eos_rate"] <= 100
    assert 0 < stats["metrics"]["max_tokens"] <= 4             # --max-new-tokens 4
    assert set(stats["details"]["per_seed"]) == {"10", "20"}
    assert stats["settings"]["examples"] == 2                  # --limit 2 of the embedded validation split
    with open(stats["files"]["responses"], encoding="utf-8") as handle:
        responses = [json.loads(line) for line in handle]
    assert len(responses) == 4 and {r["seed"] for r in responses} == {10, 20}
    assert "lengthstats" in result.stdout                     # the models × suites table


def test_reads_a_data_file(minillm_run, minillm_plugin, minillm_teacher_student, minillm_tiny_data, tmp_path):
    minillm_plugin(minillm_lengthstats)
    out = tmp_path / "eval"
    result = minillm_run("eval", "--model", minillm_teacher_student.student, "--suite", "lengthstats",
                         "--set", f"lengthstats.path={minillm_tiny_data}", "--set", "lengthstats.limit=3",
                         "--out", out, *TINY_EVAL)
    assert result.exit_code == 0, result.stderr
    stats = json.loads((out / "results.json").read_text())["results"][str(minillm_teacher_student.student)]["lengthstats"]
    assert stats["settings"]["source"] == str(minillm_tiny_data) and stats["settings"]["examples"] == 3


def test_missing_file_is_one_line(minillm_run, minillm_plugin, minillm_teacher_student, tmp_path):
    minillm_plugin(minillm_lengthstats)
    result = minillm_run("eval", "--model", minillm_teacher_student.student, "--suite", "lengthstats",
                         "--set", f"lengthstats.path={tmp_path / 'nope.jsonl'}", "--out", tmp_path / "eval")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr


@pytest.mark.parametrize("records", [[record(3, True, "x")]])
def test_one_record_one_seed(records):
    assert length_stats(records)["p90_tokens"] == 3.0


def test_installed_through_the_minillm_entry_point():
    found = importlib.metadata.entry_points(group="minillm", name="lengthstats")
    if not found:
        pytest.skip("not installed: pip install -e plugins/minillm-lengthstats")
    assert next(iter(found)).load() is minillm_lengthstats
