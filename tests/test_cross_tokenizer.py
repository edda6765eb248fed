"""Distillation across tokenizers (losses/aligned.py, training/cross_teacher.py): with two identical tokenizers the
aligned path gives the same-tokenizer loss and gradient for every supported objective; between two really
different tokenizers its terms have known answers computed from full logits in float64."""

import math
import types

import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.data.batches import make_batch
from minillm_cli.models.alignment import Aligner
from minillm_cli.models.forward import forward_hidden
from minillm_cli.training.cross_teacher import CrossTokenizerTeacher, check_objective
from minillm_cli.testing import make_tiny_byte_fallback_tokenizer, make_tiny_model, make_tiny_tokenizer

PAIRS = [("The capital of France is", " Paris 😀."), ("List three colours:", " red, green, blüe."),
         ("Two plus two is", " four")]


def load(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    level, fallback = make_tiny_tokenizer(), make_tiny_byte_fallback_tokenizer()
    root = tmp_path_factory.mktemp("xtok")
    return types.SimpleNamespace(
        level=level, fallback=fallback,
        student=load(make_tiny_model(root / "student", "llama", seed=1, tokenizer=level)),
        teacher=load(make_tiny_model(root / "teacher", "llama", seed=2, layers=3, tokenizer=level)),
        other_teacher=load(make_tiny_model(root / "other", "llama", vocab_size=len(fallback), seed=3, tokenizer=fallback)),
    )


def batch_of(tokenizer, pairs=PAIRS, ended=(True, True, False)):
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts = [encode(p) for p, _ in pairs]
    responses = [encode(r) + ([tokenizer.eos_token_id] if end else []) for (_, r), end in zip(pairs, ended)]
    return make_batch(prompts, responses, tokenizer.eos_token_id)


def context(student, teacher_forward, batch):
    return types.SimpleNamespace(
        student_forward=lambda b: forward_hidden(student, b), teacher_forward=teacher_forward,
        num_tokens=batch.num_tokens, chunk_tokens=5)


def loss_and_grad(student, objective, ctx, batch):
    student.zero_grad()
    loss = objective.loss(batch, ctx).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in student.parameters() if p.grad is not None]


OBJECTIVES = [
    ("kd", {"ratio": 0.5}), ("rkl", {"ce_weight": 0.3}), ("tvd", {}), ("gkd", {"beta": 0.5, "lmbda": 0.0}),
    ("gkd", {"beta": 0.0, "lmbda": 0.0}), ("distillm", {"loss_type": "srkl", "init_threshold": 0.0, "threshold_step": 0.0}),
    ("distillm", {"loss_type": "skl", "init_threshold": 0.0, "threshold_step": 0.0}), ("seqkd", {"ratio": 0.5}),
]


