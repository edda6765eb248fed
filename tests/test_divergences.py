"""Token-level divergences: values against float64 brute force, masking, reductions, chunking, dtypes, gradients.

The references below are written independently of the module: plain loops over positions and vocabulary
entries in numpy float64, straight from the formulas in docs/method.md §1, §2 and §6 (p = teacher, q = student).
"""

import math

import numpy as np
import pytest
import torch

from minillm_cli.losses import divergences as D
from minillm_cli.errors import MinillmError

B, T, V = 3, 7, 11

NAMED = {
    "fkl": D.forward_kl,
    "rkl": D.reverse_kl,
    "jsd": D.generalized_jsd,
    "skl": D.skew_forward_kl,
    "srkl": D.skew_reverse_kl,
    "tvd": D.total_variation,
}

# (divergence, its parameters): every divergence, with several values of the parameterised ones.
CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.5}),
    ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.5}),
    ("tvd", {}),
]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in params.items()) for name, params in CASES]


# ------------------------------------------------------------------------------------------------------------
# Independent float64 references.


def ref_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def ref_kl(p, q):
    total = 0.0
    for p_v, q_v in zip(p, q):
        if p_v > 0:
            total += p_v * (math.log(p_v) - math.log(q_v))
    return total


def ref_token(name, student_row, teacher_row, **params):
    p, q = ref_softmax(teacher_row), ref_softmax(student_row)
    if name == "fkl":
        return ref_kl(p, q)
    if name == "rkl":
        return ref_kl(q, p)
    if name == "jsd":
        beta = params.get("beta", 0.5)
        if beta == 0:
            return ref_kl(p, q)
        if beta == 1:
            return ref_kl(q, p)
        m = [beta * p_v + (1 - beta) * q_v for p_v, q_v in zip(p, q)]
        return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
    if name == "skl":
        alpha = params.get("alpha", 0.1)
        return ref_kl(p, [alpha * p_v + (1 - alpha) * q_v for p_v, q_v in zip(p, q)])
    if name == "srkl":
        alpha = params.get("alpha", 0.1)
        return ref_kl(q, [alpha * q_v + (1 - alpha) * p_v for p_v, q_v in zip(p, q)])
    if name == "tvd":
        return 0.5 * sum(abs(p_v - q_v) for p_v, q_v in zip(p, q))
    raise AssertionError(name)


def ref_reduce(per_position, mask, reduction):
    """per_position(b, t) -> float; the reduction over the masked positions."""
    mask = np.asarray(mask, dtype=bool)
    values = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                values[b, t] = per_position(b, t)
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.sum() / mask.sum() if mask.sum() else 0.0


def ref_loss(name, student, teacher, mask, reduction, **params):
    s, t = student.detach().double().numpy(), teacher.detach().double().numpy()
    return ref_reduce(lambda b, i: ref_token(name, s[b, i], t[b, i], **params), mask, reduction)


def ref_cross_entropy(student, labels, mask, reduction):
    s = student.detach().double().numpy()
    return ref_reduce(lambda b, i: -math.log(ref_softmax(s[b, i])[int(labels[b, i])]), mask, reduction)


# ------------------------------------------------------------------------------------------------------------
# Inputs.


def make_inputs(seed=0, scale=4.0, shape=(B, T, V), dtype=torch.float32):
    """Random student and teacher logits (scaled to be peaked and asymmetric) and a mask with a full row off."""
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + 0.5).to(dtype)
    mask = torch.rand(shape[:-1], generator=gen) < 0.7
    mask[0, 0] = True
    if shape[0] > 1:
        mask[-1] = False  # a sequence that contributes nothing
    return student, teacher, mask


def call(name, student, teacher, mask, **kwargs):
    return NAMED[name](student, teacher, mask, **kwargs)


def close(actual, expected, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(actual.detach().double().numpy()), np.asarray(expected), **tol)


# ------------------------------------------------------------------------------------------------------------
# Values.


