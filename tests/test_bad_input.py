"""Bad input fails with one line that names the problem and the fix, exit status 2, and writes nothing.

First every kind of bad input once through ``minillm distill``; then property-based tests (hypothesis) that feed
random and mutated data files and recipes to the loading and validation layer, and some of them through the CLI:
the only outcomes allowed are success or a clean ``MinillmError`` (one line), never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from minillm_cli.errors import MinillmError

# How many mutated or random inputs the property tests tried, by kind (printed at the end of the module).
TRIED: dict[str, int] = {}

CLI = ["--objective", "sft", "--no-progress", "train.steps=1", "train.batch_size=2", "eval.before_after=false",
       "eval.rouge_examples=0", "data.max_prompt_tokens=512"]


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("llama", seed=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error: "), err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return lines[-1]


def distill_data(capsys, model, tmp_path, data: Path, *extra):
    output = tmp_path / "run"
    code, _, err = run_cli(capsys, "distill", "--teacher", model, "--student", model, "--output-dir", output,
                           *CLI, f"data.train={data}", *extra)
    return code, err, output


# --- each kind of bad data, through the CLI --------------------------------------------------------------------

RECORD = {"instruction": "Say hi", "input": "", "output": "hi"}
BAD_DATA = {
    # name: (file name, bytes, words the error line must hold)
    "malformed JSON line": ("d.jsonl", json.dumps(RECORD).encode() + b'\n{"instruction": "a", "output": \n',
                            ["d.jsonl:2", "invalid JSON", "fix or remove that line"]),
    "misnamed field": ("d.jsonl", b'{"prompt_text": "a", "reply": "b"}\n',
                       ["d.jsonl:1", "missing field 'instruction'", "prompt_text", "data.fields="]),
    "missing output": ("d.jsonl", b'{"instruction": "a"}\n', ["d.jsonl:1", "missing field 'output'", "data.fields="]),
    "field of the wrong type": ("d.jsonl", b'{"instruction": 3, "output": "b"}\n',
                                ["d.jsonl:1", "'instruction' must be a string", "int"]),
    "not an object": ("d.jsonl", b'"hello"\n', ["d.jsonl:1", "expected a JSON object", "one object per line"]),
    "empty file": ("d.jsonl", b"", ["no training examples in", "empty", "instruction and output"]),
    "blank lines only": ("d.jsonl", b"\n\n  \n", ["no training examples in", "blank lines"]),
    "CSV header only": ("d.csv", b"instruction,output\n", ["no training examples in", "header"]),
    "empty JSON list": ("d.json", b"[]", ["no training examples in"]),
    "non-UTF-8 bytes": ("d.jsonl", json.dumps(RECORD).encode() + b'\n{"instruction": "caf\xe9", "output": "b"}\n',
                        ["d.jsonl:2", "not UTF-8", "re-save the file as UTF-8"]),
    "binary garbage": ("d.jsonl", bytes(range(255, -1, -1)) * 4, ["d.jsonl:1", "not UTF-8"]),
    "CSV row of the wrong width": ("d.csv", b"instruction,output\na,b,c\n", ["d.csv:2", "3 columns", "header has 2"]),
    "broken Parquet": ("d.parquet", b"PAR1 this is not parquet", ["d.parquet", "not a valid Parquet file"]),
    "unsupported suffix": ("d.txt", b"hello\n", ["unsupported file type", ".jsonl"]),
    "prompts all over the limit": ("d.jsonl", b"".join(
        json.dumps({"instruction": "word " * 400, "output": "x"}).encode() + b"\n" for _ in range(6)),
        ["no training examples left", "prompts over 512 tokens", "raise data.max_prompt_tokens"]),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_data_through_the_cli(kind, model, home, tmp_path, capsys):
    name, content, words = BAD_DATA[kind]
    data = tmp_path / name
    data.write_bytes(content)
    code, err, output = distill_data(capsys, model, tmp_path, data)
    assert code == 2, err
    line = one_error_line(err)
    assert all(word in line for word in words), line
    assert not output.exists()                                    # nothing written


@pytest.mark.parametrize("args,words", [
    (["--teacher", "no-such-model"], ["unknown model 'no-such-model'", "known names"]),
    (["--teacher", "./no/such/dir"], ["does not exist", "pass an existing directory"]),
    (["--objective", "kdd"], ["unknown objective 'kdd'", "did you mean 'kd'"]),
    (["--recipe", "no/such_recipe"], ["neither a file nor a shipped recipe", "minillm recipes list"]),
    (["train.lrr=1"], ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    (["trainn.lr=1"], ["unknown key 'trainn'", "did you mean 'train'"]),
    (["--objective", "kd", "objective.ratioo=1"], ["unknown option 'objective.ratioo'", "objective.ratio"]),
    (["train.max_bad_steps=-1"], ["train.max_bad_steps", "must be >= 0"]),
    (["trust_remote_code=maybe"], ["trust_remote_code", "true or false"]),
])
def test_unknown_names_and_keys_through_the_cli(args, words, model, home, tmp_path, capsys):
    output = tmp_path / "run"
    code, _, err = run_cli(capsys, "distill", "--teacher", model, "--student", model, "--output-dir", output,
                           "--no-progress", *args)
    assert code == 2, err
    line = one_error_line(err)
    assert all(word in line for word in words), line
    assert not output.exists()


def test_bad_recipe_files_through_the_cli(tmp_path, capsys):
    cases = {
        "syntax.yaml": (b"train:\n  lr: [1e-4\n", ["syntax.yaml:", "invalid YAML"]),
        "latin1.yaml": (b"teacher: caf\xe9\n", ["cannot read recipe"]),
        "list.yaml": (b"- 1\n- 2\n", ["must be a mapping"]),
        "recursive.yaml": (b"train: &x {lr: *x}\n", ["refers to a mapping that contains it"]),
        "laughs.yaml": (("a0: &a0 {x: 1}\n" + "".join(   # aliases of aliases: 9^10 mappings if expanded
            f"a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}\n" for i in range(1, 11))).encode(),
            ["more than 100000 mappings"]),
        "control.yaml": (b"teacher: a\x03b\n", ["control.yaml:1", "not allowed"]),
        "unknown.yaml": (b"train:\n  learning_rate: 1e-4\n", ["unknown.yaml:2", "did you mean 'train.lr'"]),
        "duplicate.yaml": (b"train:\n  lr: 1e-4\n  lr: 2e-4\n", ["duplicate.yaml:3", "duplicate key 'train.lr'"]),
    }
    for name, (content, words) in cases.items():
        recipe = tmp_path / name
        recipe.write_bytes(content)
        code, _, err = run_cli(capsys, "distill", "--recipe", recipe, "--print-config")
        assert code == 2, (name, err)
        line = one_error_line(err)
        assert all(word in line for word in words), (name, line)


def test_unknown_evaluation_suite_is_one_line():
    from minillm_cli.plugins import get_evaluator

    with pytest.raises(MinillmError) as info:
        get_evaluator("no-such-suite")
    assert "unknown evaluator 'no-such-suite'" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory):
    from test_convert import write_tiny_gguf

    return write_tiny_gguf(tiny_models("llama", seed=1), tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.mark.parametrize("keep", [0, 3, 24, 0.25, 0.5, 0.9, -1])
def test_truncated_gguf_is_one_line(tiny_gguf, tmp_path, keep):
    from minillm_cli.models.load import resolve_model

    data = tiny_gguf.read_bytes()
    size = keep if isinstance(keep, int) and keep >= 0 else (len(data) - 1 if keep == -1 else int(len(data) * keep))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:size])
    with pytest.raises(MinillmError) as info:
        resolve_model(str(cut))
    message = str(info.value)
    assert "\n" not in message and "cut.gguf" in message
    assert "truncated or corrupt" in message or "does not describe a complete model" in message
    assert "download or convert it again" in message


def test_truncated_gguf_through_the_cli(tiny_gguf, home, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-100])
    code, _, err = run_cli(capsys, "distill", "--teacher", cut, "--output-dir", tmp_path / "run", "--no-progress")
    assert code == 2
    assert "truncated or corrupt" in one_error_line(err)
    code, _, err = run_cli(capsys, "convert", "gguf", cut, tmp_path / "converted")
    assert code == 2 and "truncated or corrupt" in one_error_line(err)
    assert not (tmp_path / "converted").exists() and not (tmp_path / "run").exists()


def test_bad_input_with_overwrite_keeps_the_earlier_run(model, home, tmp_path, capsys):
    """--overwrite replaces an earlier run only once the new one's models and data have loaded."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"{i}"}) + "\n" for i in range(12)))
    code, err, output = distill_data(capsys, model, tmp_path, good)
    assert code == 0, err
    before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "a", "output": \n')
    code, err, _ = distill_data(capsys, model, tmp_path, bad, "--overwrite")
    assert code == 2 and "invalid JSON" in one_error_line(err)
    after = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    assert after == before


