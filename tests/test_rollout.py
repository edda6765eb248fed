import copy
import math
from types import SimpleNamespace

import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.models.generation import SamplingConfig, generate
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
from minillm_cli.models.decoding import filter_logits
from minillm_cli.training.rollout import Rollouts, sample_rollouts
from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(student, teacher, tokenizer): two tiny llamas sharing one tokenizer."""
    root = tmp_path_factory.mktemp("rollout-models")
    shared = make_tiny_tokenizer()
    student_dir = make_tiny_model(root / "s", "llama", layers=2, seed=1, tokenizer=shared)
    teacher_dir = make_tiny_model(root / "t", "llama", layers=3, seed=2, tokenizer=shared)
    student = load_model(resolve_model(str(student_dir)))
    teacher = load_model(resolve_model(str(teacher_dir)))
    return student, teacher, load_tokenizer(resolve_model(str(student_dir)))


def _prompts(tokenizer):
    texts = ["The capital of France is", "Two plus", "List three colours: red, green and", "Is this review positive?"]
    return [tokenizer.encode(t) for t in texts]


def _full_logprobs(model, prompt, response):
    """log-probs of every response token from one uncached, unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(response)]), use_cache=False).logits[0].float()
    start = len(prompt) - 1
    logprobs = logits[start:start + len(response)].log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def _strip_eos(rollouts: Rollouts, eos):
    return [r[:-1] if done else r for r, done in zip(rollouts.responses, rollouts.finished)]


def test_kv_cache_logprobs_match_full_forward(pair):
    student, teacher, tokenizer = pair
    alpha = 0.2
    rollouts = sample_rollouts(
        student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=12), alpha=alpha, seed=3,
        batch_size=4,
    )
    assert len(rollouts.responses) == 4
    for i, (prompt, response) in enumerate(zip(rollouts.prompts, rollouts.responses)):
        assert 1 <= len(response) <= 12
        assert len(rollouts.old_logprobs[i]) == len(rollouts.teacher_logprobs[i]) == len(response)
        q = _full_logprobs(student, prompt, response)
        p = _full_logprobs(teacher, prompt, response)
        torch.testing.assert_close(torch.tensor(rollouts.old_logprobs[i]), q, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(rollouts.teacher_logprobs[i]), p, atol=1e-4, rtol=0)
        mixed = torch.log(alpha * p.exp() + (1 - alpha) * q.exp())
        torch.testing.assert_close(torch.tensor(rollouts.mixed_logprobs[i]), mixed, atol=1e-4, rtol=0)
        expected_w = (q - mixed).exp()
        torch.testing.assert_close(torch.tensor(rollouts.importance_weights()[i]), expected_w, atol=1e-4, rtol=1e-4)


def test_alpha_zero_is_pure_student_sampling(pair):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    rollouts = sample_rollouts(
        student, teacher, tokenizer, prompts, SamplingConfig(top_k=1, max_new_tokens=10), alpha=0.0, seed=0,
    )
    assert all(w == 1.0 for row in rollouts.importance_weights() for w in row)
    assert rollouts.mixed_logprobs == rollouts.old_logprobs
    greedy = generate(student, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=10), batch_size=4)
    assert _strip_eos(rollouts, tokenizer.eos_token_id) == [g.token_ids for g in greedy]
    assert rollouts.finished == [g.finished for g in greedy]


def test_alpha_one_top_k_one_is_teacher_greedy(pair):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    rollouts = sample_rollouts(
        student, teacher, tokenizer, prompts, SamplingConfig(top_k=1, max_new_tokens=10), alpha=1.0, seed=0,
    )
    assert rollouts.mixed_logprobs == rollouts.teacher_logprobs
    greedy = generate(teacher, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=10), batch_size=4)
    assert _strip_eos(rollouts, tokenizer.eos_token_id) == [g.token_ids for g in greedy]
    # the student differs from the teacher, so its greedy continuations differ too: the test can tell them apart
    student_greedy = generate(student, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=10))
    assert [g.token_ids for g in student_greedy] != [g.token_ids for g in greedy]


def _sharpened(model, factor):
    """A copy with scaled output logits: peaked distributions, so 4000 draws estimate them well."""
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        sharp.get_output_embeddings().weight.mul_(factor)
    return sharp


