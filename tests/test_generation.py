import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.models.generation import GenerationStats, SamplingConfig, generate, left_pad
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def lm(tiny_models):
    ref = resolve_model(str(tiny_models("llama")))
    return load_model(ref), load_tokenizer(ref)


def _prompts(tokenizer):
    texts = ["The capital of France is", "List three colours:", "Two plus two", "Is this review positive?"]
    return [tokenizer.encode(t) for t in texts] * 2


def test_left_pad_aligns_prompt_ends():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_same_seed_same_samples_other_seed_other_samples(lm):
    model, tokenizer = lm
    config = SamplingConfig(max_new_tokens=12)
    first = generate(model, tokenizer, _prompts(tokenizer), config, seed=10, batch_size=3)
    again = generate(model, tokenizer, _prompts(tokenizer), config, seed=10, batch_size=3)
    other = generate(model, tokenizer, _prompts(tokenizer), config, seed=20, batch_size=3)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]


def _greedy_reference(model, prompt, steps, eos):
    """Greedy decoding by re-running the whole sequence each step: no cache, no padding."""
    ids = list(prompt)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            next_id = int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
        if next_id == eos:
            break
        out.append(next_id)
        ids.append(next_id)
    return out


def test_batched_greedy_with_kv_cache_matches_unbatched_reference(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)[:4]
    results = generate(model, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=10), batch_size=4)
    for prompt, result in zip(prompts, results):
        assert result.token_ids == _greedy_reference(model, prompt, 10, tokenizer.eos_token_id)


def test_max_new_tokens_and_stats(lm):
    model, tokenizer = lm
    stats = GenerationStats()
    results = generate(model, tokenizer, _prompts(tokenizer), SamplingConfig(max_new_tokens=5), seed=1, stats=stats)
    assert all(len(r.token_ids) <= 5 for r in results)
    assert all(len(r.token_ids) < 5 for r in results if r.finished)
    assert stats.sequences == 8 and stats.tokens == sum(len(r.token_ids) + r.finished for r in results)
    assert stats.tokens_per_second > 0


def test_top_k_one_is_greedy(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)[:4]
    greedy = generate(model, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=8))
    top1 = generate(model, tokenizer, prompts, SamplingConfig(top_k=1, max_new_tokens=8), seed=3)
    assert [g.token_ids for g in greedy] == [g.token_ids for g in top1]


def test_bad_sampling_settings_are_reported_together():
    with pytest.raises(MinillmError) as info:
        SamplingConfig(temperature=-1, top_p=0, max_new_tokens=0)
    message = str(info.value)
    assert "temperature" in message and "top_p" in message and "max_new_tokens" in message
