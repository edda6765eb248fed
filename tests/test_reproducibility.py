"""Reproducibility: the same seed and config give the same losses on a CPU, and every run records what it was
made of (run_info.json: resolved config, package versions, model and data hashes)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ["train.steps=3", "train.batch_size=2", "eval.before_after=false", "eval.rouge_examples=0",
        "data.limit=24", "data.max_prompt_tokens=512", "generation.max_new_tokens=6"]


@pytest.fixture
def pair(tiny_models):
    return tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _run(capsys, pair, output, *extra):
    teacher, student = pair
    code, _, err = run_cli(capsys, "distill", "--teacher", teacher, "--student", student, "--output-dir", output,
                           "--no-progress", *TINY, *extra)
    assert code == 0, err
    return err


def _train_records(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_second")} for r in records if "loss" in r]


@pytest.mark.parametrize("objective", [["--objective", "kd"], ["--objective", "gkd", "objective.lmbda=1"],
                                       ["--objective", "minillm", "data.lm_chunk_tokens=32"]])
def test_same_seed_and_config_give_identical_losses(objective, pair, home, tmp_path, capsys):
    """gkd with lmbda=1 samples from the student at every step, minillm from the teacher mixture (its coins
    included): sampling is seeded too."""
    _run(capsys, pair, tmp_path / "a", *objective)
    _run(capsys, pair, tmp_path / "b", *objective)
    first, second = _train_records(tmp_path / "a"), _train_records(tmp_path / "b")
    assert [r["step"] for r in first] == [1, 2, 3]
    assert first == second                                   # every logged number, bit for bit
    _run(capsys, pair, tmp_path / "c", *objective, "train.seed=1")
    assert [r["loss"] for r in _train_records(tmp_path / "c")] != [r["loss"] for r in first]   # the seed matters


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_run_writes_run_info_beside_its_checkpoints(pair, home, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"{i}!"}) + "\n" for i in range(20)))
    output = tmp_path / "run"
    _run(capsys, pair, output, "--objective", "kd", f"data.train={data}")
    info = json.loads((output / "run_info.json").read_text())
    assert not [p for p in output.iterdir() if ".tmp-" in p.name]          # written atomically

    versions = info["versions"]
    assert {"python", "torch", "transformers", "accelerate", "minillm"} <= set(versions)
    assert all(isinstance(versions[k], str) and versions[k] for k in ("python", "torch", "transformers", "accelerate", "minillm"))

    from minillm_cli.config.recipes import load_config

    assert info["config"]["train"]["steps"] == 3 and info["config"]["objective"]["name"] == "kd"
    assert info["config"]["data"]["train"] == str(data)
    # The recorded config is the resolved one: it loads back into the config the run used.
    recorded = tmp_path / "recorded.yaml"
    import yaml

    recorded.write_text(yaml.safe_dump(info["config"]))
    assert load_config(recorded)[0].train.steps == 3

    teacher, student = pair
    for role, directory in (("teacher", teacher), ("student", student)):
        files = info["models"][role]["files"]
        assert files == {"model.safetensors": _sha256(Path(directory) / "model.safetensors")}
    assert info["data"]["train"]["files"] == {"data.jsonl": _sha256(data)}
    assert len(info["data"]["train_examples_sha256"]) == 64
    assert info["resumed_from"] is None and info["history"] == []

    # A resumed run records its own start and keeps the first one.
    code, _, err = run_cli(capsys, "distill", "--resume", output, "train.steps=4", "--no-progress")
    assert code == 0, err
    again = json.loads((output / "run_info.json").read_text())
    assert again["resumed_from"].endswith("step-000003") and len(again["history"]) == 1
    assert again["history"][0]["started"] == info["started"]
    assert again["data"]["train_examples_sha256"] == info["data"]["train_examples_sha256"]


def test_the_data_hash_follows_the_data(pair, home, tmp_path, capsys):
    records = [{"instruction": f"Say {i}", "output": f"{i}!"} for i in range(20)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _run(capsys, pair, tmp_path / "a", "--objective", "sft", f"data.train={data}")
    records[5]["output"] = "changed"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _run(capsys, pair, tmp_path / "b", "--objective", "sft", f"data.train={data}")
    a, b = (json.loads((tmp_path / n / "run_info.json").read_text())["data"] for n in ("a", "b"))
    assert a["train"]["files"] != b["train"]["files"]


def test_weight_hashes_are_cached_by_size_and_mtime(tmp_path):
    from minillm_cli.runs.run_info import HashCache

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(4096))
    cache_file = tmp_path / "hash_cache.json"
    first = HashCache(cache_file)
    digest = first.sha256(weights)
    assert digest == _sha256(weights) and first.hashed == 1
    first.save()

    second = HashCache(cache_file)                           # a later run: read from the cache, not the file
    assert second.sha256(weights) == digest and second.hashed == 0

    weights.write_bytes(os.urandom(4096))                    # same size, new content and mtime
    stamp = time.time() + 5
    os.utime(weights, (stamp, stamp))
    third = HashCache(cache_file)
    assert third.sha256(weights) == _sha256(weights) != digest and third.hashed == 1

    cache_file.write_text("not json")                        # a damaged cache costs time, never an error
    assert HashCache(cache_file).sha256(weights) == _sha256(weights)
