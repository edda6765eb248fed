"""MiniLLM's per-token loss in one projection per chunk (minillm_cli/losses/policy.py): the closed-form gradient and
the checkpointed autograd path against a plain float64 reference over full logits, values and gradients, with
ratios inside and outside the clip range, ties, both variants' weights and masked padding."""

import pytest
import torch

from minillm_cli.losses.policy import PolicyTokens, policy_loss
from minillm_cli.models.forward import Forward

B, L, H, V = 2, 9, 6, 23


def _head(seed, declared=True):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(V, H, generator=generator, dtype=torch.float64))

    def head(hidden):
        return hidden @ weight.T

    if declared:
        head.parameters = (weight,)
    return head, weight


def _case(seed, *, weights_mode, single, ties):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(B, L, H, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher_hidden = torch.randn(B, L, H, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, V, (B, L), generator=generator)
    mask = torch.rand(B, L, generator=generator) < 0.7
    mask[0, :2] = True
    n = int(mask.sum())
    advantages = torch.randn(n, generator=generator, dtype=torch.float64)
    advantages[0] = 0.0
    weights = torch.rand(n, generator=generator, dtype=torch.float64) * 1.5 + 0.2
    return student_hidden, teacher_hidden, labels, mask, advantages, weights


def _reference(student_hidden, teacher_hidden, labels, mask, student_w, teacher_w, tokens):
    """Full float64 logits, autograd, the formulas of docs/method.md §1 written out plainly."""
    log_q = torch.log_softmax(student_hidden[mask] @ student_w.T, -1)
    log_p = torch.log_softmax(teacher_hidden[mask] @ teacher_w.T, -1)
    ratio = torch.exp(log_q.gather(-1, labels[mask][:, None]).squeeze(-1) - tokens.old_logprobs)
    if tokens.ratio_weights is not None:
        ratio = ratio * tokens.ratio_weights
    clipped = ratio.clamp(1 - tokens.clip_eps, 1 + tokens.clip_eps)
    pg = torch.maximum(-tokens.advantages * ratio, -tokens.advantages * clipped)
    if tokens.pg_weights is not None:
        pg = pg * tokens.pg_weights
    total = pg.sum()
    if tokens.single_weights is not None:
        total = total + ((log_q.exp() * (log_q - log_p)).sum(-1) * tokens.single_weights).sum()
    return total, ratio, clipped


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize("declared", [True, False], ids=["fused", "checkpointed"])
@pytest.mark.parametrize("chunk_tokens", [None, 4])
def test_policy_loss_matches_a_float64_reference(variant, single, declared, chunk_tokens):
    student_hidden, teacher_hidden, labels, mask, advantages, weights = _case(3, weights_mode=variant, single=single,
                                                                              ties=True)
    student_head, student_w = _head(1, declared)
    teacher_head, teacher_w = _head(2)
    with torch.no_grad():   # old log-probs: a few exactly current (ρ = 1: ties), the others spread in and out of the range
        current = torch.log_softmax(student_hidden[mask] @ student_w.T, -1).gather(-1, labels[mask][:, None]).squeeze(-1)
        shift = torch.linspace(-0.6, 0.6, current.numel(), dtype=torch.float64)
        shift[:3] = 0.0
        old = current + shift
    paper = variant == "paper"
    tokens = PolicyTokens(advantages, old, 0.2, ratio_weights=None if paper else weights,
                          pg_weights=weights if paper else None,
                          single_weights=(weights if paper else torch.ones_like(weights)) if single else None)

    expected, ratio, clipped = _reference(student_hidden, teacher_hidden, labels, mask, student_w, teacher_w, tokens)
    assert bool((clipped != ratio).any()) and bool((clipped == ratio).any())      # both branches are exercised
    expected_grads = torch.autograd.grad(expected, (student_hidden, student_w))

    sums = policy_loss(Forward(student_hidden, student_head), Forward(teacher_hidden, teacher_head), labels, mask,
                       tokens, chunk_tokens=chunk_tokens)
    grads = torch.autograd.grad(sums.loss, (student_hidden, student_w))
    torch.testing.assert_close(sums.loss.detach(), expected.detach(), rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert sums.ratio == pytest.approx(float(ratio.detach().sum()), rel=1e-10)
    assert sums.clipped == float((clipped != ratio).sum())
    assert sums.pg + sums.single == pytest.approx(float(expected.detach()), rel=1e-9, abs=1e-12)
    assert (sums.single == 0.0) == (not single)


def test_policy_loss_without_tokens_keeps_a_graph():
    student_hidden = torch.randn(1, 4, H, dtype=torch.float64, requires_grad=True)
    head, _ = _head(1)
    empty = torch.zeros(0, dtype=torch.float64)
    sums = policy_loss(Forward(student_hidden, head), None, torch.zeros(1, 4, dtype=torch.long),
                       torch.zeros(1, 4, dtype=torch.bool), PolicyTokens(empty, empty, 0.2))
    assert float(sums.loss) == 0.0 and sums.pg == sums.ratio == sums.clipped == 0.0


def test_masked_vocabulary_entries_fall_back_to_the_plain_kernel():
    """A teacher that rules a token out (−inf logit) where the student does too: 0 · log 0 = 0, a finite loss and
    gradient equal to the reference's on the other entries."""
    student_hidden, teacher_hidden, labels, mask, advantages, weights = _case(5, weights_mode="paper", single=True,
                                                                              ties=False)
    student_head, student_w = _head(1)
    teacher_head, _ = _head(2)

    def ruled_out(head):
        def masked(hidden):
            logits = head(hidden).clone()
            logits[..., -1] = float("-inf")
            return logits
        masked.parameters = getattr(head, "parameters", None)
        return masked

    labels = labels.clamp(max=V - 2)
    old = torch.zeros(int(mask.sum()), dtype=torch.float64) - 3.0
    tokens = PolicyTokens(advantages, old, 0.2, pg_weights=weights, single_weights=weights)
    sums = policy_loss(Forward(student_hidden, ruled_out(student_head)), Forward(teacher_hidden, ruled_out(teacher_head)),
                       labels, mask, tokens, chunk_tokens=5)
    grads = torch.autograd.grad(sums.loss, (student_hidden, student_w))
    assert torch.isfinite(sums.loss) and all(bool(torch.isfinite(g).all()) for g in grads)