def test_registry_names():
    assert set(D.DIVERGENCES) == {"fkl", "rkl", "jsd", "skl", "srkl", "tvd"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_matches_brute_force(name, params, reduction, scale, dtype):
    student, teacher, mask = make_inputs(seed=int(scale), scale=scale, dtype=dtype)
    expected = ref_loss(name, student, teacher, mask, reduction, **params)
    got = call(name, student, teacher, mask, reduction=reduction, **params)
    assert got.dtype == dtype
    assert got.shape == (() if reduction != "none" else mask.shape)
    close(got, expected, dtype)
    # The generic entry point is the same computation.
    close(D.divergence(name, student, teacher, mask, reduction=reduction, **params), expected, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_brute_force(reduction):
    student, _, mask = make_inputs(scale=4.0)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    labels[~mask] = -100  # ignored positions are never read
    got = D.cross_entropy(student, labels, mask, reduction=reduction)
    assert got.dtype == torch.float32
    close(got, ref_cross_entropy(student, labels, mask, reduction), torch.float32)


def test_token_divergence_is_per_token():
    student, teacher, mask = make_inputs()
    for name, params in CASES:
        values = D.token_divergence(name, student, teacher, mask=mask, **params)
        assert values.shape == (B, T)
        torch.testing.assert_close(values, call(name, student, teacher, mask, reduction="none", **params))
        assert torch.all(values[~mask] == 0)
    # Without a mask every position counts.
    close(D.token_divergence("rkl", student, teacher), ref_loss("rkl", student, teacher, torch.ones(B, T), "none"),
          torch.float32)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_zero_for_identical_inputs(name, params):
    student, _, mask = make_inputs(scale=5.0)
    values = call(name, student, student.clone(), mask, reduction="none", **params)
    assert values.abs().max() < 1e-6


def test_direction():
    student, teacher, mask = make_inputs(scale=4.0)
    fkl = D.forward_kl(student, teacher, mask, reduction="none")
    rkl = D.reverse_kl(student, teacher, mask, reduction="none")
    assert (fkl - rkl)[mask].abs().max() > 0.1  # asymmetric inputs: the two directions differ
    # forward KL with the roles swapped is the reverse KL: KL(p || q) with p, q exchanged.
    torch.testing.assert_close(D.forward_kl(teacher, student, mask, reduction="none"), rkl)
    torch.testing.assert_close(D.reverse_kl(teacher, student, mask, reduction="none"), fkl)
    # Forward KL weights by the teacher: a token the teacher likes and the student does not costs a lot.
    s = torch.tensor([[[0.0, -8.0]]])
    t = torch.tensor([[[0.0, 0.0]]])
    one = torch.ones(1, 1, dtype=torch.bool)
    assert D.forward_kl(s, t, one) > 2.0 > D.reverse_kl(s, t, one)


# ------------------------------------------------------------------------------------------------------------
# Generalised JSD conventions (GKD; docs/method.md §6): P = teacher, Q = student, M = beta P + (1 - beta) Q.


def test_jsd_end_points_are_the_kls():
    # JSD_0 and JSD_1 are identically 0; like TRL, the end points return the limits of the normalised
    # divergence instead: beta = 0 -> forward KL, beta = 1 -> reverse KL, exactly.
    student, teacher, mask = make_inputs(scale=4.0)
    for reduction in ("mean", "none"):
        fkl = D.forward_kl(student, teacher, mask, reduction=reduction)
        rkl = D.reverse_kl(student, teacher, mask, reduction=reduction)
        assert torch.equal(D.generalized_jsd(student, teacher, mask, beta=0.0, reduction=reduction), fkl)
        assert torch.equal(D.generalized_jsd(student, teacher, mask, beta=1.0, reduction=reduction), rkl)


def test_jsd_small_beta_behaves_as_forward_kl():
    # What "beta -> 0 behaves as forward KL" means concretely: M -> Q, so JSD_beta = beta KL(P||Q) + O(beta^2),
    # i.e. JSD_beta / beta -> forward KL (and JSD_beta / (1 - beta) -> reverse KL as beta -> 1), per token.
    student, teacher, mask = make_inputs(scale=2.0, dtype=torch.float64)
    fkl = D.forward_kl(student, teacher, mask, reduction="none")[mask]
    rkl = D.reverse_kl(student, teacher, mask, reduction="none")[mask]
    errors_fkl, errors_rkl = [], []
    for eps in (1e-2, 1e-4, 1e-6):
        low = D.generalized_jsd(student, teacher, mask, beta=eps, reduction="none")[mask] / eps
        high = D.generalized_jsd(student, teacher, mask, beta=1 - eps, reduction="none")[mask] / eps
        errors_fkl.append(((low - fkl).abs() / fkl).max().item())
        errors_rkl.append(((high - rkl).abs() / rkl).max().item())
    assert errors_fkl[0] > errors_fkl[1] > errors_fkl[2] and errors_fkl[2] < 1e-3
    assert errors_rkl[0] > errors_rkl[1] > errors_rkl[2] and errors_rkl[2] < 1e-3


def test_jsd_symmetries():
    student, teacher, mask = make_inputs(scale=4.0)
    for beta in (0.1, 0.3, 0.5, 0.8):
        # Exchanging P and Q is the same as replacing beta by 1 - beta.
        torch.testing.assert_close(
            D.generalized_jsd(student, teacher, mask, beta=beta, reduction="none"),
            D.generalized_jsd(teacher, student, mask, beta=1 - beta, reduction="none"),
        )
    # beta = 0.5 is the ordinary, symmetric Jensen-Shannon divergence, bounded by log 2.
    half = D.generalized_jsd(student, teacher, mask, beta=0.5, reduction="none")
    torch.testing.assert_close(half, D.generalized_jsd(teacher, student, mask, beta=0.5, reduction="none"))
    assert half.min() >= 0 and half.max() <= math.log(2) + 1e-6


# ------------------------------------------------------------------------------------------------------------
# Skew KL and total variation.


def test_skew_kl_limits_and_bound():
    student, teacher, mask = make_inputs(scale=4.0)
    for reduction in ("mean", "none"):
        assert torch.equal(D.skew_forward_kl(student, teacher, mask, alpha=0.0, reduction=reduction),
                           D.forward_kl(student, teacher, mask, reduction=reduction))
        assert torch.equal(D.skew_reverse_kl(student, teacher, mask, alpha=0.0, reduction=reduction),
                           D.reverse_kl(student, teacher, mask, reduction=reduction))
        for fn in (D.skew_forward_kl, D.skew_reverse_kl):
            assert fn(student, teacher, mask, alpha=1.0, reduction=reduction).abs().max() == 0
    # The mixture is at least alpha times the leading distribution: SKL_alpha <= log(1 / alpha).
    for alpha in (0.1, 0.5):
        for fn in (D.skew_forward_kl, D.skew_reverse_kl):
            values = fn(student * 3, teacher * 3, mask, alpha=alpha, reduction="none")
            assert values.min() >= -1e-6 and values.max() <= math.log(1 / alpha) + 1e-5


def test_total_variation_range():
    student, teacher, mask = make_inputs(scale=5.0)
    values = D.total_variation(student, teacher, mask, reduction="none")
    assert values.min() >= 0 and values.max() <= 1
    # Disjoint supports: TVD is 1.
    s = torch.tensor([[[0.0, float("-inf"), float("-inf")]]])
    t = torch.tensor([[[float("-inf"), 0.0, 1.0]]])
    assert D.total_variation(s, t, torch.ones(1, 1)).item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------------
# Masking and padding.


def all_losses(student, teacher, mask, labels, reduction, **kwargs):
    out = [call(name, student, teacher, mask, reduction=reduction, **params, **kwargs) for name, params in CASES]
    out.append(D.cross_entropy(student, labels, mask, reduction=reduction, **kwargs))
    return out


def test_padding_invariance():
    student, teacher, mask = make_inputs(scale=4.0)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    base = {r: all_losses(student, teacher, mask, labels, r) for r in ("mean", "sum", "none")}

    # Append 4 padded positions holding random logits, and again holding NaN and inf: nothing changes.
    for fill in ("random", "nan"):
        pad_s, pad_t = torch.randn(B, 4, V) * 9, torch.randn(B, 4, V) * 9
        if fill == "nan":
            pad_s[..., 0], pad_t[..., 1] = float("nan"), float("inf")
        s = torch.cat([student, pad_s], 1)
        t = torch.cat([teacher, pad_t], 1)
        m = torch.cat([mask, torch.zeros(B, 4, dtype=torch.bool)], 1)
        lab = torch.cat([labels, torch.full((B, 4), -100)], 1)
        for reduction in ("mean", "sum"):
            for got, want in zip(all_losses(s, t, m, lab, reduction), base[reduction]):
                torch.testing.assert_close(got, want)
        for got, want in zip(all_losses(s, t, m, lab, "none"), base["none"]):
            torch.testing.assert_close(got[:, :T], want)
            assert torch.all(got[:, T:] == 0)

    # Right padding -> left padding: shift each sequence's valid span to the end of the row.
    lengths = [5, 7, 2]
    right = torch.zeros(B, T, dtype=torch.bool)
    left = torch.zeros(B, T, dtype=torch.bool)
    s_left, t_left, lab_left = torch.randn(B, T, V) * 4, torch.randn(B, T, V) * 4, torch.full((B, T), -100)
    for b, n in enumerate(lengths):
        right[b, :n] = True
        left[b, T - n:] = True
        s_left[b, T - n:], t_left[b, T - n:], lab_left[b, T - n:] = student[b, :n], teacher[b, :n], labels[b, :n]
    for reduction in ("mean", "sum"):
        for got, want in zip(all_losses(s_left, t_left, left, lab_left, reduction),
                             all_losses(student, teacher, right, labels, reduction)):
            torch.testing.assert_close(got, want)
    for got, want in zip(all_losses(s_left, t_left, left, lab_left, "none"),
                         all_losses(student, teacher, right, labels, "none")):
        torch.testing.assert_close(got[left], want[right])


def test_masked_vocabulary_entries():
    """-inf logits (masked vocabulary): 0 log 0 = 0, no NaN in values or gradients."""
    student, teacher, mask = make_inputs(scale=3.0)
    student, teacher = student.clone(), teacher.clone()
    student[..., -2:] = float("-inf")
    teacher[..., -2:] = float("-inf")
    labels = torch.zeros(B, T, dtype=torch.long)
    for name, params in CASES:
        s = student.clone().requires_grad_()
        loss = call(name, s, teacher, mask, **params)
        # Entries that are zero on both sides are as good as absent.
        want = call(name, student[..., :-2], teacher[..., :-2], mask, **params)
        torch.testing.assert_close(loss, want)
        loss.backward()
        assert torch.isfinite(s.grad).all()
        assert torch.all(s.grad[..., -2:] == 0)
    assert torch.isfinite(D.cross_entropy(student, labels, mask))

    # Only the student rules an entry out that the teacher allows: forward KL is infinite (the true value),
    # the divergences whose leading distribution is the student, or that mix the teacher in, stay finite.
    s = make_inputs(scale=3.0)[0].clone()
    s[..., 0] = float("-inf")
    s.requires_grad_()
    finite_teacher = make_inputs(scale=3.0)[1]
    assert torch.isinf(D.forward_kl(s, finite_teacher, mask))
    for name, params in [("rkl", {}), ("jsd", {"beta": 0.5}), ("skl", {"alpha": 0.1}), ("srkl", {"alpha": 0.1}),
                         ("tvd", {})]:
        loss = call(name, s, finite_teacher, mask, **params)
        assert torch.isfinite(loss), name
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(grad).all(), name


# ------------------------------------------------------------------------------------------------------------
# Chunking, dtypes, empty masks, gradients.


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 64])
def test_chunked_equals_unchunked(chunk_size):
    student, teacher, mask = make_inputs(scale=4.0)
    assert mask.sum() % 3 and mask.sum() % 5  # chunk sizes that do not divide the token count
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    for name, params in CASES + [("ce", {})]:
        for reduction in ("mean", "sum", "none"):
            grads, values = [], []
            for chunk in (None, chunk_size):
                s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
                if name == "ce":
                    value = D.cross_entropy(s, labels, mask, chunk_size=chunk, reduction=reduction)
                else:
                    value = call(name, s, t, mask, chunk_size=chunk, reduction=reduction, **params)
                weights = torch.arange(value.numel(), dtype=value.dtype).reshape(value.shape) + 1
                (value * weights).sum().backward()
                values.append(value.detach())
                grads.append((s.grad, t.grad))
            torch.testing.assert_close(values[1], values[0])
            torch.testing.assert_close(grads[1][0], grads[0][0])
            if name != "ce":
                torch.testing.assert_close(grads[1][1], grads[0][1])


