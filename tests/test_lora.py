"""LoRA students (train.lora): only the adapters train, exports hold the merged model and the adapter, a run resumes
with its adapters, and ``minillm convert merge-lora`` folds an adapter into a full model with the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli

peft = pytest.importorskip("peft")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

    root = tmp_path_factory.mktemp("lora")
    tokenizer = make_tiny_tokenizer()
    student = make_tiny_model(root / "llama-student", "llama", seed=1, tokenizer=tokenizer)
    teacher = make_tiny_model(root / "llama-teacher", "llama", layers=3, seed=2, tokenizer=tokenizer)
    return student, teacher


def _distill(capsys, models, out, *extra):
    student, teacher = models
    code, _, err = run_cli(
        capsys, "distill", "-o", "kd", "--teacher", teacher, "--student", student, "--output-dir", out,
        "--device", "cpu", "--no-progress", "train.batch_size=4", "train.lr=1e-2", "train.schedule=constant", "train.lora.r=4",
        "train.lora.alpha=8", "eval.every=0", "eval.before_after=false", "eval.rouge_examples=2",
        "eval.max_new_tokens=4", "eval.max_examples=4", "data.limit=24", "data.max_prompt_tokens=512",
        "checkpoint.every=2", *extra,
    )
    assert code == 0, err
    return out


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_lora_trains_adapters_only_and_exports_merged_model(capsys, models, tmp_path):
    out = _distill(capsys, models, tmp_path / "run", "--steps", "4")
    base, merged = _weights(models[0]), _weights(out / "final")
    assert sorted(base) == sorted(merged)                          # a plain model: no adapter names left
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed and all(any(t in name for t in TARGETS) for name in changed)   # only adapted layers moved
    assert torch.equal(base["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    adapter = json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == set(TARGETS)   # every linear layer
    assert json.loads((out / "final" / "minillm.json").read_text())["lora"] is True

    # merge-lora on the exported adapter gives the exported merged model.
    code, stdout, err = run_cli(capsys, "convert", "merge-lora", out / "final", tmp_path / "merged")
    assert code == 0, err
    assert "merged" in stdout
    again = _weights(tmp_path / "merged")
    assert all(torch.allclose(again[k], merged[k], atol=1e-6) for k in merged)


def test_lora_resume_continues_exactly(capsys, models, tmp_path):
    full = _distill(capsys, models, tmp_path / "full", "--steps", "4")
    part = _distill(capsys, models, tmp_path / "part", "--steps", "2")
    resumed = _distill(capsys, models, part, "--steps", "4", "--resume", part / "checkpoints" / "step-000002")
    a, b = _weights(full / "final"), _weights(resumed / "final")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_adapter_only_export_merges_to_the_adapted_model(capsys, models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from minillm_cli.convert.verify import probe_logits

    out = _distill(capsys, models, tmp_path / "run", "--steps", "2", "train.lora.merge_on_export=false",
                   "train.lora.target_modules=[q_proj,v_proj]")
    assert (out / "final" / "adapter_config.json").is_file() and not (out / "final" / "config.json").exists()
    code, _, err = run_cli(capsys, "convert", "merge-lora", out / "final", tmp_path / "merged", "--base", models[0])
    assert code == 0, err
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models[0]), out / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(probe_logits(merged), probe_logits(adapted), rtol=0, atol=1e-4)


def test_bad_target_modules_and_missing_adapter_fail_in_one_line(capsys, models, tmp_path):
    student, teacher = models
    code, _, err = run_cli(capsys, "distill", "-o", "sft", "--teacher", teacher, "--student", student, "--output-dir",
                           tmp_path / "x", "--device", "cpu", "--no-progress", "train.lora.r=2",
                           "train.lora.target_modules=[no_such_layer]", "data.limit=8")
    assert code == 2 and "train.lora.target_modules" in err
    code, _, err = run_cli(capsys, "convert", "merge-lora", student, tmp_path / "y")
    assert code == 2 and "no LoRA adapter" in err
