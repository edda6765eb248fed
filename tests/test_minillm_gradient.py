"""The MiniLLM estimator against the exact reverse-KL gradient, by enumeration (docs/method.md §1).

A toy autoregressive pair small enough to enumerate: vocabulary V = 4, responses of exactly T = 3 tokens, and
each model an explicit logit table indexed by the response prefix (1 + 4 + 16 prefixes). The student's table θ
is the parameter. In float64 we enumerate all V^T sequences for

- the exact reverse KL, KL(q_θ ‖ p) = Σ_y q_θ(y) log(q_θ(y) / p(y)), and its gradient by autograd;
- the quantity the paper's teacher-mixed estimator defines (Eq. 7 with the single-step weight w_t in place of
  the product of per-step weights): G = Σ_y p̃(y) Σ_t w_t [∇KL_t(·|y_<t) − R_{t+1} ∇log q_θ(y_t|y_<t)].

The objective's own ``loss`` (single-step + long-term terms, α, no length normalisation, reward scale 1) is run on
sampled batches through a fake forward (one-hot prefix features times the table); the mean of its gradients
over many batches must equal the exact value within 4.5 standard errors per component.
"""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from minillm_cli.data.batches import make_batch
from minillm_cli.builtin.objectives.minillm import MiniLLM, MiniLLMOptions
from minillm_cli.models.forward import Forward

V, T = 4, 3
OFFSETS = [sum(V ** k for k in range(n)) for n in range(T)]       # first table row of each prefix length
ROWS = sum(V ** n for n in range(T))                                # 21 prefixes
SEQUENCES = torch.tensor(list(itertools.product(range(V), repeat=T)))   # [64, 3]
Z = 4.5                                                             # standard errors allowed per component


def prefix_rows(sequences):
    """[N, T] table row of the prefix before each response position."""
    rows = torch.zeros(sequences.shape, dtype=torch.long)
    for t in range(T):
        code = torch.zeros(sequences.shape[0], dtype=torch.long)
        for s in range(t):
            code = code * V + sequences[:, s]
        rows[:, t] = OFFSETS[t] + code
    return rows


@pytest.fixture(scope="module")
def tables():
    generator = torch.Generator().manual_seed(3)
    theta = (1.5 * torch.randn(ROWS, V, generator=generator, dtype=torch.float64))
    phi = (1.5 * torch.randn(ROWS, V, generator=generator, dtype=torch.float64))
    return theta, phi


# --- exact values by enumeration ---------------------------------------------------------------------------------