@pytest.mark.parametrize("name,options", OBJECTIVES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OBJECTIVES)])
def test_identical_tokenizers_give_the_same_loss_and_gradient(models, name, options):
    from minillm_cli.plugins import get_objective

    cls = get_objective(name)
    objective = cls(cls.Options(**options))
    batch = batch_of(models.level)
    width = len(models.level)
    same = context(models.student, lambda b: forward_hidden(models.teacher, b), batch)
    aligned = CrossTokenizerTeacher(models.teacher, Aligner(models.level, models.level, teacher_bos=False),
                                    width=width, student_width=width)
    cross = context(models.student, aligned.for_batch, batch)
    assert aligned.for_batch(batch).span_weight.numel() == 0     # every token matched with itself
    expected_loss, expected_grads = loss_and_grad(models.student, objective, same, batch)
    loss, grads = loss_and_grad(models.student, objective, cross, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def logprobs_at_rows(model, batch):
    with torch.no_grad():
        return torch.log_softmax(model(**batch.model_inputs()).logits[batch.loss_mask], dim=-1)


def test_different_tokenizers_give_the_known_matched_and_span_terms(models):
    """Forward KL across a byte-level student and a byte-fallback teacher, from full float64 logits: matched tokens
    compare the renormalised shared-vocabulary distributions, spans their chain-rule probabilities."""
    student_tok, teacher_tok = models.level, models.fallback
    aligner = Aligner(teacher_tok, student_tok, teacher_bos=True)
    teacher = CrossTokenizerTeacher(models.other_teacher, aligner, width=len(teacher_tok), student_width=len(student_tok))
    batch = batch_of(student_tok)
    aligned = teacher.for_batch(batch)
    assert aligned.matched_student.numel() > 0 and aligned.span_weight.numel() > 0
    # Every student loss token lies in exactly one term.
    covered = sorted(aligned.matched_student.tolist() + aligned.span_student.tolist())
    assert covered == list(range(batch.num_tokens))
    assert float(aligned.span_weight.sum()) == aligned.span_student.numel()

    examples = [aligner.align(p, r) for p, r in zip(batch.prompts, batch.responses)]
    teacher_batch = make_batch([e.teacher_prompt for e in examples], [e.teacher_response for e in examples],
                               teacher_tok.eos_token_id)
    log_q = logprobs_at_rows(models.student, batch)
    log_p = logprobs_at_rows(models.other_teacher, teacher_batch)
    s_ids, t_ids = teacher.shared_student, teacher.shared_teacher
    expected = 0.0
    for s_row, t_row in zip(aligned.matched_student.tolist(), aligned.matched_teacher.tolist()):
        q = torch.log_softmax(log_q[s_row, s_ids], -1)
        p = torch.log_softmax(log_p[t_row, t_ids], -1)
        expected += float((p.exp() * (p - q)).sum())
    targets_s = batch.labels[batch.loss_mask]
    targets_t = teacher_batch.labels[teacher_batch.loss_mask]
    spans = {}
    for row, span in zip(aligned.span_student.tolist(), aligned.span_of_row.tolist()):
        spans.setdefault(span, [0.0, 0.0, 0])
        spans[span][0] += float(log_q[row, targets_s[row]])
        spans[span][2] += 1
    for span, (lq, _, count) in spans.items():
        lp = float(aligned.span_teacher_logprob[span])
        q, p = math.exp(lq), math.exp(lp)
        expected += count * (p * (lp - lq) + (1 - p) * (math.log1p(-p) - math.log1p(-q)))
    expected /= batch.num_tokens
    value = aligned.distill_loss("fkl", forward_hidden(models.student, batch), batch.loss_mask, num_tokens=batch.num_tokens)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    # The teacher's span log-probabilities are its chain-rule sums over the span's own tokens.
    total_teacher = float(aligned.span_teacher_logprob.sum())
    teacher_span_rows = all_teacher_span_rows(aligned, examples)
    assert total_teacher == pytest.approx(float(sum(log_p[r, targets_t[r]] for r in teacher_span_rows)), rel=1e-6)


def all_teacher_span_rows(aligned, examples):
    """The teacher rows the spans of ``aligned`` cover: every teacher loss row not matched with a student row."""
    total = sum(len(e.teacher_response) for e in examples)
    return sorted(set(range(total)) - set(aligned.matched_teacher.tolist()))


def test_objectives_that_sample_the_teacher_are_refused_with_the_reason():
    from minillm_cli.plugins import get_objective

    refused = [("minillm", {}, "teacher-mixed sampling.*objective.alpha=0"),
               ("minillm", {"alpha": 0.0}, "single-step term.*objective.single_step=false"),
               ("gkd", {"seq_kd": True, "lmbda": 0.0}, "objective.seq_kd=false")]
    for name, options, why in refused:
        cls = get_objective(name)
        with pytest.raises(MinillmError, match=why):
            check_objective(cls(cls.Options(**options)))
    check_objective(get_objective("kd")())
    minillm = get_objective("minillm")
    check_objective(minillm(minillm.Options(alpha=0.0, single_step=False)))


def test_span_log_probabilities_go_to_the_token_that_completes_the_span():
    from minillm_cli.models.alignment import Group
    from minillm_cli.training.cross_rollout import assign_to_student_tokens

    groups = [Group((0,), (0,)), Group((1, 2), (1,)), Group((3,), (2, 3))]
    teacher = [-1.0, -2.0, -0.5, -0.25, -4.0]          # the last teacher token is in no group
    assigned = assign_to_student_tokens(groups, 4, teacher, matched=lambda g: g.student == (0,))
    assert assigned == [-1.0, 0.0, -2.0, -0.75 - 4.0]
    assert sum(assigned) == sum(teacher)


@pytest.mark.parametrize("same", [True, False], ids=["same-tokenizer", "byte-level-vs-byte-fallback"])
def test_text_aligned_teacher_logprobs_sum_to_the_teacher_logprob_of_the_response(models, same):
    student_tok = models.level
    teacher_tok, teacher_model = (models.level, models.teacher) if same else (models.fallback, models.other_teacher)
    aligner = Aligner(teacher_tok, student_tok, teacher_bos=not same)
    teacher = CrossTokenizerTeacher(teacher_model, aligner, width=len(teacher_tok), student_width=len(student_tok))
    batch = batch_of(student_tok)
    assigned = teacher.response_logprobs(batch.prompts, batch.responses, device=torch.device("cpu"), chunk_tokens=4)
    assert [len(a) for a in assigned] == [len(r) for r in batch.responses]
    examples = [aligner.align(p, r) for p, r in zip(batch.prompts, batch.responses)]
    teacher_batch = make_batch([e.teacher_prompt for e in examples], [e.teacher_response for e in examples],
                               teacher_tok.eos_token_id)
    log_p = logprobs_at_rows(teacher_model, teacher_batch)
    per_token = log_p.gather(-1, teacher_batch.labels[teacher_batch.loss_mask][:, None]).squeeze(-1).tolist()
    start = 0
    for example, values in zip(examples, assigned):
        own = per_token[start:start + len(example.teacher_response)]
        start += len(example.teacher_response)
        assert sum(values) == pytest.approx(sum(own), rel=1e-6)      # log p(response), in float32 as rollouts
        if same:
            assert values == pytest.approx(own, rel=1e-6)            # token for token


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """A teacher with a byte-fallback tokenizer and a student with a byte-level one, as model directories."""
    root = tmp_path_factory.mktemp("xtok-cli")
    fallback = make_tiny_byte_fallback_tokenizer()
    teacher = make_tiny_model(root / "teacher", "llama", vocab_size=len(fallback), layers=3, seed=2, tokenizer=fallback)
    student = make_tiny_model(root / "student", "gpt2", seed=1)
    return teacher, student


def test_distill_across_tokenizers_trains_and_exports(cli_models, tmp_path, monkeypatch, capsys):
    import json

    from conftest import run_cli
    from minillm_cli.pytest_plugin import TINY_DISTILL

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher, student = cli_models
    base = ["distill", "--teacher", teacher, "--student", student, "--no-progress", *TINY_DISTILL]
    code, _, err = run_cli(capsys, *base, "--objective", "kd", "--output-dir", tmp_path / "refused")
    assert code == 2 and "--cross-tokenizer" in err.splitlines()[-1]
    for objective, extra in [("kd", []), ("gkd", ["objective.lmbda=1.0"])]:   # gold, then the student's own samples
        output = tmp_path / objective
        code, _, err = run_cli(capsys, *base, "--cross-tokenizer", "--objective", objective, "--output-dir", output, *extra)
        assert code == 0, err[-3000:]
        records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
        assert (output / "final" / "config.json").is_file()
    code, _, err = run_cli(capsys, *base, "--cross-tokenizer", "--output-dir", tmp_path / "mini", "warm_start.steps=2")
    assert code == 2 and "objective.alpha=0" in err.splitlines()[-1]   # the default job's minillm: before its warm start
    assert not (tmp_path / "mini").exists()
    output = tmp_path / "minillm"
    code, _, err = run_cli(capsys, *base, "--cross-tokenizer", "--objective", "minillm", "--output-dir", output,
                           "objective.alpha=0", "objective.single_step=false")
    assert code == 0, err[-3000:]
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rewards = [r["reward"] for r in records if "reward" in r]
    assert len(rewards) == 2 and all(math.isfinite(v) for v in rewards)
    assert (output / "final" / "config.json").is_file()
