"""Chunked losses from hidden states (``losses``): equal to the unchunked loss in float64, values and gradients,
on both paths (fused: gradient in the forward pass; checkpointed: a head without declared parameters), and the
kd path never holds two full float32 [batch, length, vocab] tensors at once."""

import collections
import weakref

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from minillm_cli.losses import divergences as D
from minillm_cli.models.forward import Forward
from minillm_cli.losses.fused import cross_entropy_value_and_grad, value_and_grad
from minillm_cli.losses.head import distill_loss, lm_loss

B, T, H, V = 3, 7, 6, 40
CASES = [("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.3}), ("skl", {"alpha": 0.1}), ("srkl", {"alpha": 0.2}),
         ("tvd", {}), ("ce", {})]


def setup(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    student_head = torch.nn.Linear(H, V, bias=True).to(dtype)
    teacher_head = torch.nn.Linear(H, V, bias=False).to(dtype).requires_grad_(False)
    with torch.no_grad():
        for p in (*student_head.parameters(), teacher_head.weight):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype)
    teacher_hidden = torch.randn(B, T, H, generator=gen, dtype=dtype)
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[-1] = False                                     # a row that counts nothing
    labels = torch.randint(0, V, (B, T), generator=gen)
    return student_head, teacher_head, hidden, teacher_hidden, mask, labels


def head_of(linear, declared: bool):
    def head(h):
        return linear(h)

    if declared:
        head.parameters = tuple(linear.parameters())
    return head


def reference(name, params, student_head, teacher_head, hidden, teacher_hidden, mask, labels, num_tokens):
    """Full logits, the unchunked divergences module (itself checked against float64 brute force)."""
    logits = student_head(hidden)
    if name == "ce":
        return D.cross_entropy(logits, labels, mask, reduction="sum") / num_tokens
    return D.divergence(name, logits, teacher_head(teacher_hidden), mask, reduction="sum", **params) / num_tokens


def grads_of(value, tensors):
    return torch.autograd.grad(value * 1.7, tensors)   # a non-unit upstream gradient


@pytest.mark.parametrize("declared", [True, False], ids=["fused", "checkpointed"])
@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_chunked_equals_unchunked_in_float64(name, params, declared):
    student_head, teacher_head, hidden, teacher_hidden, mask, labels = setup()
    count = int(mask.sum())
    assert count % 5 and count % 7                     # chunk sizes that do not divide the token count
    num_tokens = count + 2.0                           # the step's count, as the engine passes it
    hidden.requires_grad_()
    tensors = [hidden, *student_head.parameters()]
    expected = reference(name, params, student_head, teacher_head, hidden, teacher_hidden, mask, labels, num_tokens)
    expected_grads = grads_of(expected, tensors)
    for chunk in (None, 1, 5, 7, count, 10 * count):
        student = Forward(hidden, head_of(student_head, declared))
        if name == "ce":
            value = lm_loss(student, labels, mask, num_tokens=num_tokens, chunk_tokens=chunk)
        else:
            value = distill_loss(name, student, Forward(teacher_hidden, teacher_head), mask, num_tokens=num_tokens,
                                 chunk_tokens=chunk, **params)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
        for got, want in zip(grads_of(value, tensors), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_closed_form_gradients_match_autograd():
    """losses.fused's closed forms (fkl, rkl, ce) against autograd of the plain kernels."""
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(5, V, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(5, V, generator=gen, dtype=torch.float64) * 3
    for name, params in [("fkl", {}), ("rkl", {}), ("jsd", {}), ("jsd", {"beta": 0.2}), ("jsd", {"beta": 0.0}),
                         ("jsd", {"beta": 1.0}), ("skl", {}), ("skl", {"alpha": 0.3}), ("srkl", {"alpha": 0.25}),
                         ("srkl", {"alpha": 0.0})]:
        s = student.clone().requires_grad_()
        kept = teacher.clone()
        value, logits, grad = value_and_grad(name, s, teacher, **params)
        assert torch.equal(teacher, kept)                # a tensor passed directly is not overwritten
        expected = D.rows_divergence(name, s, teacher, **params).sum()
        torch.testing.assert_close(value, expected.detach())
        torch.testing.assert_close(grad, torch.autograd.grad(expected, s)[0])
    labels = torch.randint(0, V, (5,), generator=gen)
    s = student.clone().requires_grad_()
    value, _, grad = cross_entropy_value_and_grad(s, labels)
    expected = torch.nn.functional.cross_entropy(s, labels, reduction="sum")
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(expected, s)[0])


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "skl", "srkl"])
def test_masked_vocabulary_takes_the_exact_path(name):
    """−inf logits (a masked vocabulary, 0·log 0 = 0) give the plain kernels' finite value and gradient."""
    student_head, teacher_head, hidden, teacher_hidden, mask, _ = setup()
    masked = torch.zeros(V, dtype=torch.bool)
    masked[:4] = True

    def masking(linear):
        def head(h):
            return linear(h).masked_fill(masked, float("-inf"))
        head.parameters = tuple(linear.parameters())
        return head

    hidden.requires_grad_()
    values, grads = [], []
    for declared in (True, False):
        student_head_fn = masking(student_head)
        if not declared:
            student_head_fn = lambda h, f=student_head_fn: f(h)  # noqa: E731  (no declared parameters)
        value = distill_loss(name, Forward(hidden, student_head_fn), Forward(teacher_hidden, masking(teacher_head)),
                             mask, chunk_tokens=3)
        values.append(value)
        grads.append(torch.autograd.grad(value, [hidden, student_head.weight]))
    assert torch.isfinite(values[0]) and all(torch.isfinite(g).all() for g in grads[0])
    torch.testing.assert_close(values[0], values[1])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_fused_path_works_under_no_grad_and_with_a_frozen_head():
    student_head, teacher_head, hidden, teacher_hidden, mask, _ = setup()
    teacher = Forward(teacher_hidden, teacher_head)
    with torch.no_grad():
        value = distill_loss("fkl", Forward(hidden, head_of(student_head, True)), teacher, mask, chunk_tokens=2)
    expected = distill_loss("fkl", Forward(hidden, head_of(student_head, False)), teacher, mask)
    torch.testing.assert_close(value, expected.detach())
    student_head.requires_grad_(False)                 # only the hidden states train (a frozen output layer)
    hidden.requires_grad_()
    value = distill_loss("rkl", Forward(hidden, head_of(student_head, True)), teacher, mask, chunk_tokens=2)
    value.backward()
    assert hidden.grad is not None and student_head.weight.grad is None


