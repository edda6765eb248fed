"""The mode-seeking measures of an evaluation with a teacher (minillm_cli/evaluation/mode_seeking.py): known answers
for a model that is its teacher, a float64 brute force of each number, the KL directions, and the keys in
``minillm eval``'s results.json."""

import copy
import json

import pytest
import torch
from conftest import HELD_OUT, run_cli

from minillm_cli.data.instructions import InstructionExample
from minillm_cli.evaluation import mode_seeking, protocol
from minillm_cli.evaluation.base import EvalContext
from minillm_cli.models.generation import SamplingConfig
from minillm_cli.pytest_plugin import TINY_EVAL

EXAMPLES = [InstructionExample(instruction=p, input="", references=[r]) for p, r in HELD_OUT]


def _run(model, teacher, tokenizer, seeds=(10, 20)):
    ctx = EvalContext(model_name="m", model=model, tokenizer=tokenizer, seeds=list(seeds),
                      sampling=SamplingConfig(max_new_tokens=6), batch_size=2, teacher_loader=lambda: teacher)
    by_seed, _ = protocol.sample(ctx, EXAMPLES, "held-out")
    return ctx, by_seed, mode_seeking.mode_seeking_metrics(ctx, EXAMPLES, by_seed)


def _sequence_scores(model, teacher, prompt, response):
    """float64, one unpadded sequence: (Σ −log teacher, Σ −log model, Σ KL(q‖p), Σ KL(p‖q)) over the response."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        log_q = model.double()(input_ids=ids).logits[0].log_softmax(-1)
        log_p = teacher.double()(input_ids=ids).logits[0].log_softmax(-1)
    start, targets = len(prompt) - 1, torch.tensor(response)
    q, p = log_q[start:start + len(response)], log_p[start:start + len(response)]
    return (-p.gather(-1, targets[:, None]).sum(), -q.gather(-1, targets[:, None]).sum(),
            (q.exp() * (q - p)).sum(), (p.exp() * (p - q)).sum())


@pytest.fixture(autouse=True)
def fresh_teacher_samples():
    mode_seeking._TEACHER_SAMPLES.clear()
    yield
    mode_seeking._TEACHER_SAMPLES.clear()


def test_a_model_that_is_its_teacher(teacher, tokenizer):
    same = copy.deepcopy(teacher)
    _, by_seed, metrics = _run(same, teacher, tokenizer)
    assert set(metrics) == set(mode_seeking.KEYS)
    assert metrics["rkl_own_samples"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["fkl_teacher_samples"] == pytest.approx(0.0, abs=1e-5)
    # the teacher's samples of the first seed are the model's own samples of that seed
    first = by_seed[min(by_seed)]
    assert metrics["teacher_mean_new_tokens"] == pytest.approx(
        sum(r["num_tokens"] + r["finished"] for r in first) / len(first))


def test_every_number_against_a_float64_brute_force(student, teacher, tokenizer):
    from minillm_cli.data.tokenization import tokenize_prompts

    ctx, by_seed, metrics = _run(copy.deepcopy(student), copy.deepcopy(teacher), tokenizer)
    prompts, kept, _ = tokenize_prompts(EXAMPLES, tokenizer, prompt_format=ctx.prompt_format, add_bos=ctx.add_bos)
    prompt_of = dict(zip(kept, prompts))
    s64, t64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    own = [(prompt_of[r["index"]], r["token_ids"] + ([tokenizer.eos_token_id] if r["finished"] else []))
           for seed in sorted(by_seed) for r in by_seed[seed]]
    sums = [sum(v) for v in zip(*(_sequence_scores(s64, t64, p, r) for p, r in own if r))]
    count = sum(len(r) for _, r in own)
    assert metrics["teacher_nll"] == pytest.approx(float(sums[0]) / count, rel=1e-4)
    assert metrics["rkl_own_samples"] == pytest.approx(float(sums[2]) / count, rel=1e-4)
    responses = next(iter(mode_seeking._TEACHER_SAMPLES.values()))
    theirs = [(p, r) for p, r in zip(prompts, responses) if r]
    sums = [sum(v) for v in zip(*(_sequence_scores(s64, t64, p, r) for p, r in theirs))]
    count = sum(len(r) for _, r in theirs)
    assert metrics["student_nll_on_teacher"] == pytest.approx(float(sums[1]) / count, rel=1e-4)
    assert metrics["fkl_teacher_samples"] == pytest.approx(float(sums[3]) / count, rel=1e-4)
    assert metrics["rkl_own_samples"] > 0 and metrics["fkl_teacher_samples"] > 0


def test_eval_with_a_teacher_reports_them_per_model_and_suite(refs, tmp_path, capsys):
    model, teacher = refs[0].source, refs[1].source
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--model", model, "--teacher", teacher, "--suite", "default",
                           "--out", out, *TINY_EVAL)
    assert code == 0, err
    metrics = json.loads((out / "results.json").read_text())["results"][str(model)]["default"]["metrics"]
    assert all(isinstance(metrics[key], float) for key in mode_seeking.KEYS)
    code, _, err = run_cli(capsys, "eval", "--model", model, "--teacher", teacher, "--suite", "default",
                           "--set", "default.teacher_measures=false", "--out", tmp_path / "off", *TINY_EVAL)
    assert code == 0, err
    assert "teacher_nll" not in (tmp_path / "off" / "results.json").read_text()


def test_measures_limit_and_seeds_restrict_the_scored_samples(student, teacher, tokenizer):
    """teacher_measures_limit / _seeds: the same measures computed on the first N prompts and first K seeds only."""
    ctx = EvalContext(model_name="m", model=copy.deepcopy(student), tokenizer=tokenizer, seeds=[10, 20],
                      sampling=SamplingConfig(max_new_tokens=6), batch_size=2, teacher_loader=lambda: teacher)
    restricted = protocol.run(ctx, EXAMPLES, "held-out", with_loss=False, measures_limit=2, measures_seeds=1).metrics
    mode_seeking._TEACHER_SAMPLES.clear()
    by_seed, _ = protocol.sample(ctx, EXAMPLES, "held-out")
    subset = {10: [r for r in by_seed[10] if r["index"] < 2]}
    expected = mode_seeking.mode_seeking_metrics(ctx, EXAMPLES[:2], subset)
    for key in mode_seeking.KEYS:
        assert restricted[key] == pytest.approx(expected[key], rel=1e-6)
    assert len(EXAMPLES) > 2
