"""``minillm generate`` through the real entry point, on a tiny random-init model."""

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli
import torch

from minillm_cli.cli import main

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris.", "category": "geo"},
    {"instruction": "Add the numbers.", "input": "two plus two", "output": "four", "category": "math"},
    {"instruction": "Is this review positive or negative?", "input": "The film was wonderful.", "output": "positive",
     "category": "sentiment"},
]
MAX_NEW = 8
ADDED = {"prompt", "generation", "seed", "num_tokens", "finished", "model"}


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("llama")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


run = run_cli


def generate(capsys, model, *args):
    return run(capsys, "generate", "--model", model, "--max-new-tokens", MAX_NEW, "--batch-size", 2, *args)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    return lines[0]


def check_record(record, source, seed, model):
    for key, value in source.items():
        assert record[key] == value                            # every input field kept, the extra one too
    assert ADDED <= set(record)
    assert record["seed"] == seed and record["model"] == str(model)
    assert source["instruction"] in record["prompt"]
    if source["input"]:
        assert source["input"] in record["prompt"]
    assert isinstance(record["generation"], str)
    assert isinstance(record["finished"], bool)
    assert isinstance(record["num_tokens"], int) and 0 <= record["num_tokens"] <= MAX_NEW
    if not record["finished"]:
        assert record["num_tokens"] == MAX_NEW                 # stopped by the length limit, not by EOS


def test_generate_keeps_fields_and_adds_generation(model, prompts, tmp_path, capsys):
    out = tmp_path / "gens.jsonl"
    code, stdout, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", "1")
    assert code == 0, err
    assert stdout == ""                                        # with --out, nothing on standard output
    assert "generated 3 responses" in " ".join(err.split())   # rich may wrap the line
    records = read_jsonl(out)
    assert len(records) == 3
    for record, source in zip(records, RECORDS):
        check_record(record, source, 1, model)


def test_two_seeds_double_the_records(model, prompts, tmp_path, capsys):
    out = tmp_path / "gens.jsonl"
    code, _, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", "1,2")
    assert code == 0, err
    records = read_jsonl(out)
    assert len(records) == 6
    assert [r["seed"] for r in records] == [1, 1, 1, 2, 2, 2]
    for index, record in enumerate(records):
        check_record(record, RECORDS[index % 3], record["seed"], model)
    # A random model sampled at temperature 1 over 384 tokens: different seeds give different responses.
    assert [r["generation"] for r in records[:3]] != [r["generation"] for r in records[3:]]

    # Seed 1 alone gives the same responses as seed 1 of the pair (each seed restarts the random stream).
    single = tmp_path / "single.jsonl"
    code, _, err = generate(capsys, model, "--prompts", prompts, "--out", single, "--seeds", "1")
    assert code == 0, err
    assert read_jsonl(single) == records[:3]


def test_same_seed_twice_gives_identical_files(model, prompts, tmp_path, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        code, _, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", "7", "--top-k", "50")
        assert code == 0, err
    assert first.read_bytes() == second.read_bytes()


def test_temperature_zero_is_greedy(model, prompts, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from minillm_cli.data.instructions import load_instructions
    from minillm_cli.data.tokenization import tokenize_prompts
    from minillm_cli.models.load import load_tokenizer, resolve_model

    out = tmp_path / "greedy.jsonl"
    code, _, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", "1,2", "--temperature", "0")
    assert code == 0, err
    records = read_jsonl(out)
    assert [r["generation"] for r in records[:3]] == [r["generation"] for r in records[3:]]   # seeds do not matter

    # The same as transformers' greedy decoding of each prompt alone (no padding).
    ref = resolve_model(str(model))
    tokenizer = load_tokenizer(ref)
    ids, kept, dropped = tokenize_prompts(
        load_instructions(str(prompts)), tokenizer, prompt_format=ref.family.prompt_format, add_bos=ref.family.add_bos,
    )
    assert kept == [0, 1, 2] and dropped == 0
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    for prompt_ids, record in zip(ids, records):
        with torch.no_grad():
            output = lm.generate(
                torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=MAX_NEW,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new = output[0, len(prompt_ids):].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert record["num_tokens"] == len(new)
        assert record["generation"] == tokenizer.decode(new, skip_special_tokens=True)


def test_default_prompts_with_limit_to_stdout(model, capsys):
    code, stdout, err = generate(capsys, model, "--prompts", "default", "--limit", 5, "--seeds", "3")
    assert code == 0, err
    records = [json.loads(line) for line in stdout.split("\n") if line]
    assert len(records) == 5
    for record in records:
        assert ADDED <= set(record) and record["seed"] == 3
        assert record["instruction"] and record["instruction"] in record["prompt"]


def test_through_python_m(model, prompts, tmp_path):
    """The real process writes the JSONL to standard output and nothing else."""
    env = {**os.environ, "MINILLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "minillm_cli", "generate", "--model", str(model), "--prompts", str(prompts),
         "--max-new-tokens", str(MAX_NEW), "--seeds", "1,2", "--temperature", "0.7", "--top-p", "0.9"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.split("\n") if line]
    assert len(records) == 6
    for index, record in enumerate(records):
        check_record(record, RECORDS[index % 3], 1 + index // 3, model)


@pytest.mark.parametrize("seeds", ["x", "1,x", ",", "1.5"])
def test_bad_seeds_exit_2(model, prompts, tmp_path, capsys, seeds):
    out = tmp_path / "gens.jsonl"
    code, stdout, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", seeds)
    assert code == 2
    assert "--seeds" in error_line(err)
    assert stdout == "" and not out.exists()


def test_missing_prompts_file_exits_2(model, tmp_path, capsys):
    missing = tmp_path / "nope" / "prompts.jsonl"
    out = tmp_path / "gens.jsonl"
    code, stdout, err = generate(capsys, model, "--prompts", missing, "--out", out)
    assert code == 2
    assert "prompts.jsonl" in error_line(err)
    assert stdout == "" and not out.exists()


def test_out_is_written_atomically(model, prompts, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "gens.jsonl"
    out.write_text("an earlier result\n")

    # A failing command leaves the earlier file as it was.
    code, _, err = generate(capsys, model, "--prompts", tmp_path / "missing.jsonl", "--out", out)
    assert code == 2
    assert out.read_text() == "an earlier result\n"

    # A successful one replaces it whole, and leaves no temporary file behind.
    code, _, err = generate(capsys, model, "--prompts", prompts, "--out", out, "--seeds", "1")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["gens.jsonl"]
    assert len(read_jsonl(out)) == 3

    # An output in a folder that does not exist yet.
    nested = tmp_path / "new" / "deeper" / "gens.jsonl"
    code, _, err = generate(capsys, model, "--prompts", prompts, "--out", nested, "--seeds", "1")
    assert code == 0, err
    assert sorted(p.name for p in nested.parent.iterdir()) == ["gens.jsonl"]
    assert read_jsonl(nested) == read_jsonl(out)


def test_out_survives_a_failed_write(model, prompts, tmp_path, capsys, monkeypatch):
    """A write that fails half-way (disk full) keeps the earlier file and leaves no temporary file."""
    from minillm_cli import atomic

    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "gens.jsonl"
    out.write_text("an earlier result\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
              "--max-new-tokens", str(MAX_NEW), "--seeds", "1"])
    assert stopped.value.code == 2   # one line, not a traceback
    assert "error: cannot read or write: No space left on device; free disk space" in capsys.readouterr().err
    assert out.read_text() == "an earlier result\n"
    assert sorted(p.name for p in folder.iterdir()) == ["gens.jsonl"]
