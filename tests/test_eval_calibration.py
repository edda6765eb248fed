"""Calibration: ECE on predictions of known calibration, the suite loader (three formats, one-line errors), and
choice scoring on a tiny model against a brute-force computation of the choices' log-probabilities."""

import json
import math

import pytest
import torch

from minillm_cli.errors import MinillmError
from minillm_cli.evaluation.calibration import (
    BOOLQ_INSTRUCTION,
    SST2_INSTRUCTION,
    ChoiceExample,
    choice_logprobs,
    expected_calibration_error,
    load_choice_suite,
    reliability_diagram,
    score_choices,
)

# --------------------------------------------------------------------------------------------------------------
# ECE


def test_perfectly_calibrated_predictions_have_zero_ece():
    # 80% confident and right 8 times out of 10; 30% confident and right 3 times out of 10.
    confidences = [0.8] * 10 + [0.3] * 10
    correct = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    result = expected_calibration_error(confidences, correct)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    assert result["accuracy"] == pytest.approx(11 / 20)
    # 0.3 lies on an edge: bins are right-closed, so it belongs to (0.2, 0.3], and 0.8 to (0.7, 0.8].
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["lower"], b["upper"], b["count"]) for b in filled] == [(0.2, 0.3, 10), (0.7, 0.8, 10)]


def test_always_confident_and_half_right_has_ece_one_half():
    result = expected_calibration_error([1.0] * 6, [True, False] * 3)
    assert result["ece"] == pytest.approx(0.5)
    assert result["mce"] == pytest.approx(0.5)
    assert result["bins"][-1]["count"] == 6 and result["bins"][-1]["accuracy"] == 0.5


def test_hand_computed_multi_bin_ece():
    confidences = [0.15, 0.15, 0.55, 0.55, 0.95]
    correct = [True, False, True, True, False]
    # (0.1, 0.2]: 2 items, acc 0.5, conf 0.15 -> 2/5 * 0.35 = 0.14
    # (0.5, 0.6]: 2 items, acc 1.0, conf 0.55 -> 2/5 * 0.45 = 0.18
    # (0.9, 1.0]: 1 item,  acc 0.0, conf 0.95 -> 1/5 * 0.95 = 0.19
    result = expected_calibration_error(confidences, correct, bins=10)
    assert result["ece"] == pytest.approx(0.14 + 0.18 + 0.19)
    assert result["mce"] == pytest.approx(0.95)
    assert [b["count"] for b in result["bins"]] == [0, 2, 0, 0, 0, 2, 0, 0, 0, 1]
    empty = result["bins"][0]
    assert empty["accuracy"] is None and empty["confidence"] is None
    # Two bins: [0, 0.5] holds the two 0.15s, (0.5, 1] the rest (acc 2/3, conf 0.6833).
    two = expected_calibration_error(confidences, correct, bins=2)
    assert two["ece"] == pytest.approx(2 / 5 * 0.35 + 3 / 5 * abs(2 / 3 - (0.55 + 0.55 + 0.95) / 3))


def test_ece_rejects_bad_input():
    with pytest.raises(MinillmError, match="at least one"):
        expected_calibration_error([], [])
    with pytest.raises(MinillmError, match="2 confidences but 1"):
        expected_calibration_error([0.5, 0.6], [True])
    with pytest.raises(MinillmError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(MinillmError, match="bins"):
        expected_calibration_error([0.5], [True], bins=0)


def test_reliability_diagram_writes_a_png(tmp_path):
    result = expected_calibration_error([0.15, 0.15, 0.55, 0.55, 0.95], [True, False, True, True, False])
    path = reliability_diagram(result, tmp_path / "plots" / "reliability.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000
    assert not list(path.parent.glob(".*tmp*"))


# --------------------------------------------------------------------------------------------------------------
# The suite loader


def _write(tmp_path, records, name="suite.jsonl"):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loader_reads_the_three_formats(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "Is this review positive or negative? Great film.", "choices": ["positive", "negative"], "label": 0},
        {"prompt": "Pick the colour.", "input": "sky", "choices": ["blue", "red", "green"], "label": "blue"},
        "",
        {"sentence": "a dull , lifeless movie ", "label": 0, "idx": 7},
        {"question": "is paris the capital of france", "passage": "Paris is the capital of France.", "answer": True},
        {"question": "is the sea green?", "passage": "The sea is blue.", "label": 0},
    ])
    examples = load_choice_suite(path)
    assert [e.label for e in examples] == [0, 0, 0, 1, 0]
    assert examples[1].choices == ["blue", "red", "green"] and examples[1].input == "sky"
    sst2, boolq = examples[2], examples[3]
    assert (sst2.prompt, sst2.input, sst2.choices) == (SST2_INSTRUCTION, "a dull , lifeless movie", ["negative", "positive"])
    assert boolq.prompt == BOOLQ_INSTRUCTION and boolq.choices == ["no", "yes"]
    assert boolq.input == "Paris is the capital of France.\n\nQuestion: is paris the capital of france?"
    assert examples[3].source == f"{path}:5"   # blank lines are skipped but still counted