def exact_reverse_kl_grad(theta, phi):
    theta = theta.clone().requires_grad_(True)
    rows = prefix_rows(SEQUENCES)
    log_q = theta.log_softmax(-1)[rows].gather(-1, SEQUENCES[..., None]).squeeze(-1).sum(-1)
    log_p = phi.log_softmax(-1)[rows].gather(-1, SEQUENCES[..., None]).squeeze(-1).sum(-1)
    kl = (log_q.exp() * (log_q - log_p)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return float(kl.detach()), grad


def exact_forward_kl_grad(theta, phi):
    theta = theta.clone().requires_grad_(True)
    rows = prefix_rows(SEQUENCES)
    log_q = theta.log_softmax(-1)[rows].gather(-1, SEQUENCES[..., None]).squeeze(-1).sum(-1)
    log_p = phi.log_softmax(-1)[rows].gather(-1, SEQUENCES[..., None]).squeeze(-1).sum(-1)
    (grad,) = torch.autograd.grad((log_p.exp() * (log_p - log_q)).sum(), theta)
    return grad


def exact_paper_estimate(theta, phi, alpha, *, product_weights=False):
    """Σ_y p̃(y) Σ_t w_t [∇KL_t − R_{t+1} ∇log q(y_t)] (the paper's Eq. 7), or with ``product_weights`` exact
    importance sampling: ∇KL_t depends on y_<t only (weight Π_{s<t} w_s), the long-term term on the whole
    sequence (weight Π_s w_s)."""
    theta = theta.clone().requires_grad_(True)
    rows = prefix_rows(SEQUENCES)
    log_q_all, log_p_all = theta.log_softmax(-1)[rows], phi.log_softmax(-1)[rows]          # [64, T, V]
    log_q = log_q_all.gather(-1, SEQUENCES[..., None]).squeeze(-1)
    log_p = log_p_all.gather(-1, SEQUENCES[..., None]).squeeze(-1)
    mix = alpha * log_p.exp() + (1 - alpha) * log_q.exp()
    w = (log_q.exp() / mix).detach()
    if product_weights:
        single_weights = w.cumprod(-1) / w
        long_weights = w.prod(-1, keepdim=True).expand_as(w)
    else:
        single_weights = long_weights = w
    r = (log_p - log_q).detach()
    future = r.flip(-1).cumsum(-1).flip(-1) - r                                            # R_{t+1}
    single = (log_q_all.exp() * (log_q_all - log_p_all)).sum(-1)                           # KL_t
    per_token = single_weights * single - long_weights * future * log_q
    surrogate = (mix.prod(-1).detach()[:, None] * per_token).sum()
    (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def test_enumeration_is_consistent(tables):
    """α = 0 gives the exact gradient; with α > 0, product weights give it too, and the paper's single-step weight
    gives a different (approximate) quantity: what the sampled estimator is measured against below."""
    theta, phi = tables
    _, exact = exact_reverse_kl_grad(theta, phi)
    assert torch.allclose(exact_paper_estimate(theta, phi, 0.0), exact, atol=1e-12)
    assert torch.allclose(exact_paper_estimate(theta, phi, 0.2, product_weights=True), exact, atol=1e-12)
    assert not torch.allclose(exact_paper_estimate(theta, phi, 0.2), exact, atol=1e-3)
    assert not torch.allclose(exact_forward_kl_grad(theta, phi), exact, atol=1e-2)   # KL(p‖q) is not KL(q‖p)


# --- the objective's estimator on sampled batches -----------------------------------------------------------------


def sample_batch(theta, phi, alpha, n, generator):
    """n responses drawn token by token from α·p + (1−α)·q with what the rollout module records per token."""
    tokens = torch.zeros((n, T), dtype=torch.long)
    log_q, log_p, weights = (torch.zeros((n, T), dtype=torch.float64) for _ in range(3))
    for t in range(T):
        rows = prefix_rows(tokens)[:, t]
        q, p = theta.softmax(-1)[rows], phi.softmax(-1)[rows]
        mix = alpha * p + (1 - alpha) * q
        tokens[:, t] = torch.multinomial(mix, 1, generator=generator).squeeze(-1)
        pick = tokens[:, t:t + 1]
        log_q[:, t] = q.gather(-1, pick).squeeze(-1).log()
        log_p[:, t] = p.gather(-1, pick).squeeze(-1).log()
        weights[:, t] = (q.gather(-1, pick) / mix.gather(-1, pick)).squeeze(-1)
    batch = make_batch([[0]] * n, tokens.tolist(), pad_id=0)
    for name, values in (("old_logprobs", log_q), ("teacher_logprobs", log_p), ("importance_weights", weights)):
        aligned = torch.zeros(batch.labels.shape, dtype=torch.float32)
        aligned[batch.loss_mask] = values.float().flatten()
        batch.extras[name] = aligned
    return batch, tokens


def estimator_gradients(theta, phi, options, *, batches=120, n=256, seed=0):
    """One gradient of the objective's loss per sampled batch, as rows of a [batches, 21·4] tensor."""
    generator = torch.Generator().manual_seed(seed)
    objective = MiniLLM(options)
    out = []
    for _ in range(batches):
        batch, tokens = sample_batch(theta, phi, options.alpha, n, generator)
        features = torch.zeros((*batch.labels.shape, ROWS), dtype=torch.float64)
        features[batch.loss_mask] = torch.nn.functional.one_hot(prefix_rows(tokens), ROWS).double().reshape(-1, ROWS)
        param = theta.clone().requires_grad_(True)
        ctx = SimpleNamespace(
            student_forward=lambda b: Forward(features, lambda h: h @ param),
            teacher_forward=lambda b: Forward(features, lambda h: h @ phi),
            chunk_tokens=None, num_tokens=float(n),            # per-token sums / n = the mean over sequences
        )
        objective.attach_advantages([batch])
        objective.loss(batch, ctx).loss.backward()
        out.append(param.grad.flatten().clone())
    return torch.stack(out)


def paper_options(alpha, **changes):
    """The paper's estimator with nothing on top: no length normalisation, rewards unscaled, no L_PT."""
    return MiniLLMOptions(alpha=alpha, length_norm=False, reward_scale=1.0, reward_clip=1e9, lm_weight=0.0, **changes)


def z_scores(samples, target):
    """|mean − target| in standard errors of the mean, per component. The floor (1e-3 of the largest component)
    covers components driven by prefixes so rare that their sample standard deviation underestimates the error
    (float32 rounding of the loss is far below it)."""
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    floor = 1e-3 * float(target.abs().max()) / Z
    return (mean - target.flatten()).abs() / (stderr + floor), mean


def test_estimator_matches_the_exact_gradient_without_mixing(tables):
    theta, phi = tables
    _, exact = exact_reverse_kl_grad(theta, phi)
    samples = estimator_gradients(theta, phi, paper_options(0.0))
    z, mean = z_scores(samples, exact)
    assert float(z.max()) < Z, float(z.max())
    assert float((mean - exact.flatten()).norm() / exact.norm()) < 0.05
    # Direction check: the same samples reject the forward-KL gradient.
    z_forward, _ = z_scores(samples, exact_forward_kl_grad(theta, phi))
    assert float(z_forward.max()) > 10 * Z


def test_teacher_mixed_estimator_is_unbiased_for_the_papers_quantity(tables):
    theta, phi = tables
    target = exact_paper_estimate(theta, phi, 0.2)
    samples = estimator_gradients(theta, phi, paper_options(0.2), seed=1)
    z, mean = z_scores(samples, target)
    assert float(z.max()) < Z, float(z.max())
    assert float((mean - target.flatten()).norm() / target.norm()) < 0.05


def test_single_step_decomposition_lowers_variance(tables):
    """Plain REINFORCE (returns including step t, no exact single-step term) is unbiased too, but noisier."""
    theta, phi = tables
    _, exact = exact_reverse_kl_grad(theta, phi)
    decomposed = estimator_gradients(theta, phi, paper_options(0.0), seed=2)
    reinforce = estimator_gradients(theta, phi, paper_options(0.0, single_step=False), seed=2)
    z, _ = z_scores(reinforce, exact)
    assert float(z.max()) < Z, float(z.max())
    decomposed_variance = float(decomposed.var(0).sum())
    reinforce_variance = float(reinforce.var(0).sum())
    assert decomposed_variance < 0.8 * reinforce_variance, (decomposed_variance, reinforce_variance)


def test_training_with_the_default_options_lowers_the_exact_reverse_kl(tables):
    """The full default estimator (length-normalised returns, reward scaling, PPO clipping, α = 0.2, each rollout
    batch used for 4 updates) drives the enumerated KL(q_θ ‖ p) down."""
    theta, phi = tables
    theta = theta.clone()
    before, _ = exact_reverse_kl_grad(theta, phi)
    options = MiniLLMOptions(lm_weight=0.0)
    objective = MiniLLM(options)
    generator = torch.Generator().manual_seed(5)
    param = theta.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=0.05)
    for _ in range(25):
        with torch.no_grad():
            batch, tokens = sample_batch(param.detach(), phi, options.alpha, 128, generator)
        features = torch.zeros((*batch.labels.shape, ROWS), dtype=torch.float64)
        features[batch.loss_mask] = torch.nn.functional.one_hot(prefix_rows(tokens), ROWS).double().reshape(-1, ROWS)
        ctx = SimpleNamespace(
            student_forward=lambda b: Forward(features, lambda h: h @ param),
            teacher_forward=lambda b: Forward(features, lambda h: h @ phi),
            chunk_tokens=None, num_tokens=float(batch.num_tokens),
        )
        objective.attach_advantages([batch])
        for _ in range(options.ppo_epochs):
            optimizer.zero_grad()
            objective.loss(batch, ctx).loss.backward()
            optimizer.step()
    after, _ = exact_reverse_kl_grad(param.detach(), phi)
    assert after < 0.5 * before, (before, after)


def test_default_paper_options_give_the_exact_gradient_without_mixing(tables):
    """The paper variant's defaults are the paper's estimator: rewards unscaled. (The reference scripts' scale 0.5,
    the default before, weighted the long-term term twice against the single-step term: about half the gradient
    off even here, at α = 0 without length normalisation.)"""
    theta, phi = tables
    _, exact = exact_reverse_kl_grad(theta, phi)
    options = MiniLLMOptions(alpha=0.0, length_norm=False, lm_weight=0.0)
    assert options.reward_scale == 1.0 and MiniLLMOptions(variant="reference").reward_scale == 0.5
    samples = estimator_gradients(theta, phi, options, batches=60, seed=3)
    z, mean = z_scores(samples, exact)
    assert float(z.max()) < Z, float(z.max())
    assert float((mean - exact.flatten()).norm() / exact.norm()) < 0.05


def test_unbiased_variant_gives_the_exact_gradient_under_teacher_mixing(tables):
    """variant=unbiased (products of the importance weights, plain sums) at α = 0.2: the mean of its gradients is
    the exact reverse-KL gradient, where the paper's single-step weight is measurably off."""
    theta, phi = tables
    _, exact = exact_reverse_kl_grad(theta, phi)
    options = MiniLLMOptions(alpha=0.2, variant="unbiased", reward_clip=1e9, lm_weight=0.0)
    assert options.length_norm is False and options.reward_scale == 1.0 and options.validate() == []
    samples = estimator_gradients(theta, phi, options, seed=4)
    z, mean = z_scores(samples, exact)
    assert float(z.max()) < Z, float(z.max())
    assert float((mean - exact.flatten()).norm() / exact.norm()) < 0.05
    paper = estimator_gradients(theta, phi, paper_options(0.2), batches=60, seed=4)
    z_paper, _ = z_scores(paper, exact)
    assert float(z_paper.max()) > 2 * Z, float(z_paper.max())
    # Without the single-step term (returns from t on), the products still make it exact.
    reinforce = estimator_gradients(theta, phi, MiniLLMOptions(alpha=0.2, variant="unbiased", single_step=False,
                                                               reward_clip=1e9, lm_weight=0.0), batches=60, seed=5)
    z_reinforce, _ = z_scores(reinforce, exact)
    assert float(z_reinforce.max()) < Z, float(z_reinforce.max())


def test_unbiased_variant_refuses_length_normalisation():
    problems = MiniLLMOptions(variant="unbiased", length_norm=True).validate()
    assert any("length_norm" in p and "unbiased" in p for p in problems), problems
