"""SeqKD (Kim & Rush, 2016): train the student on the teacher's own responses instead of the gold ones.

``prepare_data`` has the teacher sample one response per training prompt, once, and caches them as JSONL in
``DataContext.cache_dir``. The file name is a hash of everything the responses depend on (teacher, prompt
format, sampling settings, seed, generation batch size, teacher dtype, the prompts' texts), so a second run
with the same settings reuses the file and a change of any of them generates afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...objective import DataContext, LossOutput, Objective, StepContext, option
from ._common import in_unit_interval, needs_by_options, weighted_loss

CACHE_VERSION = 1


@dataclass
class SeqKDOptions:
    ratio: float = option(
        0.0,
        "Weight r of forward KL on the teacher's responses: (1 − r)·CE + r·FKL. 0 = SFT on teacher outputs; "
        "the reference scripts use 0.5 (KD on teacher outputs).",
    )
    max_prompts: Optional[int] = option(
        None,
        "Have the teacher answer only the first N training prompts (of the shuffled split) and train on those; "
        "null = all. Teacher generation is SeqKD's main cost: this bounds it under a time budget.",
    )

    def validate(self) -> list[str]:
        problems = in_unit_interval("ratio", self.ratio)
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append(f"max_prompts must be at least 1 (got {self.max_prompts}); null uses every prompt")
        return problems


class SeqKD(Objective):
    name = "seqkd"
    help = (
        "Sequence-level KD (Kim & Rush 2016): the teacher samples a response for every training prompt (cached "
        "on disk), and the student trains on those with (1 − ratio)·CE + ratio·forward KL. ratio 0 (default) is "
        "SFT on teacher outputs; the MiniLLM reference scripts use KD with ratio 0.5 on them (docs/method.md §2)."
    )
    Options = SeqKDOptions
    # The teacher is needed during training only for the KL term; prepare_data loads it by itself.
    needs = needs_by_options({"gold", "teacher"}, lambda o: {"gold", "teacher"} if o.ratio > 0 else {"gold"})

    def prepare_data(self, train_examples: list, ctx: DataContext) -> list:
        from ...models.load import resolve_model

        if not train_examples:
            return train_examples
        if self.options.max_prompts is not None:
            train_examples = train_examples[: self.options.max_prompts]
        served = ctx.served_teacher   # a teacher behind a server answers the prompts there (docs/serving.md)
        ref = served.ref if served is not None else resolve_model(ctx.teacher, family=ctx.teacher_family)
        prompt_format = ctx.prompt_format or ref.family.prompt_format
        path = Path(ctx.cache_dir) / f"seqkd-{cache_key(ref, prompt_format, ctx, train_examples)}.jsonl"
        records = _read_cache(path, train_examples)
        if records is None:
            records = _generate(ref, prompt_format, ctx, train_examples)
            _write_cache(path, records)
        return [_with_response(train_examples[r["index"]], r["response"]) for r in records]

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        r = self.options.ratio
        return weighted_loss(batch, ctx, ce_weight=1.0 - r, divergence="fkl", divergence_weight=r)


def _texts(example) -> tuple[str, str]:
    return (example.instruction or "", example.input or "")


def cache_key(ref, prompt_format: str, ctx: DataContext, examples: list) -> str:
    """A hash of everything the teacher's responses depend on."""
    generation = ctx.generation
    settings = dataclasses.asdict(generation) if dataclasses.is_dataclass(generation) else repr(generation)
    material = {
        "version": CACHE_VERSION,
        "teacher": ctx.teacher,
        "source": ref.source,
        "gguf_file": ref.gguf_file,
        "family": ref.family.name,
        "prompt_format": prompt_format,
        "max_prompt_tokens": ctx.max_prompt_tokens,
        "sampling": settings,
        "seed": ctx.seed,
        # generate() seeds once and samples batch by batch: the batch size changes the random stream.
        "batch_size": ctx.batch_size,
        "dtype": str(ctx.dtype),
    }
    if ctx.served_teacher is not None:   # the model behind the address, not only the address
        material["served_model"] = ctx.served_teacher.name
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps(_texts(example)).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


def _generate(ref, prompt_format: str, ctx: DataContext, examples: list) -> list[dict]:
    from ...data.tokenization import tokenize_prompts
    from ...models.generation import generate
    from ...models.load import load_model, load_tokenizer

    served = ctx.served_teacher
    tokenizer = served.tokenizer if served is not None else load_tokenizer(ref)
    prompt_ids, kept, _dropped = tokenize_prompts(
        examples, tokenizer, prompt_format=prompt_format, add_bos=ref.family.add_bos,
        max_prompt_tokens=ctx.max_prompt_tokens,
    )
    records: list[dict] = []
    generations = []
    if prompt_ids and served is not None:
        generations = served.generate(prompt_ids, ctx.generation, seed=ctx.seed, batch_size=ctx.batch_size)
    elif prompt_ids:
        model = load_model(ref, dtype=ctx.dtype, device=ctx.device)
        try:
            generations = generate(model, tokenizer, prompt_ids, ctx.generation, seed=ctx.seed, batch_size=ctx.batch_size)
        finally:
            del model  # the training run loads its own models; free the teacher's memory now
            _empty_cache()
    for index, generation in zip(kept, generations):
        instruction, input_text = _texts(examples[index])
        records.append({
            "index": int(index),
            "instruction": instruction,
            "input": input_text,
            "response": tokenizer.decode(generation.token_ids, skip_special_tokens=True),
            "finished": generation.finished,
        })
    # Prompts over max_prompt_tokens get no response: they would be dropped from training anyway.
    return records


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_cache(path: Path, records: list[dict]) -> None:
    from ...atomic import atomic_open

    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_cache(path: Path, examples: list) -> Optional[list[dict]]:
    """The cached records, or None when the file is missing or does not match these examples."""
    if not path.is_file():
        return None
    try:
        # Split on "\n" only: str.splitlines() also breaks at U+0085, U+2028, U+2029, … which json.dumps
        # (ensure_ascii=False) leaves unescaped inside responses, and the cache would never be reused.
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        for record in records:
            if _texts(examples[record["index"]]) != (record["instruction"], record["input"]):
                return None
            if not isinstance(record["response"], str):
                return None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # a damaged cache is regenerated, not trusted
    return records


def _with_response(example, response: str):
    """A copy of the example whose only reference is the teacher's response."""
    return dataclasses.replace(example, references=[response])