@pytest.mark.parametrize("record, message", [
    ('{"prompt": "x", "choices": ["a", "b"], "label": 0', "invalid JSON"),
    ({"prompt": "x", "choices": ["a", "b"]}, "missing field 'label'"),
    ({"prompt": "x", "label": 0}, "missing field 'choices'"),
    ({"prompt": "x", "choices": "a,b", "label": 0}, "field 'choices' must be a list of strings"),
    ({"prompt": "x", "choices": ["a"], "label": 0}, "at least two"),
    ({"prompt": "x", "choices": ["a", "a"], "label": 0}, "same answer twice"),
    ({"prompt": "x", "choices": ["a", "b"], "label": 2}, "field 'label' is 2, but there are 2 choices"),
    ({"prompt": "x", "choices": ["a", "b"], "label": "c"}, "field 'label' must be a choice index"),
    ({"prompt": 3, "choices": ["a", "b"], "label": 0}, "field 'prompt' must be a string"),
    ({"prompt": " ", "choices": ["a", "b"], "label": 0}, "field 'prompt' is empty"),
    ({"sentence": "fine", "label": -1}, "unlabelled"),
    ({"sentence": "fine", "label": 3}, "field 'label' must be 0"),
    ({"question": "q", "passage": "p"}, "missing field 'answer'"),
    ({"question": "q", "passage": "p", "answer": "maybe"}, "field 'answer' must be true or false"),
    ({"text": "hello", "label": 1}, "unknown record format (fields present: text, label)"),
    ([1, 2], "expected a JSON object"),
])
def test_loader_errors_name_file_line_and_field(tmp_path, record, message):
    good = {"prompt": "x", "choices": ["a", "b"], "label": 1}
    path = _write(tmp_path, [good, record])
    with pytest.raises(MinillmError) as caught:
        load_choice_suite(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:2:"), text
    assert message in text
    assert "\n" not in text


def test_loader_file_problems(tmp_path):
    with pytest.raises(MinillmError, match="file not found"):
        load_choice_suite(tmp_path / "missing.jsonl")
    with pytest.raises(MinillmError, match="no examples"):
        load_choice_suite(_write(tmp_path, [""], "empty.jsonl"))


def test_csv_suites_read_string_labels(tmp_path):
    path = tmp_path / "sst2.csv"
    path.write_text("sentence,label\nlovely music,1\nawful,0\n", encoding="utf-8")
    assert [e.label for e in load_choice_suite(path)] == [1, 0]


# --------------------------------------------------------------------------------------------------------------
# Scoring on a tiny model


EXAMPLES = [
    ChoiceExample("Is this review positive or negative? The film was wonderful.", ["positive", "negative"], 0),
    ChoiceExample(SST2_INSTRUCTION, ["negative", "positive"], 1, input="The music was lovely."),
    ChoiceExample("Pick the animal.", ["cats and dogs", "water", "Paris"], 0),
    ChoiceExample(BOOLQ_INSTRUCTION, ["no", "yes"], 1, input="Water boils at one hundred degrees.\n\nQuestion: does water boil?"),
]


def _brute_force_logprob(model, tokenizer, example, choice):
    """log P(choice | formatted prompt), one unpadded sequence, token by token in float64."""
    from minillm_cli.data.prompts import format_prompt

    prompt = tokenizer(format_prompt({"instruction": example.prompt, "input": example.input}), add_special_tokens=False)["input_ids"]
    full = tokenizer(format_prompt({"instruction": example.prompt, "input": example.input}) + choice,
                     add_special_tokens=False)["input_ids"]
    assert full[:len(prompt)] == prompt          # these prompts end with a newline: no merge across the boundary
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    return math.fsum(float(log_probs[t - 1, full[t]]) for t in range(len(prompt), len(full)))


def test_choice_logprobs_match_brute_force(teacher, tokenizer):
    got = choice_logprobs(teacher, tokenizer, EXAMPLES, batch_size=3)   # batches cut across examples
    assert [len(row) for row in got] == [len(e.choices) for e in EXAMPLES]
    for example, row in zip(EXAMPLES, got):
        expected = [_brute_force_logprob(teacher, tokenizer, example, choice) for choice in example.choices]
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-5)

    confidences, correct = score_choices(teacher, tokenizer, EXAMPLES, batch_size=5)
    for example, row, confidence, right in zip(EXAMPLES, got, confidences, correct):
        top = max(row)
        probs = [math.exp(v - top) / sum(math.exp(w - top) for w in row) for v in row]
        best = probs.index(max(probs))
        assert confidence == pytest.approx(probs[best], rel=1e-9)
        assert right == (best == example.label)
        assert 1 / len(row) <= confidence <= 1.0


def test_scoring_does_not_depend_on_batching_or_mode(student, tokenizer):
    student.train()
    one = choice_logprobs(student, tokenizer, EXAMPLES, batch_size=1)
    assert student.training                     # the caller's mode is restored
    many = choice_logprobs(student, tokenizer, EXAMPLES, batch_size=16)
    for a, b in zip(one, many):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    chat = choice_logprobs(student, tokenizer, EXAMPLES[:1], prompt_format="chat")
    assert chat[0] != pytest.approx(one[0])        # a different template is a different prompt
    with pytest.raises(MinillmError, match="unknown prompt format"):
        score_choices(student, tokenizer, EXAMPLES, prompt_format="vicuna")
