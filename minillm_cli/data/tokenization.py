"""Tokenisation of instruction examples: prompt and response token ids (docs/method.md §3), and prompts for generation.

The small tokenizer helpers (batched encoding, the eos id, the token-limit check) are public: text packing
(``texts.pack_texts``) uses them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import MinillmError
from .prompts import format_prompt


@dataclass
class TokenizedExample:
    """One example as token ids: the prompt the model sees (BOS included) and the response it learns."""

    prompt_ids: list
    response_ids: list   # ends with eos unless cut by max_response_tokens
    index: int           # position in the list given to tokenize_examples


@dataclass
class TokenizedData:
    """The tokenized examples of a list, and how many were dropped (prompt too long) or cut (response too long)."""

    examples: list
    dropped_long_prompt: int
    truncated_responses: int


ENCODE_BATCH = 512   # texts per tokenizer call (pack_texts gathers documents in batches of this size too)


def encode_texts(tokenizer, texts: Sequence) -> list:
    """Token ids of each text, without special tokens (the templates carry their own)."""
    ids = []
    for start in range(0, len(texts), ENCODE_BATCH):
        chunk = list(texts[start:start + ENCODE_BATCH])
        if not chunk:
            continue
        # verbose=False: long documents would otherwise warn about model_max_length, which does not apply
        # to encoding (prompts are cut by max_prompt_tokens, texts by packing).
        ids.extend(list(x) for x in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def eos_token_id(tokenizer) -> int:
    """The tokenizer's end-of-sequence id; a tokenizer without one is a MinillmError that says how to set it."""
    return _required_token_id(
        tokenizer, "eos_token_id",
        "the tokenizer has no end-of-sequence token (eos_token); set one in its tokenizer_config.json",
    )


def _required_token_id(tokenizer, attribute: str, missing: str) -> int:
    token_id = getattr(tokenizer, attribute, None)
    if token_id is None:
        raise MinillmError(missing)
    return token_id


def _prompt_ids(examples, tokenizer, prompt_format: str, add_bos: bool) -> tuple:
    """(prompt texts, their token ids without BOS, the ids the model sees)."""
    prompts = [format_prompt(example, prompt_format, tokenizer) for example in examples]
    raw = encode_texts(tokenizer, prompts)
    if not add_bos:
        return prompts, raw, raw
    bos = _required_token_id(
        tokenizer, "bos_token_id", "the model family prepends a BOS token, but the tokenizer has none (bos_token)"
    )
    # A chat template may already write the BOS token; a second one would be a prompt the model never saw.
    seen = [ids if ids[:1] == [bos] else [bos] + ids for ids in raw]
    return prompts, raw, seen


def check_token_limit(value, name: str) -> None:
    """A token limit is None (no limit) or a positive integer; anything else is a MinillmError naming ``name``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise MinillmError(f"{name} must be a positive integer, got {value!r}")


def tokenize_examples(
    examples: Sequence,
    tokenizer,
    *,
    prompt_format: str = "alpaca",
    add_bos: bool = False,
    max_prompt_tokens: Optional[int] = 256,
    max_response_tokens: Optional[int] = None,
) -> TokenizedData:
    """Prompt and response token ids of each example (docs/method.md §3).

    response = encode(prompt + output) + [eos] minus the prompt's tokens. Where BPE merges across the
    boundary (the full encoding does not start with the prompt's), the response is encode(output) + [eos]
    instead, so the prompt tokens are always exactly those generation sees. Prompts longer than
    ``max_prompt_tokens`` (BOS included) are dropped and counted; responses longer than
    ``max_response_tokens`` are cut (losing their eos) and counted.
    """
    check_token_limit(max_prompt_tokens, "max_prompt_tokens")
    check_token_limit(max_response_tokens, "max_response_tokens")
    eos = eos_token_id(tokenizer)
    examples = list(examples)
    prompts, raw, seen = _prompt_ids(examples, tokenizer, prompt_format, add_bos)
    keep = [i for i in range(len(examples)) if max_prompt_tokens is None or len(seen[i]) <= max_prompt_tokens]
    full = encode_texts(tokenizer, [prompts[i] + examples[i].output for i in keep])
    result, truncated, mismatched = [], 0, []
    responses: dict = {}
    for i, ids in zip(keep, full):
        prompt = raw[i]
        if ids[:len(prompt)] == prompt:
            responses[i] = ids[len(prompt):] + [eos]
        else:
            mismatched.append(i)
    for i, ids in zip(mismatched, encode_texts(tokenizer, [examples[i].output for i in mismatched])):
        responses[i] = ids + [eos]
    for i in keep:
        response = responses[i]
        if max_response_tokens is not None and len(response) > max_response_tokens:
            response = response[:max_response_tokens]
            truncated += 1
        result.append(TokenizedExample(prompt_ids=seen[i], response_ids=response, index=i))
    return TokenizedData(
        examples=result, dropped_long_prompt=len(examples) - len(keep), truncated_responses=truncated
    )


def tokenize_prompts(
    examples: Sequence,
    tokenizer,
    *,
    prompt_format: str = "alpaca",
    add_bos: bool = False,
    max_prompt_tokens: Optional[int] = 256,
) -> tuple:
    """Prompt token ids for generation: (ids of kept prompts, their indices in ``examples``, number dropped)."""
    check_token_limit(max_prompt_tokens, "max_prompt_tokens")
    examples = list(examples)
    _, _, seen = _prompt_ids(examples, tokenizer, prompt_format, add_bos)
    kept = [i for i, ids in enumerate(seen) if max_prompt_tokens is None or len(ids) <= max_prompt_tokens]
    return [seen[i] for i in kept], kept, len(examples) - len(kept)
