"""Scores beside Rouge-L: exact match, Rouge-L by reference length, Dist-4, mean ± std, test loss.

Word-level counts (exact match, length buckets, Dist-4, the ≥ 11-token filters of S-NI and UnNI) all use one
tokenisation: the words Rouge-L itself compares, i.e. ``rouge_score``'s default tokenizer without stemming
(lower-cased, every run of characters other than a-z and 0-9 is a separator). So "it's 3.5%" is 4 words
(it, s, 3, 5), and text in non-Latin scripts has no words at all, exactly as Rouge-L sees it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence

# Reference-length buckets of the paper's long-text analysis (docs/method.md §4), in words (see above).
LENGTH_BUCKETS = (("0-5", 0, 5), ("6-10", 6, 10), ("11+", 11, None))


@lru_cache(maxsize=1)
def _word_tokenizer():
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=False)


def words(text: str) -> list:
    """The words of ``text`` as ``rouge_score`` tokenises them (no stemming)."""
    return _word_tokenizer().tokenize(text)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 when the prediction has exactly the words of some reference (case and punctuation ignored), else 0."""
    if isinstance(references, str):
        references = [references]
    predicted = words(prediction)
    return 100.0 if any(words(reference) == predicted for reference in references) else 0.0


def length_bucket(reference: str) -> str:
    """The bucket name of a gold response by its word count: "0-5", "6-10" or "11+"."""
    count = len(words(reference))
    for name, low, high in LENGTH_BUCKETS:
        if count >= low and (high is None or count <= high):
            return name
    raise AssertionError("the buckets cover every count")


def bucket_means(scores: Sequence[float], references: Sequence[Sequence[str]]) -> dict:
    """Mean score per reference-length bucket; an example is bucketed by its first (gold) reference.

    Returns ``{bucket: {"mean": float or None, "count": int}}``; an empty bucket has mean None.
    """
    sums = {name: 0.0 for name, _, _ in LENGTH_BUCKETS}
    counts = {name: 0 for name, _, _ in LENGTH_BUCKETS}
    for score, refs in zip(scores, references):
        name = length_bucket(refs[0] if refs else "")
        sums[name] += score
        counts[name] += 1
    return {
        name: {"mean": sums[name] / counts[name] if counts[name] else None, "count": counts[name]}
        for name, _, _ in LENGTH_BUCKETS
    }


def distinct_n(texts: Sequence[str], n: int = 4) -> float:
    """Dist-n ×100: distinct word n-grams over all n-grams of all ``texts`` together (0 when there are none)."""
    seen, total = set(), 0
    for text in texts:
        tokens = words(text)
        for start in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[start:start + n]))
            total += 1
    return 100.0 * len(seen) / total if total else 0.0


def mean_std(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation with n − 1); the deviation of a single value is 0."""
    values = [float(v) for v in values]
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_loss(
    model,
    tokenizer,
    examples: Sequence,
    *,
    prompt_format: str = "alpaca",
    add_bos: bool = False,
    max_prompt_tokens: Optional[int] = 256,
    batch_size: int = 8,
    vocab_width: Optional[int] = None,
) -> dict:
    """Per-token cross-entropy of the references under teacher forcing.

    Every reference of every example counts as one (prompt, response) pair, tokenised exactly as for training
    (docs/method.md §3: response = tokens of prompt + output + eos minus the prompt's, eos included). The loss is
    Σ −log q(token) over all response tokens / their number, so long references weigh by their length, as in
    the engine's validation loss. Returns ``{"loss", "tokens", "sequences"}``; the loss is None when no
    reference survived (every prompt longer than ``max_prompt_tokens``).
    """
    import torch

    from ..data.batches import make_batch
    from ..data.instructions import InstructionExample
    from ..data.tokenization import tokenize_examples
    from ..models.forward import forward_hidden
    from ..losses.head import lm_loss

    pairs = [
        InstructionExample(instruction=e.instruction, input=e.input, references=[reference])
        for e in examples for reference in (e.references or [""])
    ]
    tokenized = tokenize_examples(
        pairs, tokenizer, prompt_format=prompt_format, add_bos=add_bos, max_prompt_tokens=max_prompt_tokens,
        max_response_tokens=None,
    ).examples
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(tokenized), batch_size):
                chunk = tokenized[start:start + batch_size]
                batch = make_batch(
                    [e.prompt_ids for e in chunk], [e.response_ids for e in chunk], tokenizer.pad_token_id
                ).to(device)
                total += float(lm_loss(forward_hidden(model, batch, vocab_width), batch.labels, batch.loss_mask, num_tokens=1))
                tokens += batch.num_tokens
    finally:
        model.train(was_training)
    # None rather than NaN when nothing was scored: NaN is not valid JSON.
    return {"loss": total / tokens if tokens else None, "tokens": tokens, "sequences": len(tokenized)}
