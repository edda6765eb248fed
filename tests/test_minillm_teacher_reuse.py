"""minillm keeps the teacher's forward pass over each stored rollout batch for all its PPO epochs
(``keep_teacher_hidden``): the teacher is frozen and the rollouts fixed, so losses and gradients are those of a
teacher pass at every epoch."""

import copy

import pytest
import torch
from conftest import TRAIN
from test_minillm_objective import gold, make_ctx

from minillm_cli.builtin.objectives.minillm import MiniLLM, MiniLLMOptions


def _counting(ctx):
    """The context with its teacher_forward counting the calls on rollout batches (source 'student')."""
    calls = []
    original = ctx.teacher_forward

    def teacher_forward(batch):
        if batch.source == "student":
            calls.append(id(batch))
        return original(batch)

    ctx.teacher_forward = teacher_forward
    return calls


def _train(student, teacher, tokenizer, keep, *, steps, grad_accum, **options):
    """``steps`` optimizer steps of plain SGD; per step the loss of each micro-batch, the gradients and the number
    of teacher passes over rollout batches."""
    student = copy.deepcopy(student)
    objective = MiniLLM(MiniLLMOptions(keep_teacher_hidden=keep, **options))
    ctx = make_ctx(student, teacher, tokenizer, seed=3)
    calls = _counting(ctx)
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.05)
    history = []
    for _ in range(steps):
        before = len(calls)
        micro = objective.prepare_step([gold(tokenizer, TRAIN[i::grad_accum]) for i in range(grad_accum)], ctx)
        ctx.num_tokens = float(sum(b.num_tokens for b in micro))
        optimizer.zero_grad()
        losses = []
        for batch in micro:
            output = objective.loss(batch, ctx)
            output.loss.backward()
            losses.append(float(output.loss.detach()))
        grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
        optimizer.step()
        history.append((losses, grads, len(calls) - before))
    return history, objective


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_kept_teacher_pass_gives_the_same_losses_and_gradients(student, teacher, tokenizer, variant):
    epochs, steps, accum = 3, 4, 2       # step 4 starts a second buffer
    kept, objective = _train(student, teacher, tokenizer, True, steps=steps, grad_accum=accum, ppo_epochs=epochs,
                             variant=variant)
    recomputed, _ = _train(student, teacher, tokenizer, False, steps=steps, grad_accum=accum, ppo_epochs=epochs,
                           variant=variant)
    for (losses, grads, _), (losses_again, grads_again, _) in zip(kept, recomputed):
        assert losses == pytest.approx(losses_again, rel=1e-6, abs=1e-7)
        assert len(grads) == len(grads_again) > 0
        for grad, grad_again in zip(grads, grads_again):
            torch.testing.assert_close(grad, grad_again, rtol=1e-5, atol=1e-7)
    # One teacher pass per rollout batch and buffer with the kept pass, one per batch and epoch without.
    assert [calls for *_, calls in kept] == [accum, 0, 0, accum]
    assert [calls for *_, calls in recomputed] == [accum] * steps
    assert len(objective._teacher_kept) == accum   # the second buffer's, kept for its next epochs


def test_nothing_is_kept_after_the_last_epoch_or_with_one_epoch(student, teacher, tokenizer):
    _, objective = _train(student, teacher, tokenizer, True, steps=2, grad_accum=1, ppo_epochs=2)
    assert objective._teacher_kept == {}
    history, objective = _train(student, teacher, tokenizer, True, steps=2, grad_accum=1, ppo_epochs=1)
    assert [calls for *_, calls in history] == [1, 1] and objective._teacher_kept == {}


def test_a_resumed_buffer_recomputes_the_teacher_pass(student, teacher, tokenizer):
    """The kept pass is not checkpointed: after load_state_dict the next epoch makes it again, with the same loss."""
    objective = MiniLLM(MiniLLMOptions(ppo_epochs=3, lm_weight=0.0))
    ctx = make_ctx(student, teacher, tokenizer, seed=1)
    calls = _counting(ctx)
    batch = objective.prepare_batch(gold(tokenizer, TRAIN), ctx)
    ctx.num_tokens = float(batch.num_tokens)
    first = float(objective.loss(batch, ctx).loss.detach())
    second_batch = objective.prepare_batch(gold(tokenizer, TRAIN), ctx)
    assert second_batch is batch and len(calls) == 1
    expected = float(objective.loss(second_batch, ctx).loss.detach())
    assert len(calls) == 1 and expected == pytest.approx(first, rel=1e-6)

    resumed = MiniLLM(MiniLLMOptions(ppo_epochs=3, lm_weight=0.0))
    state = objective.state_dict()
    state["uses"] = 1
    resumed.load_state_dict(state)
    again = resumed.prepare_batch(gold(tokenizer, TRAIN), ctx)
    assert float(resumed.loss(again, ctx).loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert len(calls) == 2
