"""Coin-mixed rollouts with a lazy teacher (minillm_cli/training/rollout.py and coin_sampling.py; docs/concepts.md, ``minillm``).

At each step a coin c ~ Bernoulli(α) picks the teacher p or the student q; since c is independent of the prefix,
every row's token follows α·p + (1−α)·q exactly (Gu et al. 2023, §2.2), whether one coin serves the whole batch
(``coins="step"``) or each row has its own (``coins="row"``). The teacher runs only where a coin came up 1 (plus
one final catch-up), and its catch-up passes still give log p of every sampled token.
"""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.models.generation import SamplingConfig
from minillm_cli.models import load_model, load_tokenizer, resolve_model
from minillm_cli.training.coin_sampling import Coins
from minillm_cli.training.rollout import sample_rollouts
from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

Z = 5.0   # standard errors allowed per vocabulary entry (384 entries: a false alarm is ~1e-4 per test)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(student, teacher, tokenizer): two tiny llamas sharing one tokenizer."""
    root = tmp_path_factory.mktemp("lazy-teacher-models")
    shared = make_tiny_tokenizer()
    student_dir = make_tiny_model(root / "s", "llama", layers=2, seed=1, tokenizer=shared)
    teacher_dir = make_tiny_model(root / "t", "llama", layers=3, seed=2, tokenizer=shared)
    student = load_model(resolve_model(str(student_dir)))
    teacher = load_model(resolve_model(str(teacher_dir)))
    return student, teacher, load_tokenizer(resolve_model(str(student_dir)))


@pytest.fixture(scope="module")
def sharp_pair(pair):
    """The pair with scaled output logits: peaked distributions, so a few thousand draws estimate them well."""
    student, teacher, tokenizer = pair
    sharp = []
    for model in (student, teacher):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(4.0)
        sharp.append(model)
    return sharp[0], sharp[1], tokenizer


def _prompts(tokenizer):
    texts = ["The capital of France is", "Two plus", "List three colours: red, green and", "Is this review positive?"]
    return [tokenizer.encode(t) for t in texts]


def _next_token_probs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([list(ids)]), use_cache=False).logits[0, -1].float().softmax(-1)


def _full_logprobs(model, prompt, response):
    """log-probs of every response token from one uncached, unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(response)]), use_cache=False).logits[0].float()
    start = len(prompt) - 1
    return logits[start:start + len(response)].log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


# --- each row's tokens follow the mixture ------------------------------------------------------------------------


def _frequency_z_scores(tokens, groups, p, q, alpha, shared):
    """|empirical − mixture| of each vocabulary entry, in standard errors of the empirical frequency under the
    hypothesis that each row's token is drawn from α·p + (1−α)·q. ``groups`` [N] is each row's batch: with a
    coin shared by the batch, the n_b rows of batch b are independent given the coin, so the count S_b of an
    entry has Var(S_b − m·n_b) = n_b·(m − α p² − (1−α) q²) + n_b²·α(1−α)(p − q)²; with one coin per row the
    rows are independent and it is n_b·m(1−m). The floor (0.5 / N) covers entries too rare for the normal
    approximation."""
    mixture = alpha * p + (1 - alpha) * q
    n = tokens.numel()
    counts = torch.bincount(tokens, minlength=p.numel()).double()
    sizes = torch.bincount(groups).double()
    sizes = sizes[sizes > 0]
    p, q, m = p.double(), q.double(), mixture.double()
    if shared:
        within = m - alpha * p * p - (1 - alpha) * q * q
        between = alpha * (1 - alpha) * (p - q) ** 2
        variance = (sizes.sum() * within + (sizes ** 2).sum() * between) / n ** 2
    else:
        variance = m * (1 - m) / n
    floor = 0.5 / n
    return (counts / n - m).abs() / (variance.clamp(min=0).sqrt() + floor), counts / n


@pytest.mark.parametrize("coins", ["step", "row"])
def test_each_rows_first_two_tokens_follow_the_mixture(sharp_pair, coins):
    student, teacher, tokenizer = sharp_pair
    prompt = tokenizer.encode("The capital of France is")
    alpha, draws, size = 0.3, 4000, 4
    rollouts = sample_rollouts(
        student, teacher, tokenizer, [prompt] * draws, SamplingConfig(max_new_tokens=2), alpha=alpha, seed=7,
        batch_size=size, coins=coins,
    )
    batch_of_row = torch.arange(draws) // size
    first = torch.tensor([r[0] for r in rollouts.responses])
    p, q = _next_token_probs(teacher, prompt), _next_token_probs(student, prompt)
    assert 0.5 * float((p - q).abs().sum()) > 0.3, "teacher and student must differ for the test to mean something"
    z, _ = _frequency_z_scores(first, batch_of_row, p, q, alpha, coins == "step")
    assert float(z.max()) < Z, float(z.max())
    z_student, _ = _frequency_z_scores(first, batch_of_row, q, q, alpha, coins == "step")
    assert float(z_student.max()) > 3 * Z                # the test tells the mixture from the student alone

    # The second token, given the most frequent first one (responses that ended at the first token excluded).
    token = int(first.bincount().argmax())
    rows = [i for i, r in enumerate(rollouts.responses) if r[0] == token and len(r) == 2]
    assert len(rows) > 500
    second = torch.tensor([rollouts.responses[i][1] for i in rows])
    p2, q2 = _next_token_probs(teacher, prompt + [token]), _next_token_probs(student, prompt + [token])
    assert 0.5 * float((p2 - q2).abs().sum()) > 0.2
    z, _ = _frequency_z_scores(second, batch_of_row[rows], p2, q2, alpha, coins == "step")
    assert float(z.max()) < Z, float(z.max())
    z_student, _ = _frequency_z_scores(second, batch_of_row[rows], q2, q2, alpha, coins == "step")
    assert float(z_student.max()) > 2 * Z


def test_shared_coins_correlate_the_rows_of_a_batch(sharp_pair):
    """With one coin per step, a batch whose coin came up 1 samples every row from the teacher: the fraction of
    rows whose first token is the teacher's favourite varies between batches far more than with per-row coins."""
    student, teacher, tokenizer = sharp_pair
    prompt = tokenizer.encode("The capital of France is")
    p, q = _next_token_probs(teacher, prompt), _next_token_probs(student, prompt)
    favourite = int((p - q).argmax())
    spreads = {}
    for coins in ("step", "row"):
        rollouts = sample_rollouts(student, teacher, tokenizer, [prompt] * 1600, SamplingConfig(max_new_tokens=1),
                                   alpha=0.3, seed=3, batch_size=16, coins=coins)
        hits = torch.tensor([float(r[0] == favourite) for r in rollouts.responses]).reshape(-1, 16)
        spreads[coins] = float(hits.mean(-1).var())
    assert spreads["step"] > 3 * spreads["row"], spreads