def test_first_token_frequencies_follow_the_mixture(pair):
    student, teacher, tokenizer = pair
    student, teacher = _sharpened(student, 4.0), _sharpened(teacher, 4.0)
    prompt = tokenizer.encode("The capital of France is")
    alpha, draws = 0.2, 4000
    # Per-row coins: the 4000 draws are then independent. With one coin per step for the batch (coins="step") each
    # row's marginal is the mixture too, but 4 batches draw only 4 coins (tests/test_lazy_teacher.py checks it).
    rollouts = sample_rollouts(
        student, teacher, tokenizer, [prompt] * draws, SamplingConfig(max_new_tokens=1), alpha=alpha, seed=11,
        batch_size=1000, coins="row",
    )
    with torch.no_grad():
        q = student(torch.tensor([prompt])).logits[0, -1].float().softmax(-1)
        p = teacher(torch.tensor([prompt])).logits[0, -1].float().softmax(-1)
    mixture = alpha * p + (1 - alpha) * q
    counts = torch.bincount(torch.tensor([r[0] for r in rollouts.responses]), minlength=q.numel()).float()
    empirical = counts / draws

    def tv(a, b):
        return 0.5 * float((a - b).abs().sum())

    assert tv(p, q) > 0.3, "teacher and student must differ for the test to mean something"
    assert tv(empirical, mixture) < 0.05
    assert tv(empirical, q) > tv(empirical, mixture) + 0.05  # not the student alone
    # recorded log-probs are those of the drawn token under the unfiltered distributions
    first = torch.tensor([r[0] for r in rollouts.responses[:50]])
    torch.testing.assert_close(
        torch.tensor([m[0] for m in rollouts.mixed_logprobs[:50]]), mixture.log()[first], atol=1e-4, rtol=0
    )


def test_seed_determinism(pair):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer) * 2
    config = SamplingConfig(max_new_tokens=8)
    first = sample_rollouts(student, teacher, tokenizer, prompts, config, seed=5, batch_size=3)
    again = sample_rollouts(student, teacher, tokenizer, prompts, config, seed=5, batch_size=3)
    other = sample_rollouts(student, teacher, tokenizer, prompts, config, seed=6, batch_size=3)
    assert first.responses == again.responses
    assert first.old_logprobs == again.old_logprobs
    assert first.responses != other.responses


def test_to_batch_aligns_with_loss_mask_on_either_side(pair):
    student, teacher, tokenizer = pair
    rollouts = sample_rollouts(
        student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=7), seed=1,
    )
    pad = tokenizer.pad_token_id
    names = ("old_logprobs", "teacher_logprobs", "mixed_logprobs", "importance_weights")
    gathered = {}
    for side in ("right", "left"):
        batch = rollouts.to_batch(pad, padding_side=side)
        assert batch.num_tokens == sum(len(r) for r in rollouts.responses)
        assert batch.source == "student"
        assert batch.labels[batch.loss_mask].tolist() == [t for r in rollouts.responses for t in r]
        for name in names:
            tensor = batch.extras[name]
            assert tensor.dtype == torch.float32 and tensor.shape == batch.loss_mask.shape
            assert bool((tensor[~batch.loss_mask] == 0).all())
        for name, rows in (("old_logprobs", rollouts.old_logprobs), ("mixed_logprobs", rollouts.mixed_logprobs)):
            torch.testing.assert_close(
                batch.extras[name][batch.loss_mask], torch.tensor([v for r in rows for v in r]), atol=0, rtol=0
            )
        # a padded training forward pass over the batch reproduces the sampling-time log-probs
        with torch.no_grad():
            logits = student(**batch.model_inputs()).logits.float()
        recomputed = logits.log_softmax(-1).gather(-1, batch.labels[..., None]).squeeze(-1)
        torch.testing.assert_close(
            recomputed[batch.loss_mask], batch.extras["old_logprobs"][batch.loss_mask], atol=1e-4, rtol=0
        )
        gathered[side] = {name: batch.extras[name][batch.loss_mask] for name in names}
        assert batch.extras["finished"].tolist() == rollouts.finished
    for name in names:
        assert torch.equal(gathered["right"][name], gathered["left"][name])


