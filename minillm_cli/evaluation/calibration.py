"""Calibration: expected calibration error on zero-shot multiple-choice prompts (docs/method.md §4; MiniLLM,
Gu et al. 2023, which measures ECE on SST-2 and BoolQ zero-shot).

Scoring. Each choice is scored by the model as a continuation of the prompt (formatted with the same prompt
template as generation, ``data.prompts.format_prompt``): log P(choice | prompt) = sum of the
log-probabilities of the choice's tokens, tokenised exactly as a training response is
(``data.tokenization.tokenize_examples``: the tokens of prompt + choice after the prompt's own, without the
end-of-sequence token). A softmax over the choices' log probabilities gives the model's distribution
restricted to the label set; its argmax is the prediction and its probability the confidence. The sum (not the
mean) over tokens is the probability of the whole label string, so multi-token labels are not favoured by
length normalisation; with the single-word labels of SST-2 and BoolQ the two agree.

ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3): the confidences fall into ``bins``
equal-width bins B_m = ((m-1)/M, m/M] (a confidence of exactly 0 goes into the first), and

    ECE = sum_m |B_m| / n * | acc(B_m) - conf(B_m) |

with acc the fraction of correct predictions and conf the mean confidence in the bin. It is a fraction in
[0, 1] (not a percentage).

Suite files are JSON Lines (also .json lists, .csv and .parquet, read by ``data``'s loaders), one example per
record, in any of three formats, told apart per record by their fields:

- native: ``{"prompt": "...", "choices": ["positive", "negative"], "label": 0}``. ``label`` is the index of the
  correct choice, or the correct choice's text. An optional ``"input"`` is shown as the prompt template's
  input section. Choices are scored verbatim (no space is added: the templates end with a newline).
- SST-2 (GLUE's fields): ``{"sentence": "...", "label": 1}`` with 0 = negative, 1 = positive; the prompt is
  ``SST2_INSTRUCTION`` with the sentence as input, the choices ``["negative", "positive"]``.
- BoolQ: ``{"question": "...", "passage": "...", "answer": true}`` (or SuperGLUE's ``"label": 0/1``); the prompt
  is ``BOOLQ_INSTRUCTION`` with passage and question as input, the choices ``["no", "yes"]``.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import MinillmError

__all__ = [
    "BOOLQ_INSTRUCTION", "ChoiceExample", "SST2_INSTRUCTION", "choice_logprobs", "expected_calibration_error",
    "load_choice_suite", "reliability_diagram", "score_choices",
]

SST2_INSTRUCTION = "Is the sentiment of the following sentence positive or negative? Answer with one word."
SST2_CHOICES = ("negative", "positive")      # GLUE SST-2: label 0 = negative, 1 = positive
BOOLQ_INSTRUCTION = "Read the passage and answer the question with yes or no."
BOOLQ_CHOICES = ("no", "yes")                # label = int(answer)

_FORMATS_HINT = (
    "expected 'prompt', 'choices', 'label' (or SST-2's 'sentence', 'label', or BoolQ's 'question', 'passage', "
    "'answer')"
)


@dataclass
class ChoiceExample:
    """One zero-shot multiple-choice example: the prompt (the template's instruction), an optional input, the
    candidate answers and the index of the correct one. ``source`` is where it came from (file:line)."""

    prompt: str
    choices: list
    label: int
    input: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self):
        if len(self.choices) < 2:
            raise MinillmError(f"{self.source or 'example'}: needs at least two choices, got {len(self.choices)}")
        if not 0 <= self.label < len(self.choices):
            raise MinillmError(f"{self.source or 'example'}: label {self.label} is not a choice index")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def load_choice_suite(path) -> list:
    """The examples of a suite file (see the module docstring for the formats); one-line errors name the file,
    the line (or item / row) and the field."""
    from ..data.records import file_records

    file = Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise MinillmError(f"file not found: {path}" if not file.exists() else f"{path} is not a file")
    examples = [_to_choice_example(record, label) for label, record in file_records(file, str(path))]
    if not examples:
        raise MinillmError(f"{path}: no examples (one JSON object per line: {_FORMATS_HINT})")
    return examples


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if not required:
            return ""
        raise MinillmError(f"{where}: missing field '{key}' ({_FORMATS_HINT})")
    value = record[key]
    if not isinstance(value, str):
        raise MinillmError(f"{where}: field '{key}' must be a string, got {_type_name(value)}")
    if required and not value.strip():
        raise MinillmError(f"{where}: field '{key}' is empty")
    return value


def _integer(value):
    """An int from an int or a decimal string (CSV cells are strings); None otherwise. Booleans are not ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _to_choice_example(record: dict, where: str) -> ChoiceExample:
    if "prompt" in record:
        return _native(record, where)
    if "sentence" in record:
        return _sst2(record, where)
    if "question" in record and "passage" in record:
        return _boolq(record, where)
    present = ", ".join(map(str, record)) if record else "none"
    raise MinillmError(f"{where}: unknown record format (fields present: {present}); {_FORMATS_HINT}")


def _native(record: dict, where: str) -> ChoiceExample:
    prompt = _text(record, "prompt", where)
    input_text = _text(record, "input", where, required=False)
    if "choices" not in record:
        raise MinillmError(f"{where}: missing field 'choices' (a list of at least two answer strings)")
    choices = record["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise MinillmError(f"{where}: field 'choices' must be a list of strings, got {_type_name(choices)}")
    if len(choices) < 2:
        raise MinillmError(f"{where}: field 'choices' needs at least two answers, got {len(choices)}")
    if any(not c.strip() for c in choices):
        raise MinillmError(f"{where}: field 'choices' has an empty answer")
    if len(set(choices)) != len(choices):
        raise MinillmError(f"{where}: field 'choices' lists the same answer twice")
    if "label" not in record:
        raise MinillmError(f"{where}: missing field 'label' (the index of the correct choice, from 0)")
    raw = record["label"]
    if isinstance(raw, str) and raw in choices:
        label = choices.index(raw)
    else:
        label = _integer(raw)
        if label is None:
            raise MinillmError(
                f"{where}: field 'label' must be a choice index or one of the choices, got {raw!r}"
            )
    if not 0 <= label < len(choices):
        raise MinillmError(f"{where}: field 'label' is {label}, but there are {len(choices)} choices (0..{len(choices) - 1})")
    return ChoiceExample(prompt, list(choices), label, input_text, where)


def _sst2(record: dict, where: str) -> ChoiceExample:
    sentence = _text(record, "sentence", where)
    if "label" not in record:
        raise MinillmError(f"{where}: missing field 'label' (SST-2: 0 = negative, 1 = positive)")
    label = _integer(record["label"])
    if label == -1:
        raise MinillmError(
            f"{where}: field 'label' is -1 (unlabelled: GLUE's SST-2 test split); use the validation split"
        )
    if label not in (0, 1):
        raise MinillmError(f"{where}: field 'label' must be 0 (negative) or 1 (positive), got {record['label']!r}")
    return ChoiceExample(SST2_INSTRUCTION, list(SST2_CHOICES), label, sentence.strip(), where)


_TRUE = {"true": 1, "yes": 1, "1": 1, "false": 0, "no": 0, "0": 0}


def _boolq(record: dict, where: str) -> ChoiceExample:
    question = _text(record, "question", where).strip()
    passage = _text(record, "passage", where).strip()
    key = "answer" if "answer" in record else "label" if "label" in record else None
    if key is None:
        raise MinillmError(f"{where}: missing field 'answer' (BoolQ: true or false)")
    raw = record[key]
    if isinstance(raw, bool):
        label = int(raw)
    elif isinstance(raw, str) and raw.strip().lower() in _TRUE:
        label = _TRUE[raw.strip().lower()]
    else:
        label = _integer(raw)
    if label not in (0, 1):
        raise MinillmError(f"{where}: field '{key}' must be true or false (or 1 / 0), got {raw!r}")
    # BoolQ's questions are lower-case and lack the question mark.
    if not question.endswith("?"):
        question += "?"
    return ChoiceExample(BOOLQ_INSTRUCTION, list(BOOLQ_CHOICES), label, f"{passage}\n\nQuestion: {question}", where)


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def choice_logprobs(
    model,
    tokenizer,
    examples: Sequence[ChoiceExample],
    *,
    prompt_format: str = "alpaca",
    batch_size: int = 8,
    add_bos: bool = False,
) -> list:
    """log P(choice | prompt) for every choice of every example: ``result[i][j]`` for examples[i].choices[j]."""
    import torch

    from ..data.batches import make_batch
    from ..data.instructions import InstructionExample
    from ..data.tokenization import tokenize_examples
    from ..losses.divergences import cross_entropy
    from ..models.forward import forward_hidden

    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    examples = list(examples)
    pairs = [
        InstructionExample(instruction=example.prompt, input=example.input, references=[choice])
        for example in examples for choice in example.choices
    ]
    if not pairs:
        return []
    tokenized = tokenize_examples(
        pairs, tokenizer, prompt_format=prompt_format, add_bos=add_bos, max_prompt_tokens=None,
        max_response_tokens=None,
    ).examples
    prompts = [t.prompt_ids for t in tokenized]
    # tokenize_examples appends end-of-sequence to every response; a label word is scored without it, since in
    # a free answer the word is usually followed by more text, not by the end.
    answers = [t.response_ids[:-1] for t in tokenized]
    for pair, ids in zip(pairs, answers):
        if not ids:
            raise MinillmError(f"choice {pair.output!r} has no tokens after the prompt; use a non-empty answer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    flat: list = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = make_batch(prompts[start:start + batch_size], answers[start:start + batch_size], pad).to(device)
                forward = forward_hidden(model, batch)
                mask = batch.loss_mask
                nll = cross_entropy(forward.head(forward.hidden[mask]), batch.labels[mask], None, reduction="none")
                values = (-nll).double().cpu().tolist()
                offset = 0
                for ids in answers[start:start + batch_size]:
                    flat.append(math.fsum(values[offset:offset + len(ids)]))
                    offset += len(ids)
    finally:
        model.train(was_training)
    result, offset = [], 0
    for example in examples:
        result.append(flat[offset:offset + len(example.choices)])
        offset += len(example.choices)
    return result


def _softmax(values: Sequence[float]) -> list:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    return [e / total for e in exps]


def score_choices(
    model,
    tokenizer,
    examples: Sequence[ChoiceExample],
    *,
    prompt_format: str = "alpaca",
    batch_size: int = 8,
    add_bos: bool = False,
) -> tuple:
    """(confidences, correct): per example, the softmax probability of the highest-scoring choice and whether
    that choice is the label (ties go to the first choice)."""
    confidences, correct = [], []
    scores = choice_logprobs(
        model, tokenizer, examples, prompt_format=prompt_format, batch_size=batch_size, add_bos=add_bos
    )
    for example, logprobs in zip(examples, scores):
        probs = _softmax(logprobs)
        best = max(range(len(probs)), key=probs.__getitem__)
        confidences.append(probs[best])
        correct.append(best == example.label)
    return confidences, correct


# --------------------------------------------------------------------------------------------------------------
# ECE and the reliability diagram
# --------------------------------------------------------------------------------------------------------------


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict:
    """ECE over ``bins`` equal-width bins ((m-1)/M, m/M] (see the module docstring).

    Returns ``ece``, ``mce`` (the largest bin gap), ``accuracy`` and ``confidence`` (overall means), ``count``,
    ``num_bins`` and ``bins``: per bin ``lower``, ``upper``, ``count``, ``accuracy``, ``confidence`` (None for
    an empty bin).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise MinillmError(f"bins must be a positive integer, got {bins!r}")
    confidences = [float(c) for c in confidences]
    correct = [bool(c) for c in correct]
    if len(confidences) != len(correct):
        raise MinillmError(f"{len(confidences)} confidences but {len(correct)} correctness values; pass one of each per example")
    if not confidences:
        raise MinillmError("calibration needs at least one scored example")
    bad = next((c for c in confidences if not 0.0 <= c <= 1.0), None)
    if bad is not None:
        raise MinillmError(f"confidences must lie in [0, 1], got {bad}")
    # Upper edges computed as m / M, so that a confidence written as the same decimal (0.3) compares equal to its
    # edge and lands in the bin it closes, as the right-closed bins say.
    uppers = [m / bins for m in range(1, bins + 1)]
    counts, hits, sums = [0] * bins, [0] * bins, [0.0] * bins
    for confidence, right in zip(confidences, correct):
        index = min(bisect_left(uppers, confidence), bins - 1)
        counts[index] += 1
        hits[index] += right
        sums[index] += confidence
    n = len(confidences)
    ece, mce, table = 0.0, 0.0, []
    for m in range(bins):
        lower = m / bins
        if counts[m]:
            accuracy, confidence = hits[m] / counts[m], sums[m] / counts[m]
            gap = abs(accuracy - confidence)
            ece += counts[m] / n * gap
            mce = max(mce, gap)
        else:
            accuracy = confidence = None
        table.append({"lower": lower, "upper": uppers[m], "count": counts[m], "accuracy": accuracy,
                      "confidence": confidence})
    return {
        "ece": ece,
        "mce": mce,
        "accuracy": sum(correct) / n,
        "confidence": math.fsum(confidences) / n,
        "count": n,
        "num_bins": bins,
        "bins": table,
    }


def reliability_diagram(result: dict, path, title: str | None = None):
    """Draw ``expected_calibration_error``'s result as a reliability diagram (PNG): accuracy per confidence bin
    against the diagonal of perfect calibration, with the gap to each bin's mean confidence shaded."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MinillmError("reliability diagrams need matplotlib: pip install 'minillm[eval]' (or matplotlib)") from None
    from ..atomic import atomic_open

    try:
        table = result["bins"]
        ece = float(result["ece"])
    except (KeyError, TypeError):
        raise MinillmError("reliability_diagram needs the result of expected_calibration_error") from None
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no GUI, safe in threads.
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    filled = [b for b in table if b["count"]]
    width = (table[0]["upper"] - table[0]["lower"]) if table else 0.1
    centres = [(b["lower"] + b["upper"]) / 2 for b in filled]
    axes.bar(centres, [b["accuracy"] for b in filled], width=width, color="#4C72B0", edgecolor="black",
             linewidth=0.6, label="accuracy")
    # The gap is drawn as a hatched outline, not a filled bar: where confidence is below accuracy it lies over
    # the accuracy bar, and a translucent fill there would read as a different accuracy.
    axes.bar(centres, [b["confidence"] - b["accuracy"] for b in filled], bottom=[b["accuracy"] for b in filled],
             width=width, facecolor="none", edgecolor="#C44E52", hatch="///", linewidth=0.8,
             label="gap to mean confidence")
    for centre, b in zip(centres, filled):
        top = max(b["accuracy"], b["confidence"])
        if top < 0.95:
            axes.text(centre, top + 0.01, str(b["count"]), ha="center", va="bottom", fontsize=7, color="dimgray")
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(title or "Reliability diagram")
    axes.text(0.04, 0.93, f"ECE = {ece:.3f}\nn = {result.get('count', sum(b['count'] for b in table))}",
              transform=axes.transAxes, va="top", fontsize=9,
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path = Path(os.fspath(path))
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    return path