# --- the catch-up passes give exact log-probs ----------------------------------------------------------------------


def _assert_logprobs_match_full_forward(rollouts, student, teacher, alpha):
    for i, (prompt, response) in enumerate(zip(rollouts.prompts, rollouts.responses)):
        assert len(rollouts.teacher_logprobs[i]) == len(rollouts.old_logprobs[i]) == len(response) >= 1
        q = _full_logprobs(student, prompt, response)
        p = _full_logprobs(teacher, prompt, response)
        torch.testing.assert_close(torch.tensor(rollouts.old_logprobs[i]), q, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(rollouts.teacher_logprobs[i]), p, atol=1e-4, rtol=0)
        mixed = torch.log(alpha * p.exp() + (1 - alpha) * q.exp())
        torch.testing.assert_close(torch.tensor(rollouts.mixed_logprobs[i]), mixed, atol=1e-4, rtol=0)


@pytest.mark.parametrize("coins", ["step", "row"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_catch_up_logprobs_equal_a_full_forward_with_padding_and_finished_rows(pair, coins, alpha):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 1                      # left padding in the batch
    config = SamplingConfig(max_new_tokens=12)
    plain = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=alpha, seed=4, coins=coins)
    _assert_logprobs_match_full_forward(plain, student, teacher, alpha)
    # End-of-sequence: a token row 0 samples early; rows that then finish stop, the others go on.
    eos = plain.responses[0][min(2, len(plain.responses[0]) - 1)]
    fake = SimpleNamespace(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    stopped = sample_rollouts(student, teacher, fake, prompts, config, alpha=alpha, seed=4, coins=coins)
    assert stopped.finished[0] and stopped.responses[0][-1] == eos and len(stopped.responses[0]) <= 3
    assert not all(stopped.finished) or len({len(r) for r in stopped.responses}) > 1
    for response, done in zip(stopped.responses, stopped.finished):
        assert (eos in response) == done and (not done or response.index(eos) == len(response) - 1)
    _assert_logprobs_match_full_forward(stopped, student, teacher, alpha)


def test_other_families_with_learned_positions(tmp_path):
    """gpt2 has learned absolute positions: the catch-up passes' position ids must be right for padded rows."""
    shared = make_tiny_tokenizer()
    student = load_model(resolve_model(str(make_tiny_model(tmp_path / "s", "gpt2", seed=1, tokenizer=shared))))
    teacher_dir = make_tiny_model(tmp_path / "t", "gpt2", layers=3, seed=2, tokenizer=shared)
    teacher = load_model(resolve_model(str(teacher_dir)))
    tokenizer = load_tokenizer(resolve_model(str(tmp_path / "s")))
    rollouts = sample_rollouts(student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=8),
                               alpha=0.4, seed=4)
    _assert_logprobs_match_full_forward(rollouts, student, teacher, 0.4)


# --- the teacher runs only where a coin asks for it ----------------------------------------------------------------


class _PassRecorder:
    """Counts the teacher body's forward passes and how many tokens each one feeds."""

    def __init__(self, teacher):
        self.fed = []
        self.handle = teacher.base_model.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        self.fed.append(int(kwargs["input_ids"].shape[1]))

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("coins", ["step", "row"])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_teacher_passes_only_where_a_coin_came_up(pair, coins, alpha):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    steps, seed = 15, 9
    never = SimpleNamespace(eos_token_id=10_000, pad_token_id=tokenizer.pad_token_id)   # no row ever finishes
    recorder = _PassRecorder(teacher)
    try:
        rollouts = sample_rollouts(student, teacher, never, prompts, SamplingConfig(max_new_tokens=steps),
                                   alpha=alpha, seed=seed, batch_size=len(prompts), coins=coins)
    finally:
        recorder.remove()
    assert [len(r) for r in rollouts.responses] == [steps] * len(prompts)
    flipper = Coins(coins, alpha, seed)
    wanted = [t for t in range(steps) if bool(flipper.flip(len(prompts)).any())]
    # Pass i catches up to step wanted[i] (the first feeds the prompt too); the final one to the last token.
    prompt_width = max(len(p) for p in prompts)
    reached = [prompt_width + t for t in wanted]
    if not wanted or wanted[-1] < steps - 1:
        reached.append(prompt_width + steps - 1)
    assert recorder.fed == [b - a for a, b in zip([0] + reached, reached)]
    if alpha == 0.0:
        assert len(recorder.fed) == 1                     # one pass over the finished sequences, none while sampling
    if alpha == 1.0:
        assert recorder.fed == [prompt_width] + [1] * (steps - 1)
    if 0 < alpha < 1:
        assert 0 < len(wanted) < steps
        if coins == "step":
            assert len(wanted) < steps / 2


def test_coin_draws_follow_alpha():
    for mode, size in (("step", 8), ("row", 8)):
        flipper = Coins(mode, 0.2, seed=0)
        heads = torch.stack([flipper.flip(size) for _ in range(5000)]).double()
        assert abs(float(heads.mean()) - 0.2) < 5 * math.sqrt(0.2 * 0.8 / (5000 if mode == "step" else 40_000))
        if mode == "step":
            assert bool((heads == heads[:, :1]).all())    # one coin for every row of a step
        else:
            assert float(heads.std(-1).mean()) > 0.2       # rows differ within a step


# --- seeds, α = 0 and the eager sampler -----------------------------------------------------------------------------


@pytest.mark.parametrize("coins", ["step", "row"])
def test_seed_determinism(pair, coins):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer) * 2
    config = SamplingConfig(max_new_tokens=8)
    first = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.3, seed=5, batch_size=3, coins=coins)
    again = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.3, seed=5, batch_size=3, coins=coins)
    other = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.3, seed=6, batch_size=3, coins=coins)
    assert first.responses == again.responses
    assert first.teacher_logprobs == again.teacher_logprobs and first.mixed_logprobs == again.mixed_logprobs
    assert first.responses != other.responses