def test_chunked_keeps_no_full_float32_tensors_for_backward():
    """With chunk_size, what the graph keeps for backward adds up to less than one float32 [N, V] tensor.

    (A plain loop over chunks would keep every chunk's float32 intermediates: several [N, V] tensors in all.)
    """
    student, teacher, mask = make_inputs(shape=(3, 7, 11), dtype=torch.bfloat16)
    student.requires_grad_()
    count = int(mask.sum())

    def saved_float32_rows(name, params, chunk_size):
        rows = []

        def pack(tensor):
            if tensor.dtype == torch.float32 and tensor.dim() >= 2:
                rows.append(tensor.numel() // tensor.shape[-1])
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            call(name, student, teacher, mask, chunk_size=chunk_size, **params)
        return sum(rows)

    for name, params in CASES:
        assert saved_float32_rows(name, params, None) >= count  # unchunked: full float32 tensors are kept
        assert saved_float32_rows(name, params, 1) < count, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_upcast(dtype):
    student, teacher, mask = make_inputs(scale=4.0, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(4))
    for chunk in (None, 3):
        for name, params in CASES:
            s = student.clone().requires_grad_()
            loss = call(name, s, teacher, mask, chunk_size=chunk, **params)
            assert loss.dtype == torch.float32
            # Same as computing on the float32 values of the same logits: nothing is computed in half precision.
            torch.testing.assert_close(loss, call(name, student.float(), teacher.float(), mask, **params),
                                       rtol=1e-6, atol=1e-6)
            loss.backward()
            assert s.grad.dtype == dtype and torch.isfinite(s.grad.float()).all()
        ce = D.cross_entropy(student, labels, mask, chunk_size=chunk)
        assert ce.dtype == torch.float32
        torch.testing.assert_close(ce, D.cross_entropy(student.float(), labels, mask), rtol=1e-6, atol=1e-6)
    # Mixed precisions: a bf16 student against a float32 teacher.
    assert D.reverse_kl(student, teacher.float(), mask).dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_mask(chunk_size):
    student, teacher, _ = make_inputs(scale=4.0)
    empty = torch.zeros(B, T, dtype=torch.bool)
    labels = torch.full((B, T), -100)
    for reduction in ("mean", "sum", "none"):
        for name, params in CASES + [("ce", {})]:
            s = student.clone().requires_grad_()
            if name == "ce":
                loss = D.cross_entropy(s, labels, empty, chunk_size=chunk_size, reduction=reduction)
            else:
                loss = call(name, s, teacher, empty, chunk_size=chunk_size, reduction=reduction, **params)
            assert loss.shape == (() if reduction != "none" else (B, T))
            assert torch.all(loss == 0) and loss.dtype == torch.float32
            loss.sum().backward()
            assert torch.all(s.grad == 0)
    # Also with a denominator from elsewhere (this micro-batch is empty, others are not).
    assert D.reverse_kl(student, teacher, empty, num_tokens=10).item() == 0


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("name, params", [("rkl", {}), ("jsd", {"beta": 0.3}), ("fkl", {}), ("skl", {"alpha": 0.1}),
                                          ("srkl", {"alpha": 0.1})])
def test_gradcheck(name, params, chunk_size):
    student, teacher, mask = make_inputs(seed=5, scale=2.0, shape=(2, 3, 5), dtype=torch.float64)
    student.requires_grad_()
    teacher.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s, t: call(name, s, t, mask, chunk_size=chunk_size, **params), (student, teacher))
    if chunk_size is None:
        assert torch.autograd.gradcheck(
            lambda s, t: call(name, s, t, mask, reduction="none", **params), (student, teacher))


