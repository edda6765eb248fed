"""The phi3 family resolves Phi-3 checkpoints and aliases; uses the fixtures minillm ships to plugin authors."""

import importlib.metadata
import json

import minillm_phi3
import pytest


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory):
    """A tiny random-init Phi-3 model with minillm's tiny test tokenizer."""
    import transformers

    from minillm_cli.testing import make_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-phi3")
    config = transformers.Phi3Config(
        vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def test_family_is_listed(minillm_run, minillm_plugin):
    minillm_plugin(minillm_phi3)
    result = minillm_run("plugins", "--json")
    assert result.exit_code == 0, result.stderr
    assert "phi3" in json.loads(result.stdout)["model_families"]


def test_resolves_and_loads_a_phi3_model(minillm_plugin, tiny_phi3):
    from minillm_cli.models import load_model, resolve_model

    minillm_plugin(minillm_phi3)
    ref = resolve_model(str(tiny_phi3))
    assert ref.family.name == "phi3" and ref.family.prompt_format == "chat"
    assert resolve_model("phi3-mini").source == "microsoft/Phi-3-mini-4k-instruct"
    load_model(ref)


def test_generates_with_a_phi3_model(minillm_run, minillm_plugin, tiny_phi3, minillm_tiny_data, tmp_path):
    minillm_plugin(minillm_phi3)
    out = tmp_path / "gens.jsonl"
    result = minillm_run("generate", "--model", tiny_phi3, "--prompts", minillm_tiny_data, "--out", out,
                         "--max-new-tokens", "3", "--limit", "2")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all("<|im_start|>" in r["prompt"] for r in rows)   # the chat prompt format


def test_installed_through_the_minillm_entry_point():
    found = importlib.metadata.entry_points(group="minillm", name="phi3")
    if not found:
        pytest.skip("not installed: pip install -e plugins/minillm-phi3")
    assert next(iter(found)).load() is minillm_phi3
