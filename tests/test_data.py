"""minillm_cli.data: loaders, field mapping, errors, splitting, prompt templates, tokenisation and packing."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import minillm_cli as data  # noqa: E402  (the package folder holds resources/)
from minillm_cli.data.instructions import FieldMap, InstructionExample, load_instructions  # noqa: E402
from minillm_cli.data.prompts import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT, format_prompt  # noqa: E402
from minillm_cli.data.splits import split_examples  # noqa: E402
from minillm_cli.data.texts import load_texts, pack_texts  # noqa: E402
from minillm_cli.data.tokenization import tokenize_examples, tokenize_prompts  # noqa: E402
from minillm_cli.errors import MinillmError  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Red.", "category": "open_qa"},
    {"instruction": "Summarise.", "input": "Cats are animals.", "output": "Cats: animals.", "category": "summ"},
    {"instruction": "Add.", "input": "2 + 2", "output": "4", "category": "math"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from minillm_cli.testing import make_tiny_tokenizer

    return make_tiny_tokenizer()


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def check_records(examples, records=RECORDS):
    assert [e.instruction for e in examples] == [r["instruction"] for r in records]
    assert [e.input for e in examples] == [r["input"] for r in records]
    assert [e.output for e in examples] == [r["output"] for r in records]
    assert [e.references for e in examples] == [[r["output"]] for r in records]
    assert examples[0].fields == records[0]


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(MinillmError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------- loaders


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n   \n" + "".join(json.dumps(r) + "\n" for r in RECORDS[1:]))
    check_records(load_instructions(path))
    check_records(load_instructions(str(path)))


def test_json_list_and_data_object(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(RECORDS, indent=2))
    (tmp_path / "obj.json").write_text(json.dumps({"data": RECORDS, "version": 1}))
    check_records(load_instructions(tmp_path / "list.json"))
    check_records(load_instructions(tmp_path / "obj.json"))


def test_json_file_holding_json_lines(tmp_path):
    check_records(load_instructions(write_jsonl(tmp_path / "lines.json", RECORDS)))


def test_csv(tmp_path):
    check_records(load_instructions(write_csv(tmp_path / "data.csv", RECORDS)))


def test_parquet(tmp_path):
    check_records(load_instructions(write_parquet(tmp_path / "data.parquet", RECORDS)))


def test_directory_with_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    write_csv(tmp_path / "valid.csv", RECORDS[:1])
    check_records(load_instructions(tmp_path))   # default split: train
    check_records(load_instructions(tmp_path, split="valid"), RECORDS[:1])
    message = error_of(load_instructions, tmp_path, split="test")
    assert "split 'test'" in message and "train.jsonl" in message and "valid.csv" in message


def test_directory_with_hub_style_shards(tmp_path):
    (tmp_path / "data").mkdir()
    write_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", RECORDS[:2])
    write_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", RECORDS[2:])
    check_records(load_instructions(tmp_path))


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS + [{"broken": True}])
    assert [e.output for e in load_instructions(path, limit=2)] == ["Red.", "Cats: animals."]
    assert load_instructions(path, limit=0) == []
    assert "limit" in error_of(load_instructions, path, limit=-1)


# ---------------------------------------------------------------------------------------------------- fields


def test_dolly_fields_detected(tmp_path):
    dolly = [{"instruction": "Who?", "context": "Nixon was president.", "response": "Nixon.", "category": "qa"}]
    [example] = load_instructions(write_jsonl(tmp_path / "dolly.jsonl", dolly))
    assert (example.instruction, example.input, example.output) == ("Who?", "Nixon was president.", "Nixon.")
    assert example.fields == dolly[0]


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Say hi.", "completion": "Hi."},
        {"question": "Say hi.", "answer": "Hi."},
        {"instruction": "Say hi.", "output": "Hi."},   # no input field: ""
        {"instruction": "Say hi.", "input": None, "output": "Hi."},   # null input: ""
    ],
)
def test_other_field_names(tmp_path, record):
    [example] = load_instructions(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert (example.instruction, example.input, example.output) == ("Say hi.", "", "Hi.")


def test_explicit_field_map_wins(tmp_path):
    record = {"instruction": "ignored", "question": "Q?", "output": "ignored", "gold": "A.", "context": "C."}
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    [example] = load_instructions(path, fields="instruction=question, output=gold")
    assert (example.instruction, example.input, example.output) == ("Q?", "C.", "A.")
    [example] = load_instructions(path, fields={"output": "gold", "input": "question"})
    assert (example.instruction, example.input, example.output) == ("ignored", "Q?", "A.")
    [example] = load_instructions(path, fields=FieldMap(instruction="question", input="nothing", output="gold"))
    assert (example.instruction, example.input, example.output) == ("Q?", "", "A.")


def test_field_map_parse():
    assert FieldMap.parse("instruction=question,output=answer") == FieldMap("question", "input", "answer")
    assert FieldMap.parse({"input": "context"}) == FieldMap(input="context")
    assert FieldMap.parse(None) == FieldMap()
    assert FieldMap.parse("") == FieldMap()
    message = error_of(FieldMap.parse, "instruction=question,outptu=answer")
    assert "'outptu'" in message and "instruction" in message and "input" in message and "output" in message
    assert "key=field" in error_of(FieldMap.parse, "question")
    assert "twice" in error_of(FieldMap.parse, "output=a,output=b")


def test_list_references(tmp_path):
    record = {"instruction": "Rewrite.", "input": "x", "output": ["first", "second"]}
    [example] = load_instructions(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert example.references == ["first", "second"]
    assert example.output == "first"
    assert InstructionExample("i", "", []).output == ""


# ---------------------------------------------------------------------------------------------------- errors


def jsonl_with_bad_line_3(tmp_path, line: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + line + "\n" + json.dumps(RECORDS[1]) + "\n")
    return path


def test_invalid_json_line(tmp_path):
    message = error_of(load_instructions, jsonl_with_bad_line_3(tmp_path, '{"instruction": "a" "output": "b"}'))
    assert "data.jsonl:3: invalid JSON (Expecting ',' delimiter" in message


def test_missing_output_field(tmp_path):
    message = error_of(load_instructions, jsonl_with_bad_line_3(tmp_path, '{"instruction": "a", "answr": "b"}'))
    assert "data.jsonl:3: missing field 'output' (fields present: instruction, answr;" in message
    assert "--fields output=answer" in message


def test_missing_instruction_field(tmp_path):
    message = error_of(load_instructions, jsonl_with_bad_line_3(tmp_path, '{"q": "a", "output": "b"}'))
    assert "data.jsonl:3: missing field 'instruction' (fields present: q, output;" in message


def test_missing_explicitly_mapped_field(tmp_path):
    path = jsonl_with_bad_line_3(tmp_path, '{"instruction": "a", "output": "b"}')
    assert "data.jsonl:1: missing field 'gold'" in error_of(load_instructions, path, fields="output=gold")


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"instruction": "a", "output": 3}', "data.jsonl:3: field 'output' must be a string or a list of strings, got int"),
        ('{"instruction": "a", "output": ["x", 1]}', "data.jsonl:3: field 'output' must be a string or a list of strings, got list"),
        ('{"instruction": "a", "output": null}', "data.jsonl:3: field 'output' must be a string or a list of strings, got null"),
        ('{"instruction": ["a"], "output": "b"}', "data.jsonl:3: field 'instruction' must be a string, got list"),
        ('{"instruction": "a", "input": 5, "output": "b"}', "data.jsonl:3: field 'input' must be a string, got int"),
        ('{"instruction": "a", "output": []}', "data.jsonl:3: field 'output' is an empty list"),
        ('["instruction", "output"]', "data.jsonl:3: expected a JSON object, got array"),
    ],
)
def test_wrong_types(tmp_path, line, expected):
    assert expected in error_of(load_instructions, jsonl_with_bad_line_3(tmp_path, line))


def test_csv_error_uses_physical_line(tmp_path):
    path = tmp_path / "data.csv"
    # The second record's quoted input spans lines 3-4, so the third record starts on physical line 5.
    path.write_text('instruction,input,answr\nA,,x\nB,"two\nlines",y\nC,,z\n', encoding="utf-8")
    message = error_of(load_instructions, path)
    assert "data.csv:2: missing field 'output' (fields present: instruction, input, answr;" in message
    examples = load_instructions(path, fields="output=answr")
    assert [e.input for e in examples] == ["", "two\nlines", ""]
    path.write_text('instruction,output\nA,x\nB,"y\nz"\nC\n', encoding="utf-8")
    assert "data.csv:5: 1 columns, but the header has 2" in error_of(load_instructions, path)


def test_json_array_error_names_item(tmp_path):
    records = [dict(r) for r in RECORDS]
    records[2]["output"] = 7
    (tmp_path / "data.json").write_text(json.dumps(records))
    assert "data.json: item 2: field 'output' must be a string" in error_of(load_instructions, tmp_path / "data.json")
    (tmp_path / "bad.json").write_text('[\n  {"instruction": "a",\n   "output": }\n]')
    assert "bad.json:3: invalid JSON (Expecting value" in error_of(load_instructions, tmp_path / "bad.json")
    (tmp_path / "scalar.json").write_text('{"rows": []}')
    assert "scalar.json: expected a JSON list of objects" in error_of(load_instructions, tmp_path / "scalar.json")


def test_parquet_error_names_row(tmp_path):
    path = write_parquet(tmp_path / "data.parquet", [{"instruction": "a", "answer": "b"}] * 2 + [{"instruction": "c", "answer": None}])
    assert "data.parquet: row 2: field 'answer' must be a string or a list of strings, got null" in error_of(load_instructions, path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert "junk.parquet: not a valid Parquet file" in error_of(load_instructions, tmp_path / "junk.parquet")


def test_missing_local_file_is_not_a_hub_lookup(tmp_path, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("hub lookup for a local path")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for source in ["nothere.jsonl", str(tmp_path / "nothere"), "./nothere", "a/b/c", tmp_path / "x"]:
        assert "file not found" in error_of(load_instructions, source)


def test_unsupported_suffix_and_split_on_file(tmp_path):
    (tmp_path / "data.txt").write_text("hello\n")
    assert "unsupported file type '.txt'" in error_of(load_instructions, tmp_path / "data.txt")
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    assert "split 'valid'" in error_of(load_instructions, path, split="valid")


# ---------------------------------------------------------------------------------------------------- hub


def test_hub_connection_error(monkeypatch):
    import datasets

    calls = []

    def offline(name, split=None, **kwargs):
        calls.append((name, split))
        raise ConnectionError("Couldn't reach 'someone/instructions' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = error_of(load_instructions, "someone/instructions", split="test")
    assert calls == [("someone/instructions", "test")]
    assert message.startswith("dataset 'someone/instructions' is not available offline; download it when online")
    assert "local JSONL/JSON/CSV/Parquet file with fields instruction, input, output" in message


def test_hub_network_error_in_chain(monkeypatch):
    import datasets

    class RequestsConnectionError(OSError):   # requests' ConnectionError is an OSError, not the builtin
        pass

    RequestsConnectionError.__name__ = "ConnectionError"

    def broken(name, split=None, **kwargs):
        try:
            raise RequestsConnectionError("Max retries exceeded")
        except OSError as exc:
            raise RuntimeError("something went wrong") from exc

    monkeypatch.setattr(datasets, "load_dataset", broken)
    assert "not available offline" in error_of(load_instructions, "tatsu-lab/alpaca")


def test_hub_rows(monkeypatch):
    import datasets

    dolly = [{"instruction": "Q", "context": "", "response": "A", "category": "qa"}, {"instruction": "Q2"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None: dolly)
    assert "databricks/databricks-dolly-15k: row 1: missing field 'output'" in error_of(
        load_instructions, "databricks/databricks-dolly-15k"
    )
    [example] = load_instructions("databricks/databricks-dolly-15k", limit=1)
    assert (example.instruction, example.input, example.output) == ("Q", "", "A")


def test_hub_real_offline_call():
    message = error_of(load_instructions, "minillm-test/no-such-dataset")
    assert "dataset 'minillm-test/no-such-dataset' is not available offline" in message


# ---------------------------------------------------------------------------------------------------- split


def examples_of(n):
    return [InstructionExample(f"instruction {i}", "", [f"output {i}"]) for i in range(n)]


def test_split_deterministic_disjoint_covering():
    examples = examples_of(50)
    first = split_examples(examples, valid=0.2, test=5, seed=3)
    again = split_examples(list(examples), valid=0.2, test=5, seed=3)
    assert first == again
    assert [len(first[k]) for k in ("train", "valid", "test")] == [35, 10, 5]
    ids = {k: {id(e) for e in v} for k, v in first.items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    assert ids["train"] | ids["valid"] | ids["test"] == {id(e) for e in examples}
    other = split_examples(examples, valid=0.2, test=5, seed=4)
    assert other["valid"] != first["valid"]
    # Each part keeps the input order.
    assert first["train"] == sorted(first["train"], key=examples.index)


def test_split_counts_and_fractions():
    examples = examples_of(20)
    assert len(split_examples(examples, valid=3)["valid"]) == 3
    assert len(split_examples(examples, valid=0.25)["valid"]) == 5
    assert len(split_examples(examples, valid=5.0)["valid"]) == 5   # a whole float >= 1 is a count
    assert len(split_examples(examples)["valid"]) == 2   # default 0.1
    assert len(split_examples(examples_of(4), valid=0.1)["valid"]) == 1   # never empty for a positive fraction
    assert split_examples(examples, valid=0, test=0)["train"] == examples
    assert split_examples([], valid=0.1)["train"] == []
    assert "cannot take 15 validation and 6 test" in error_of(split_examples, examples, valid=15, test=6)
    assert "fraction" in error_of(split_examples, examples, valid=1.5)
    assert "fraction" in error_of(split_examples, examples, valid=-0.1)
    assert "negative" in error_of(split_examples, examples, valid=-2)


def test_split_independent_of_hash_seed():
    code = (
        "from minillm_cli.data.splits import split_examples;"
        "s = split_examples([str(i) for i in range(30)], valid=0.2, test=3, seed=7);"
        "print(s['valid'], s['test'])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


# ---------------------------------------------------------------------------------------------------- prompts


def test_alpaca_templates_exact():
    assert ALPACA_PROMPT == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    )
    assert ALPACA_PROMPT_WITH_INPUT == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:\n"
    )
    assert format_prompt(InstructionExample("Say {hi}.", "", ["x"])) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay {hi}.\n\n### Response:\n"
    )
    assert format_prompt(InstructionExample("Add.", "2 + 2", ["4"]), "alpaca") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n"
        "### Input:\n2 + 2\n\n### Response:\n"
    )


def test_chat_format(tokenizer):
    assert format_prompt(InstructionExample("Add.", "2 + 2", ["4"]), "chat", tokenizer) == (
        "<|im_start|>user\nAdd.\n\n2 + 2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt(InstructionExample("Hi.", "", ["x"]), "chat", tokenizer) == (
        "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_format_errors(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = InstructionExample("Hi.", "", ["x"])
    assert "alpaca" in error_of(format_prompt, example, "chat", plain)
    assert "tokenizer" in error_of(format_prompt, example, "chat", None)
    message = error_of(format_prompt, example, "chatml")
    assert "unknown prompt format 'chatml'" in message and "alpaca" in message


# ---------------------------------------------------------------------------------------------------- tokens


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_tokenize_invariant(tokenizer):
    examples = [InstructionExample(r["instruction"], r["input"], [r["output"]]) for r in RECORDS]
    result = tokenize_examples(examples, tokenizer)
    eos = tokenizer.eos_token_id
    assert (result.dropped_long_prompt, result.truncated_responses) == (0, 0)
    assert [e.index for e in result.examples] == [0, 1, 2]
    for item, example in zip(result.examples, examples):
        prompt = format_prompt(example)
        assert item.prompt_ids == encode(tokenizer, prompt)
        assert item.prompt_ids + item.response_ids == encode(tokenizer, prompt + example.output) + [eos]
        assert item.response_ids[-1] == eos


def test_tokenize_boundary_merge_keeps_prompt_tokens():
    from minillm_cli.testing import make_tiny_tokenizer

    # An added token spanning the end of the prompt and the start of the output: encoding them together
    # would change the prompt's last tokens.
    tok = make_tiny_tokenizer(extra_tokens=(":\nOK",))
    example = InstructionExample("Say ok.", "", ["OK then"])
    prompt = format_prompt(example)
    together = encode(tok, prompt + example.output)
    assert together[: len(encode(tok, prompt))] != encode(tok, prompt)
    [item] = tokenize_examples([example], tok).examples
    assert item.prompt_ids == encode(tok, prompt)
    assert item.response_ids == encode(tok, "OK then") + [tok.eos_token_id]


def test_long_prompts_dropped_and_counted(tokenizer):
    examples = [
        InstructionExample("Hi.", "", ["a"]),
        InstructionExample("Hi.", "word " * 300, ["b"]),
        InstructionExample("Bye.", "", ["c"]),
    ]
    limit = len(encode(tokenizer, format_prompt(examples[0])))
    result = tokenize_examples(examples, tokenizer, max_prompt_tokens=limit + 1)
    assert result.dropped_long_prompt == 1
    assert [e.index for e in result.examples] == [0, 2]
    assert tokenize_examples(examples, tokenizer, max_prompt_tokens=None).dropped_long_prompt == 0
    ids, kept, dropped = tokenize_prompts(examples, tokenizer, prompt_format="alpaca", add_bos=False, max_prompt_tokens=limit + 1)
    assert (kept, dropped) == ([0, 2], 1)
    assert ids[0] == encode(tokenizer, format_prompt(examples[0]))


def test_max_response_tokens(tokenizer):
    examples = [InstructionExample("Hi.", "", ["red green blue " * 10]), InstructionExample("Hi.", "", ["Red."])]
    result = tokenize_examples(examples, tokenizer, max_response_tokens=5)
    assert result.truncated_responses == 1
    assert len(result.examples[0].response_ids) == 5
    assert result.examples[0].response_ids[-1] != tokenizer.eos_token_id
    assert result.examples[1].response_ids[-1] == tokenizer.eos_token_id


def test_add_bos(tokenizer):
    example = InstructionExample("Hi.", "", ["a"])
    plain = encode(tokenizer, format_prompt(example))
    [item] = tokenize_examples([example], tokenizer, add_bos=True).examples
    assert item.prompt_ids == [tokenizer.bos_token_id] + plain
    assert item.response_ids == tokenize_examples([example], tokenizer).examples[0].response_ids
    # BOS counts toward the prompt limit.
    assert tokenize_examples([example], tokenizer, add_bos=True, max_prompt_tokens=len(plain)).dropped_long_prompt == 1
    assert tokenize_examples([example], tokenizer, add_bos=False, max_prompt_tokens=len(plain)).dropped_long_prompt == 0
    ids, _, _ = tokenize_prompts([example], tokenizer, prompt_format="alpaca", add_bos=True, max_prompt_tokens=256)
    assert ids == [item.prompt_ids]


def test_tokenize_chat(tokenizer):
    example = InstructionExample("Add.", "2 + 2", ["4"])
    [item] = tokenize_examples([example], tokenizer, prompt_format="chat").examples
    prompt = format_prompt(example, "chat", tokenizer)
    assert item.prompt_ids == encode(tokenizer, prompt)
    assert item.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_tokenizer_without_eos(tokenizer):
    import copy

    broken = copy.deepcopy(tokenizer)
    broken.eos_token = None
    assert broken.eos_token_id is None
    assert "end-of-sequence" in error_of(tokenize_examples, examples_of(1), broken)
    assert "end-of-sequence" in error_of(pack_texts, ["a"], broken)


# ---------------------------------------------------------------------------------------------------- packing


def test_pack_texts(tokenizer):
    texts = ["The capital of France is Paris.", "Cats and dogs are animals.", "Water boils at one hundred degrees."]
    eos = tokenizer.eos_token_id
    stream = [t for text in texts for t in encode(tokenizer, text) + [eos]]
    chunks = pack_texts(texts, tokenizer, chunk_tokens=8)
    assert all(len(c) == 8 for c in chunks)
    assert len(chunks) == len(stream) // 8
    assert [t for c in chunks for t in c] == stream[: len(chunks) * 8]
    assert pack_texts(iter(texts), tokenizer, chunk_tokens=8) == chunks   # deterministic, any iterable
    kept = pack_texts(texts, tokenizer, chunk_tokens=8, drop_remainder=False)
    assert [t for c in kept for t in c] == stream
    assert len(kept[-1]) == len(stream) % 8 or len(stream) % 8 == 0
    assert pack_texts(texts, tokenizer, chunk_tokens=len(stream) + 1) == []
    no_eos = pack_texts(texts, tokenizer, chunk_tokens=4, add_eos=False, drop_remainder=False)
    assert eos not in [t for c in no_eos for t in c]
    assert pack_texts(["", "a", ""], tokenizer, chunk_tokens=100, drop_remainder=False) == [encode(tokenizer, "a") + [eos]]
    assert "chunk_tokens" in error_of(pack_texts, texts, tokenizer, chunk_tokens=0)


def test_load_texts(tmp_path, tokenizer):
    (tmp_path / "corpus.txt").write_text("First document.\n\nSecond document.\r\n  \nThird.\n", encoding="utf-8")
    assert list(load_texts(tmp_path / "corpus.txt")) == ["First document.", "Second document.", "Third."]
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a"}, {"text": "b", "id": 2}, {"body": "c"}])
    message = error_of(list, load_texts(tmp_path / "corpus.jsonl"))
    assert "corpus.jsonl:3: missing field 'text' (fields present: body" in message
    write_jsonl(tmp_path / "body.jsonl", [{"body": "x"}, {"body": "y"}])
    assert list(load_texts(tmp_path / "body.jsonl", text_field="body")) == ["x", "y"]
    write_parquet(tmp_path / "corpus.parquet", [{"text": "p"}, {"text": "q"}])
    assert list(load_texts(tmp_path / "corpus.parquet")) == ["p", "q"]
    assert "file not found" in error_of(load_texts, tmp_path / "none.txt")
    message = error_of(load_texts, "minillm-test/no-such-corpus")
    assert "dataset 'minillm-test/no-such-corpus' is not available offline" in message
    assert len(pack_texts(load_texts(tmp_path / "corpus.txt"), tokenizer, chunk_tokens=4)) > 0


# ---------------------------------------------------------------------------------------------------- resources


def resource(name):
    path = Path(data.__file__).parent / "resources" / name
    if not path.is_file():
        pytest.skip(f"resources/{name} does not exist yet")
    return path


def test_default_instructions():
    path = resource("default_instructions.jsonl")
    examples = load_instructions("default")
    assert examples and all(e.instruction and e.output for e in examples)
    assert len(examples) == len(load_instructions(path))
    assert "category" in examples[0].fields


def test_default_corpus(tokenizer):
    resource("default_corpus.txt")
    texts = list(load_texts("default"))
    assert texts and all(t.strip() for t in texts)
    assert pack_texts(texts, tokenizer, chunk_tokens=64)


def test_shared_dolly_valid():
    path = SHARED_DATA / "dolly" / "valid.jsonl"
    if not path.is_file():
        pytest.skip("shared/data/dolly/valid.jsonl is not present")
    examples = load_instructions(path)
    assert len(examples) == 1000
    assert all(isinstance(e.output, str) and e.instruction for e in examples)
    assert any(e.input for e in examples) and any(not e.input for e in examples)
    splits = split_examples(examples, valid=100, seed=0)
    assert (len(splits["train"]), len(splits["valid"])) == (900, 100)


def test_a_csv_header_cell_with_a_line_break_keeps_the_error_on_one_line(tmp_path):
    """A quoted header cell may span lines; the column-count error names it escaped, on one line (found by the
    mutation test of test_bad_input)."""
    from minillm_cli.data.records import file_records

    path = tmp_path / "data.csv"
    path.write_text('"instr\nuction",input,output\nSay hi,,hi\nAdd, please", 2+2, 4\nfour\n')
    with pytest.raises(MinillmError) as info:
        list(file_records(path, "data.csv"))
    message = str(info.value)
    assert "\n" not in message and "instr\\nuction" in message and "columns, but the header has 3" in message


def test_a_corpus_may_join_several_fields_of_instruction_records(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"instruction": "Name a colour.", "input": "", "output": "Blue."}\n'
                    '{"instruction": "Summarise.", "input": "Some context.", "output": "Short."}\n')
    texts = list(load_texts(path, text_field=["instruction", "input", "output"]))
    assert texts == ["Name a colour.\n\nBlue.", "Summarise.\n\nSome context.\n\nShort."]   # empty fields skipped
    with pytest.raises(MinillmError, match="missing field 'context'.*data.lm_text_fields"):
        list(load_texts(path, text_field=["instruction", "context"]))