def test_cross_entropy_gradcheck():
    student, _, mask = make_inputs(seed=6, scale=2.0, shape=(2, 3, 5), dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(6))
    student.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: D.cross_entropy(s, labels, mask, chunk_size=2), (student,))


# ------------------------------------------------------------------------------------------------------------
# The denominator.


def test_num_tokens_override():
    student, teacher, mask = make_inputs(scale=4.0)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(7))
    for name, params in CASES:
        total = call(name, student, teacher, mask, reduction="sum", **params)
        for n in (5, 12.5, torch.tensor(40)):
            torch.testing.assert_close(call(name, student, teacher, mask, num_tokens=n, **params),
                                       total / float(n))
        # Micro-batches divided by the global token count add up to the mean over the whole batch.
        count = int(mask.sum())
        parts = [call(name, student[i:i + 1], teacher[i:i + 1], mask[i:i + 1], num_tokens=count, chunk_size=2,
                      **params) for i in range(B)]
        torch.testing.assert_close(sum(parts), call(name, student, teacher, mask, **params))
    ce_total = D.cross_entropy(student, labels, mask, reduction="sum")
    torch.testing.assert_close(D.cross_entropy(student, labels, mask, num_tokens=7), ce_total / 7)


# ------------------------------------------------------------------------------------------------------------
# Errors.


