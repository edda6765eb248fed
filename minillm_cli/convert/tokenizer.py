"""A student given a new tokenizer: each new token's embedding made from the old embeddings of its text, verified.

The new tokenizer is an existing one (a directory or a ``tokenizer.json``) or a byte-level BPE trained here with
the ``tokenizers`` library on given text to a given size, with the old tokenizer's special tokens and chat
template. Each new token's input (and, when untied, output) embedding row is:

- the old row of the same token, when the old vocabulary holds it (the same bytes, or a special token of the same
  name, or end-of-sequence for end-of-sequence; ``models.alignment.shared_vocabulary``);
- otherwise the mean of the old rows of the old tokenisation of its text;
- otherwise (a piece of a character's bytes the old tokenizer cannot write alone) the mean of all old rows.

A student cut from its teacher (``convert layers``) holds the teacher's embeddings, so its new rows start from
the teacher's embeddings of each token's text. It then trains across tokenizers (docs/cross-tokenizer.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import MinillmError
from .verify import ConversionReport, ModelSpec, load_source, prepare_out, resolve_source, save_and_verify


def give_tokenizer(source: ModelSpec, out, *, tokenizer: Optional[str] = None, train_on: Optional[str] = None,
                   vocab_size: int = 8192, overwrite: bool = False) -> ConversionReport:
    """The model ``source`` with the tokenizer ``tokenizer``, or one trained on ``train_on`` (``vocab_size``
    entries), its embeddings remade for it (module docstring)."""
    started = time.perf_counter()
    if (tokenizer is None) == (train_on is None):
        raise MinillmError("give the new tokenizer with exactly one of --tokenizer PATH (a tokenizer directory or "
                           "tokenizer.json) or --train-on TEXT (a .txt file, or 'default' for the embedded corpus)")
    ref = resolve_source(source)
    out = prepare_out(out, ref, overwrite)
    model, old = load_source(ref, "fp32")
    if old is None:
        raise MinillmError(f"model '{ref.spec}' has no tokenizer to start the new embeddings from")
    new = load_tokenizer_file(tokenizer) if tokenizer is not None else train_byte_level(train_on, vocab_size, old)
    before = sum(p.numel() for p in model.parameters())
    reused = transplant_embeddings(model, old, new)
    report = save_and_verify("tokenizer", ref, model, new, out, "fp32", started, overwrite=overwrite, cast=False)
    report.notes.append(f"{len(new)} tokens (was {len(old)}; {reused} rows kept from the old vocabulary); "
                        f"parameters {before:,} → {report.parameters:,}")
    if train_on is not None and len(new) < vocab_size:
        report.notes.append(f"the text gave only {len(new)} of the {vocab_size} tokens asked (no pair left to merge): "
                            "train on more text for a larger vocabulary")
    return report


def load_tokenizer_file(path: str):
    """A fast tokenizer from a directory or a ``tokenizer.json``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    location = Path(path).expanduser()
    if location.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(location))
    if not (location / "tokenizer.json").is_file():
        raise MinillmError(f"--tokenizer: '{path}' is neither a tokenizer.json nor a directory holding one")
    return AutoTokenizer.from_pretrained(str(location))


def train_byte_level(text_source: str, vocab_size: int, old):
    """A byte-level BPE of ``vocab_size`` entries trained on ``text_source`` (``data.texts.load_texts``), with the
    old tokenizer's special tokens, roles and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..data.texts import load_texts

    specials = list(dict.fromkeys(t for t in old.all_special_tokens if t))
    if vocab_size < 256 + len(specials) + 1:
        raise MinillmError(f"--vocab-size {vocab_size} is too small: a byte-level tokenizer holds 256 bytes and the "
                           f"{len(specials)} special tokens; give at least {256 + len(specials) + 1}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(load_texts(text_source), trainer=trainer)
    roles = {role: getattr(old, role) for role in ("bos_token", "eos_token", "unk_token", "pad_token")
             if getattr(old, role, None)}
    new = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    new.chat_template = getattr(old, "chat_template", None)
    return new


def transplant_embeddings(model, old, new) -> int:
    """Resize the model's embeddings (and untied head) to ``new`` and fill every row (module docstring); returns
    the number of rows copied from the old vocabulary."""
    import torch

    from ..models.alignment import shared_vocabulary, token_spellings

    input_rows = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    output_rows = None if tied else head.weight.detach().clone()
    same = shared_vocabulary(old, new).teacher_of()   # new id -> old id (the old tokenizer in the teacher's place)
    spellings = token_spellings(new)
    sources = []
    for index in range(len(new)):
        if index in same and same[index] < input_rows.shape[0]:
            sources.append([same[index]])
            continue
        text = spellings[index].decode("utf-8") if _whole_characters(spellings[index]) else ""
        ids = [i for i in old(text, add_special_tokens=False)["input_ids"] if i < input_rows.shape[0]] if text else []
        sources.append(ids)
    model.resize_token_embeddings(len(new))

    def fill(weight, rows):
        mean = rows.mean(0)
        with torch.no_grad():
            for index, ids in enumerate(sources):
                weight[index] = rows[ids].mean(0) if ids else mean

    fill(model.get_input_embeddings().weight, input_rows)
    if output_rows is not None:
        fill(model.get_output_embeddings().weight, output_rows)
    for role in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(new, role, None)
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and value is not None:
                setattr(config, role, value)
    return sum(1 for index in range(len(new)) if index in same and same[index] < input_rows.shape[0])


def _whole_characters(spelling: Optional[bytes]) -> bool:
    if not spelling:
        return False
    try:
        spelling.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