# ------------------------------------------------------------------------------------------------------------
# Memory: live float32 bytes on the kd path.


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive (counted once per storage)."""

    def __init__(self):
        super().__init__()
        self.refs = collections.Counter()
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if not key or not size:
                    continue
                if self.refs[key] == 0:
                    self.current += size
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(tensor, self._release, key, size)
        return out

    def _release(self, key, size):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= size


def test_kd_path_never_holds_two_full_float32_logit_tensors():
    """KD's step from hidden states (CE + forward KL, student and teacher bodies, backward included) stays below
    two float32 [batch, length, vocab] tensors when chunked; unchunked it does not (so the probe can see them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from minillm_cli.data.batches import make_batch
    from minillm_cli.models.forward import forward_hidden

    vocab, batch, length, prompt = 4096, 2, 48, 8
    torch.manual_seed(0)
    config = dict(vocab_size=vocab, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                  max_position_embeddings=64, tie_word_embeddings=False)
    student = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, **config))
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, **config)).eval().requires_grad_(False)
    ids = torch.randint(0, vocab, (batch, length)).tolist()
    data = make_batch([r[:prompt] for r in ids], [r[prompt:] for r in ids], 0)
    full = batch * length * vocab * 4

    def peak(chunk_tokens):
        with LiveBytes() as probe:
            s = forward_hidden(student, data)
            with torch.inference_mode():
                t = forward_hidden(teacher, data)
            loss = 0.5 * lm_loss(s, data.labels, data.loss_mask, chunk_tokens=chunk_tokens)
            loss = loss + 0.5 * distill_loss("fkl", s, t, data.loss_mask, chunk_tokens=chunk_tokens)
            loss.backward()
        return probe.peak

    assert peak(None) >= 2 * full   # one chunk of every loss token: what the probe must see
    assert peak(40) < 2 * full      # half the loss tokens per chunk (the default's share at batch 8 × 256)
    assert peak(8) < peak(40)       # smaller chunks, less memory


@pytest.mark.parametrize("name,params", CASES[:-1], ids=[c[0] for c in CASES[:-1]])
def test_ce_and_divergence_from_one_projection(name, params):
    """kd's weighted sum from one projection per chunk equals the two separate losses, values and gradients."""
    from minillm_cli.losses.fused import weighted_ce_and_divergence

    student_head, teacher_head, hidden, teacher_hidden, mask, labels = setup()
    hidden.requires_grad_()
    tensors = [hidden, *student_head.parameters()]
    teacher = Forward(teacher_hidden, teacher_head)
    ce = lm_loss(Forward(hidden, head_of(student_head, False)), labels, mask, num_tokens=9.0)
    value = distill_loss(name, Forward(hidden, head_of(student_head, False)), teacher, mask, num_tokens=9.0, **params)
    expected = 0.3 * ce + 0.7 * value
    expected_grads = grads_of(expected, tensors)
    for chunk in (None, 5):
        both, ce_part, divergence_part = weighted_ce_and_divergence(
            Forward(hidden, head_of(student_head, True)), teacher, labels, mask, ce_weight=0.3, divergence=name,
            divergence_weight=0.7, num_tokens=9.0, chunk_tokens=chunk, **params)
        torch.testing.assert_close(both, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ce_part, ce.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(divergence_part, value.detach(), rtol=1e-12, atol=1e-14)
        for got, want in zip(grads_of(both, tensors), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    empty = torch.zeros_like(mask)
    both, _, _ = weighted_ce_and_divergence(Forward(hidden, head_of(student_head, True)), teacher, labels, empty,
                                            ce_weight=0.3, divergence=name, divergence_weight=0.7, **params)
    assert float(both.detach()) == 0.0
    both.backward()
    assert float(hidden.grad.abs().sum()) == 0.0
