import copy

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


def test_ngram_ban_matches_transformers_processor():
    """The incremental table bans exactly what transformers' NoRepeatNGramLogitsProcessor bans on the same
    unpadded sequence, at every length and n."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    from minillm_cli.models.sampling_loop import NGramBan

    generator = torch.Generator().manual_seed(0)
    for size in (1, 2, 3, 6):
        sequence = torch.randint(0, 5, (40,), generator=generator).tolist()   # 5 symbols: many repeats
        ban = NGramBan(size, [sequence[:3]])
        for length in range(3, len(sequence)):
            scores = torch.zeros(1, 5)
            expected = NoRepeatNGramLogitsProcessor(size)(torch.tensor([sequence[:length]]), scores)
            assert ban.banned(0) == set(torch.isinf(expected[0]).nonzero().flatten().tolist()), (size, length)
            ban.append(0, sequence[length])


def test_sampled_responses_repeat_no_ngram(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    results = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=40, no_repeat_ngram_size=2), seed=5)
    for prompt, result in zip(prompts, results):
        sequence = list(prompt) + result.token_ids
        bigrams = list(zip(sequence, sequence[1:]))
        assert len(bigrams) == len(set(bigrams))
    # Greedy decoding of a random tiny model repeats itself quickly; the ban must change what it says.
    greedy = SamplingConfig(temperature=0, max_new_tokens=40)
    free = generate(model, tokenizer, prompts[:2], greedy)
    banned = generate(model, tokenizer, prompts[:2], SamplingConfig(temperature=0, max_new_tokens=40, no_repeat_ngram_size=2))
    assert [g.token_ids for g in free] != [g.token_ids for g in banned]


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.8)])
def test_first_token_frequencies_follow_the_filtered_softmax(lm, settings):
    """Four thousand first tokens of one prompt against the distribution transformers' own warpers give
    (temperature, top-k, top-p in its order): Pearson's chi-square over the tokens the filters keep (those with
    an expected count under 5 pooled) within 5 standard deviations of its mean, the degrees of freedom."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    model, tokenizer = lm
    prompt = tokenizer.encode("The capital of France is")
    config = SamplingConfig(max_new_tokens=1, **settings)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1].double()
    warpers = []
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    for warper in warpers:
        logits = warper(torch.tensor([prompt]), logits)
    expected = logits.softmax(-1)[0]
    eos = tokenizer.eos_token_id
    results = generate(model, tokenizer, [prompt] * 4000, config, seed=11, batch_size=1000)
    counts = torch.zeros_like(expected)
    for result in results:
        counts[result.token_ids[0] if result.token_ids else eos] += 1
    assert float(counts[expected == 0].sum()) == 0.0      # nothing the filters removed is ever drawn
    wanted = expected * counts.sum()
    large = wanted >= 5
    observed_bins = torch.cat([counts[large], counts[~large & (expected > 0)].sum().reshape(1)])
    wanted_bins = torch.cat([wanted[large], wanted[~large & (expected > 0)].sum().reshape(1)])
    keep = wanted_bins > 0
    chi_square = float(((observed_bins - wanted_bins)[keep] ** 2 / wanted_bins[keep]).sum())
    freedom = int(keep.sum()) - 1
    assert freedom >= 10 and chi_square < freedom + 5 * (2 * freedom) ** 0.5, (chi_square, freedom)


def test_a_lora_wrapped_model_decodes_with_its_own_cache_argument(lm):
    """peft's wrapper passes **kwargs through: the decoding loop must call the wrapped model's cache argument by its
    current name (no deprecation path) and decode what the uncached model gives."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from minillm_cli.models.decoding import forward_parameters

    model, tokenizer = lm
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "cache" in forward_parameters(wrapped) or "cache" not in forward_parameters(model)
    prompts = _prompts(tokenizer)[:2]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        results = generate(wrapped, tokenizer, prompts, SamplingConfig(temperature=0, max_new_tokens=6), batch_size=2)
    for prompt, result in zip(prompts, results):
        assert result.token_ids == _greedy_reference(wrapped, prompt, 6, tokenizer.eos_token_id)