@pytest.mark.parametrize("config", [SamplingConfig(max_new_tokens=10), SamplingConfig(top_p=0.8, max_new_tokens=10)])
def test_alpha_zero_draws_the_eager_samplers_tokens(pair, config):
    """With α = 0 no coin is drawn and the token stream is the eager sampler's: the same tokens and log q, and
    log p (one pass after sampling instead of one a step) equal to float precision."""
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    eager = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.0, seed=2, coins="none")
    for coins in ("step", "row"):
        lazy = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.0, seed=2, coins=coins)
        assert lazy.responses == eager.responses and lazy.finished == eager.finished
        assert lazy.old_logprobs == eager.old_logprobs == lazy.mixed_logprobs
        for mine, theirs in zip(lazy.teacher_logprobs, eager.teacher_logprobs):
            torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), atol=1e-4, rtol=0)


def test_greedy_mixture_uses_the_eager_sampler(pair):
    """Temperature 0 takes the argmax of p̃, which needs p at every step: the coins do not apply."""
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    config = SamplingConfig(temperature=0, max_new_tokens=8)
    eager = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.3, seed=0, coins="none")
    for coins in ("step", "row"):
        assert sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.3, seed=1,
                               coins=coins).responses == eager.responses


def test_unknown_coins_are_rejected(pair):
    student, teacher, tokenizer = pair
    with pytest.raises(MinillmError, match="coins"):
        sample_rollouts(student, teacher, tokenizer, _prompts(tokenizer)[:1], SamplingConfig(max_new_tokens=2),
                        coins="batch")