# --- property-based: random and mutated data files ---------------------------------------------------------------

VALID = {
    ".jsonl": b'{"instruction": "Say hi", "input": "", "output": "hi"}\n{"instruction": "Add", "input": "2+2", "output": ["4", "four"]}\n',
    ".json": b'[{"instruction": "Say hi", "input": "", "output": "hi"}, {"question": "Add", "context": "2+2", "answer": "4"}]',
    ".csv": b'instruction,input,output\nSay hi,,hi\n"Add, please","2+2","4\nfour"\n',
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("insert"), st.integers(0, 400), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), st.integers(0, 400), st.integers(1, 8)),
    st.tuples(st.just("rename"), st.sampled_from(["instruction", "input", "output"]), st.text(max_size=8)),
    st.tuples(st.just("duplicate-line"), st.integers(0, 5)),
)


def mutate(data: bytes, mutations) -> bytes:
    for mutation in mutations:
        kind = mutation[0]
        at = mutation[1] % (len(data) + 1) if isinstance(mutation[1], int) else 0
        if kind == "flip" and data:
            at = at % len(data)
            data = data[:at] + bytes([data[at] ^ mutation[2]]) + data[at + 1:]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + mutation[2] + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + mutation[2]:]
        elif kind == "rename":
            data = data.replace(mutation[1].encode(), mutation[2].encode("utf-8", "surrogatepass"))
        elif kind == "duplicate-line":
            lines = data.split(b"\n")
            line = lines[mutation[1] % len(lines)]
            data = b"\n".join(lines + [line])
    return data