@pytest.mark.parametrize("config", [SamplingConfig(temperature=0, max_new_tokens=9), SamplingConfig(top_k=1, max_new_tokens=9)])
def test_padding_invariance_against_single_prompt_rollouts(pair, config):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 1
    batched = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.2, seed=0, batch_size=4)
    for i, prompt in enumerate(prompts):
        single = sample_rollouts(student, teacher, tokenizer, [prompt], config, alpha=0.2, seed=0)
        assert single.responses[0] == batched.responses[i]
        for name in ("old_logprobs", "teacher_logprobs", "mixed_logprobs"):
            torch.testing.assert_close(
                torch.tensor(getattr(batched, name)[i]), torch.tensor(getattr(single, name)[0]), atol=1e-4, rtol=0
            )


def test_rows_stop_at_eos_and_others_continue(pair):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)
    config = SamplingConfig(top_k=1, max_new_tokens=10)
    plain = sample_rollouts(student, teacher, tokenizer, prompts, config, alpha=0.0, seed=0)
    # Pretend the 3rd greedy token of row 0 is end-of-sequence: row 0 must stop there, the others go on unchanged
    # (unless they produce that token too).
    eos = plain.responses[0][2]
    fake = SimpleNamespace(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    stopped = sample_rollouts(student, teacher, fake, prompts, config, alpha=0.0, seed=0)
    for before, after, done, olds in zip(plain.responses, stopped.responses, stopped.finished, stopped.old_logprobs):
        cut = before.index(eos) + 1 if eos in before else len(before)
        assert after == before[:cut]
        assert done == (eos in before)
        assert len(olds) == len(after)
    assert stopped.finished[0] and stopped.responses[0][-1] == eos and len(stopped.responses[0]) <= 3
    # when every row has finished, decoding stops early
    only = sample_rollouts(student, teacher, fake, prompts[:1], config, alpha=0.0, seed=0)
    assert only.responses == stopped.responses[:1] and only.finished == [True]


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, SamplingConfig(top_k=2))
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, SamplingConfig(top_p=0.7))
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, SamplingConfig(top_p=0.1))
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]
    assert torch.equal(filter_logits(logits, SamplingConfig()), logits)
    torch.testing.assert_close(filter_logits(logits, SamplingConfig(temperature=2.0)), logits / 2)


def test_invalid_arguments(pair):
    student, teacher, tokenizer = pair
    prompts = _prompts(tokenizer)[:1]
    with pytest.raises(MinillmError, match="alpha"):
        sample_rollouts(student, teacher, tokenizer, prompts, SamplingConfig(max_new_tokens=2), alpha=1.5)
    with pytest.raises(MinillmError, match="no tokens"):
        sample_rollouts(student, teacher, tokenizer, [[]], SamplingConfig(max_new_tokens=2))
    with pytest.raises(MinillmError, match="vocab_width"):
        sample_rollouts(student, teacher, tokenizer, prompts, SamplingConfig(max_new_tokens=2), vocab_width=10_000)


def test_vocab_width_trims_the_distributions(pair):
    student, teacher, tokenizer = pair
    width = 300
    rollouts = sample_rollouts(
        student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=6), seed=2, vocab_width=width,
    )
    assert all(t < width for r in rollouts.responses for t in r)
    prompt, response = rollouts.prompts[0], rollouts.responses[0]
    with torch.no_grad():
        logits = student(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1, :width].float()
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(rollouts.old_logprobs[0]), expected, atol=1e-4, rtol=0)
    assert not math.isclose(sum(rollouts.old_logprobs[0]), float(_full_logprobs(student, prompt, response).sum()))


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_kv_cache_logprobs_other_families(tmp_path, family):
    """Families with learned absolute positions: the explicit position ids must be right for padded rows."""
    shared = make_tiny_tokenizer()
    student = load_model(resolve_model(str(make_tiny_model(tmp_path / "s", family, seed=1, tokenizer=shared))))
    teacher = load_model(resolve_model(str(make_tiny_model(tmp_path / "t", family, layers=3, seed=2, tokenizer=shared))))
    tokenizer = load_tokenizer(resolve_model(str(tmp_path / "s")))
    rollouts = sample_rollouts(student, teacher, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=8), seed=4)
    for i, (prompt, response) in enumerate(zip(rollouts.prompts, rollouts.responses)):
        torch.testing.assert_close(
            torch.tensor(rollouts.old_logprobs[i]), _full_logprobs(student, prompt, response), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            torch.tensor(rollouts.teacher_logprobs[i]), _full_logprobs(teacher, prompt, response), atol=1e-4, rtol=0
        )