# --- the catch-up passes' hidden states serve the objective's teacher pass ----------------------------------------


@pytest.mark.parametrize("coins", ["step", "row"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_rollout_teacher_hidden_states_equal_a_full_forward(pair, coins, alpha):
    """Each row's recorded teacher states at response positions 0 … T−1 are those of one uncached, unpadded
    forward pass (left padding in the sampling batch, a row that finishes early), and ``to_batch`` lays them
    where ``forward_hidden`` over the training batch has them: on the loss mask."""
    from minillm_cli.models.forward import forward_hidden

    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    plain = sample_rollouts(student, teacher, tokenizer, prompts, SamplingConfig(max_new_tokens=10), alpha=alpha,
                            seed=4, coins=coins)
    eos = plain.responses[0][min(2, len(plain.responses[0]) - 1)]
    fake = SimpleNamespace(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    rollouts = sample_rollouts(student, teacher, fake, prompts, SamplingConfig(max_new_tokens=10), alpha=alpha,
                               seed=4, coins=coins)
    assert rollouts.finished[0] and len({len(r) for r in rollouts.responses}) > 1
    for prompt, response, states in zip(rollouts.prompts, rollouts.responses, rollouts.teacher_hidden):
        with torch.no_grad():
            full = teacher.base_model(torch.tensor([prompt + response])).last_hidden_state[0]
        assert states.shape == (len(response), full.shape[-1])
        torch.testing.assert_close(states, full[len(prompt) - 1:len(prompt) - 1 + len(response)], atol=1e-4, rtol=0)

    batch = rollouts.to_batch(tokenizer.pad_token_id)
    with torch.no_grad():
        reference = forward_hidden(teacher, batch).hidden
    kept = batch.extras["teacher_hidden"]
    torch.testing.assert_close(kept[batch.loss_mask], reference[batch.loss_mask], atol=1e-4, rtol=0)
    assert not kept[~batch.loss_mask].any()


def test_eager_sampler_leaves_the_teacher_pass_to_the_objective(pair):
    student, teacher, tokenizer = pair
    rollouts = sample_rollouts(student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=4),
                               alpha=0.3, seed=4, coins="none")
    assert rollouts.teacher_hidden is None
    assert "teacher_hidden" not in rollouts.to_batch(tokenizer.pad_token_id).extras


def test_engine_teacher_forward_reads_a_rollouts_kept_states(pair):
    """``Engine.teacher_forward`` on a rollout batch that carries the teacher's states runs no teacher pass, and
    the minillm loss and gradients from those states equal those from a fresh teacher pass (float noise)."""
    from minillm_cli.builtin.objectives.minillm import MiniLLM, MiniLLMOptions
    from minillm_cli.models.forward import forward_hidden
    from minillm_cli.objective import StepContext
    from minillm_cli.training.engine import Engine

    student, teacher, tokenizer = pair
    width = teacher.get_output_embeddings().weight.shape[0]
    rollouts = sample_rollouts(student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=8),
                               alpha=0.3, seed=5)
    batch = rollouts.to_batch(tokenizer.pad_token_id)
    engine = SimpleNamespace(teacher=teacher, teacher_cache=None, vocab_width=width, teacher_partitioned=False,
                             objective=SimpleNamespace(name="minillm"))
    recorder = _PassRecorder(teacher)
    try:
        kept = Engine.teacher_forward(engine, batch)
    finally:
        recorder.remove()
    assert recorder.fed == [] and kept.hidden is batch.extras["teacher_hidden"]

    student = copy.deepcopy(student).train().requires_grad_(True)

    def loss_and_grads(teacher_forward):
        student.zero_grad()
        ctx = StepContext(step=0, num_tokens=float(batch.num_tokens), student=student, teacher=teacher,
                          vocab_width=width, chunk_tokens=7, student_forward=lambda b: forward_hidden(student, b),
                          teacher_forward=teacher_forward, sample_student=None, sample_teacher=None, lm_batch=None,
                          rng=None, training_progress=0.0, sample_mixed=None)
        loss = MiniLLM(MiniLLMOptions(lm_weight=0.0)).loss(batch, ctx).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters() if p.grad is not None]

    def fresh(b):
        with torch.inference_mode():
            return forward_hidden(teacher, b, width)

    loss_kept, grads_kept = loss_and_grads(lambda b: Engine.teacher_forward(engine, b))
    loss_fresh, grads_fresh = loss_and_grads(fresh)
    torch.testing.assert_close(loss_kept, loss_fresh, atol=1e-5, rtol=1e-5)
    assert len(grads_kept) == len(grads_fresh) > 0
    for a, b in zip(grads_kept, grads_fresh):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