def load_cleanly(path: Path) -> None:
    """load_instructions either returns examples or raises a one-line MinillmError."""
    from minillm_cli.data.instructions import InstructionExample, load_instructions

    try:
        examples = load_instructions(path)
    except MinillmError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip(), repr(str(exc))
        return
    assert all(isinstance(e, InstructionExample) and isinstance(e.instruction, str) for e in examples)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(suffix=st.sampled_from(sorted(VALID)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_data_files_load_or_fail_cleanly(tmp_path_factory, suffix, mutations):
    path = tmp_path_factory.mktemp("mutated", numbered=True) / f"data{suffix}"
    path.write_bytes(mutate(VALID[suffix], mutations))
    TRIED["mutated data files"] = TRIED.get("mutated data files", 0) + 1
    load_cleanly(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.dictionaries(st.sampled_from(["instruction", "input", "output", "prompt", "response",
                                                          "question", "answer", "x"]), JSON_VALUES, max_size=4),
                        max_size=4),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_records_load_or_fail_cleanly(tmp_path_factory, records, suffix):
    path = tmp_path_factory.mktemp("records", numbered=True) / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    TRIED["random record files"] = TRIED.get("random record files", 0) + 1
    load_cleanly(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_random_bytes_load_or_fail_cleanly(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes", numbered=True) / f"data{suffix}"
    path.write_bytes(data)
    TRIED["random byte files"] = TRIED.get("random byte files", 0) + 1
    load_cleanly(path)


@pytest.fixture(scope="module")
def parquet_bytes(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("parquet") / "d.parquet"
    pq.write_table(pa.table({"instruction": ["Say hi", "Add"], "output": ["hi", "4"]}), path)
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION.filter(lambda m: m[0] in ("flip", "truncate", "delete")), min_size=1, max_size=3))
def test_mutated_parquet_loads_or_fails_cleanly(tmp_path_factory, parquet_bytes, mutations):
    path = tmp_path_factory.mktemp("parquet-mutated", numbered=True) / "data.parquet"
    path.write_bytes(mutate(parquet_bytes, mutations))
    TRIED["mutated parquet files"] = TRIED.get("mutated parquet files", 0) + 1
    load_cleanly(path)


# --- property-based: random and mutated recipes -------------------------------------------------------------------

RECIPE = b"""# minillm distill --recipe this.yaml
teacher: smollm2-135m-instruct
student_layers: 6
objective: {name: kd, ratio: 0.5}
data:
  train: default
  max_prompt_tokens: 256
train:
  lr: 5e-4
  betas: [0.9, 0.95]
  schedule: cosine
  max_bad_steps: 5
checkpoint: {every: 40, keep: 2}
"""


def config_cleanly(path: Path) -> None:
    from minillm_cli.config.recipes import dump_config, load_config

    try:
        config, options = load_config(path)
    except MinillmError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip(), repr(str(exc))
        return
    dump_config(config, options)   # a config that loads can be written back


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_recipes_load_or_fail_cleanly(tmp_path_factory, mutations):
    path = tmp_path_factory.mktemp("recipe", numbered=True) / "recipe.yaml"
    path.write_bytes(mutate(RECIPE, mutations))
    TRIED["mutated recipes"] = TRIED.get("mutated recipes", 0) + 1
    config_cleanly(path)


def _recipe_keys():
    from minillm_cli.config.recipes import config_keys as _leaves

    return [".".join(path) for path in _leaves()] + ["objective.name", "objective.ratio", "objective", "train",
                                                     "nonsense", "train.nonsense"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.sampled_from(_recipe_keys()), JSON_VALUES), max_size=6))
def test_random_recipe_values_load_or_fail_cleanly(tmp_path_factory, entries):
    import yaml

    tree: dict = {}
    for dotted, value in entries:
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[last] = value
    path = tmp_path_factory.mktemp("recipe-random", numbered=True) / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    TRIED["random recipes"] = TRIED.get("random recipes", 0) + 1
    config_cleanly(path)


# --- a few mutated inputs through the CLI -------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_recipes_through_the_cli(tmp_path_factory, capsys, mutations):
    path = tmp_path_factory.mktemp("cli-recipe", numbered=True) / "recipe.yaml"
    path.write_bytes(mutate(RECIPE, mutations))
    TRIED["mutated recipes through the CLI"] = TRIED.get("mutated recipes through the CLI", 0) + 1
    code, out, err = run_cli(capsys, "distill", "--recipe", path, "--print-config")
    assert code in (0, 2), err
    if code == 2:
        one_error_line(err)
        assert out == ""


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_data_through_the_cli(tmp_path_factory, capsys, model, mutations):
    root = tmp_path_factory.mktemp("cli-data", numbered=True)
    os.environ["MINILLM_HOME"] = str(root / "home")
    data = root / "data.jsonl"
    # Enough examples for one batch, then mutated: many mutations still leave a loadable file.
    data.write_bytes(mutate(VALID[".jsonl"] * 4, mutations))
    TRIED["mutated data files through the CLI"] = TRIED.get("mutated data files through the CLI", 0) + 1
    code, err, output = distill_data(capsys, model, root, data)
    assert code in (0, 2), err
    if code == 2:
        one_error_line(err)
        assert not output.exists()


def test_report_how_many_inputs_were_tried():
    """Runs last in this module: the counts for the record (pytest -s shows them)."""
    print("bad-input property tests tried:", json.dumps(TRIED))
    if TRIED:
        assert sum(TRIED.values()) >= 100
