"""Exposure bias (ExAccErr): the per-token error against a brute-force float64 KL, the aggregation over
positions and ended responses, zero for a student that is the teacher, and the direction for a student that
was trained only on teacher prefixes (the situation exposure bias describes)."""

import copy
import math

import pytest
import torch

from minillm_cli.data.tokenization import tokenize_prompts
from minillm_cli.errors import MinillmError
from minillm_cli.evaluation import exposure
from minillm_cli.evaluation.exposure import _position_means, _running_mean, exposure_bias, per_token_errors

PROMPTS = ["The capital of France is", "List three colours:", "Two plus two is", "Is this review positive?"]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    ids, _, _ = tokenize_prompts([{"instruction": p} for p in PROMPTS], tokenizer)
    return ids


def _brute_force_kl(student, teacher, prompt, response, width=None):
    """KL(p || q) at each response step, one unpadded sequence at a time, summed entry by entry in float64."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        q_logits = student(input_ids=ids).logits[0].double()
        p_logits = teacher(input_ids=ids).logits[0].double()
    if width is not None:
        q_logits, p_logits = q_logits[:, :width], p_logits[:, :width]
    values = []
    for t in range(len(response)):
        position = len(prompt) - 1 + t      # the logits there predict response[t]
        log_q = torch.log_softmax(q_logits[position], -1).tolist()
        log_p = torch.log_softmax(p_logits[position], -1).tolist()
        values.append(math.fsum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q)))
    return values


@pytest.mark.parametrize("width", [None, 200])
def test_per_token_error_is_kl_teacher_student(student, teacher, tokenizer, prompts, width, monkeypatch):
    # float64 copies: the batched path (padding, gathered positions, logits two rows at a time, the divergences
    # module) must agree with the unbatched, entry-by-entry sum to rounding error.
    monkeypatch.setattr(exposure, "_ROWS", 2)
    s64, t64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    responses = [[5, 17, 42], [7], [100, 3, 9, 250, 11], [0]]   # ragged, one ending with eos (id 0)
    got = per_token_errors(s64, t64, prompts, responses, pad_id=tokenizer.pad_token_id, vocab_width=width,
                           batch_size=3)
    assert [len(row) for row in got] == [len(r) for r in responses]
    for prompt, response, row in zip(prompts, responses, got):
        expected = _brute_force_kl(s64, t64, prompt, response, width)
        assert row == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert all(value > 0 for value in row)


def test_positions_that_exist_count_and_ended_responses_drop_out():
    errors = [[1.0, 2.0, 3.0], [4.0]]           # the second response ended (eos) at its first step
    means, counts = _position_means(errors, 4)
    assert counts == [2, 1, 1, 0]
    assert means == [2.5, 2.0, 3.0, None]
    # R(l) is the mean of the defined per-position means among the first l; a position no response reached
    # leaves it unchanged.
    assert _running_mean(means) == [2.5, 2.25, 2.5, 2.5]


def test_student_equal_to_teacher_has_no_excess_error(teacher, tokenizer, prompts):
    same = copy.deepcopy(teacher)
    result = exposure_bias(same, teacher, tokenizer, prompts, max_len=16, seed=3)
    assert result["lengths"] == list(range(1, 17))
    assert result["R"] == result["epsilon"]
    assert all(value == 0.0 for value in result["R"])
    assert result["exaccerr"] == [0.0] * 16
    assert result["exaccerr_at_16"] == 0.0
    assert result["num_prompts"] == len(prompts)
    assert result["student_counts"] == result["teacher_counts"]


def test_teacher_forced_student_accumulates_more_error_on_its_own_prefixes(student, teacher, tokenizer, prompts):
    """A student fitted (forward KL, teacher forcing) to the teacher on teacher-sampled prefixes has a small error
    on such prefixes and a larger one on the prefixes it samples itself: ExAccErr > 0."""
    from minillm_cli.data.batches import make_batch
    from minillm_cli.models.forward import forward_hidden
    from minillm_cli.models.generation import SamplingConfig
    from minillm_cli.losses.head import distill_loss
    from minillm_cli.training.rollout import sample_rollouts

    seed = 0
    # The same seed as the measurement below: the teacher prefixes of epsilon are exactly the training prefixes.
    rollouts = sample_rollouts(student, teacher, tokenizer, prompts, SamplingConfig(max_new_tokens=16), alpha=1.0,
                               seed=seed)
    batch = make_batch(rollouts.prompts, rollouts.responses, tokenizer.pad_token_id)
    with torch.no_grad():
        target = forward_hidden(teacher, batch)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    student.train()
    for _ in range(40):
        loss = distill_loss("fkl", forward_hidden(student, batch), target, batch.loss_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    result = exposure_bias(student, teacher, tokenizer, prompts, max_len=20, seed=seed)
    assert student.training   # restored after evaluation
    assert result["exaccerr_at_16"] == pytest.approx(result["exaccerr"][15])
    # l = 1: both prefixes are just the prompt, so R(1) = eps(1).
    assert result["R"][0] == pytest.approx(result["epsilon"][0], rel=1e-5)
    assert result["exaccerr"][0] == pytest.approx(0.0, abs=1e-3)
    assert result["R"][-1] > 1.5 * result["epsilon"][-1]
    assert result["exaccerr"][-1] > 50.0
    for side in ("student", "teacher"):
        counts = result[f"{side}_counts"]
        assert counts[0] == len(prompts)
        assert all(a >= b for a, b in zip(counts, counts[1:]))   # responses only ever stop


def test_short_runs_and_bad_arguments(student, teacher, tokenizer, prompts, tiny_models):
    from minillm_cli.models.load import load_model, resolve_model

    result = exposure_bias(student, teacher, tokenizer, prompts[:2], max_len=4, seed=1, samples=3)
    assert result["exaccerr_at_16"] is None
    assert len(result["R"]) == len(result["epsilon"]) == len(result["exaccerr"]) == 4
    assert result["num_prompts"] == 2 and result["samples_per_prompt"] == 3
    assert result["student_counts"][0] == result["teacher_counts"][0] == 6
    with pytest.raises(MinillmError, match="samples"):
        exposure_bias(student, teacher, tokenizer, prompts, max_len=4, samples=0)
    with pytest.raises(MinillmError, match="at least one prompt"):
        exposure_bias(student, teacher, tokenizer, [], max_len=4)
    with pytest.raises(MinillmError, match="max_len"):
        exposure_bias(student, teacher, tokenizer, prompts, max_len=0)
    wider = load_model(resolve_model(str(tiny_models("llama", vocab_size=400))))
    with pytest.raises(MinillmError, match="vocab_width"):
        exposure_bias(wider, teacher, tokenizer, prompts, max_len=4)
    trimmed = exposure_bias(wider, teacher, tokenizer, prompts[:2], max_len=4, vocab_width=len(tokenizer))
    assert all(value > 0 for value in trimmed["R"])