def test_errors():
    student, teacher, mask = make_inputs()
    wider = torch.randn(B, T, V + 3)
    with pytest.raises(ValueError, match="same vocabulary"):
        D.forward_kl(student, wider, mask)  # teacher vocabulary larger: trimming belongs elsewhere
    with pytest.raises(ValueError, match="same vocabulary"):
        D.reverse_kl(wider, teacher, mask)
    with pytest.raises(ValueError, match="different positions"):
        D.reverse_kl(student, teacher[:, :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        D.reverse_kl(student, teacher, mask[:, :-1])
    with pytest.raises(ValueError, match="reduction"):
        D.reverse_kl(student, teacher, mask, reduction="batchmean")
    with pytest.raises(ValueError, match="num_tokens"):
        D.reverse_kl(student, teacher, mask, reduction="sum", num_tokens=4)
    with pytest.raises(ValueError, match="num_tokens"):
        D.reverse_kl(student, teacher, mask, num_tokens=0)
    with pytest.raises(ValueError, match="chunk_size"):
        D.reverse_kl(student, teacher, mask, chunk_size=0)
    with pytest.raises(ValueError, match="beta"):
        D.generalized_jsd(student, teacher, mask, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        D.skew_forward_kl(student, teacher, mask, alpha=-0.1)
    with pytest.raises(TypeError, match="rkl"):
        D.divergence("rkl", student, teacher, mask, beta=0.5)
    with pytest.raises(MinillmError, match="did you mean 'rkl'"):
        D.token_divergence("rk1", student, teacher, mask=mask)
    labels = torch.zeros(B, T, dtype=torch.long)
    labels[mask] = -100
    with pytest.raises(ValueError, match="outside the vocabulary"):
        D.cross_entropy(student, labels, mask)
    labels[:] = V
    labels[~mask] = 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        D.cross_entropy(student, labels, mask)
