"""The work behind ``minillm generate``: load, tokenise, sample for each seed, write JSONL."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_open, check_output_file
from ..errors import MinillmError
from ..models.device import pick_device
from ..models.generation import GenerationStats, SamplingConfig, generate_with_progress
from ..serving.client import is_served


def run_generate(
    *,
    model: str,
    prompts: str,
    out: Optional[Path],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    split: Optional[str] = None,
    fields: Optional[str] = None,
    limit: Optional[int] = None,
    prompt_format: Optional[str] = None,
    family: Optional[str] = None,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    dtype: str = "fp32",
    device: Optional[str] = None,
    quiet: bool = False,
    save_logits: int = 0,
    logits_over: str = "auto",
    tokenizer_model: Optional[str] = None,
) -> GenerationStats:
    """Generate for every (prompt, seed) and write one JSON line each; returns timing statistics.

    With ``save_logits`` k > 0 the model's top-k log-probabilities of every response token (teacher-forced) go to
    ``teacher_cache.logits_path(out)``: over the input's own responses (``logits_over`` "given", no sampling),
    over the generated ones ("generated"), or "auto": given when every input record has a non-empty output.

    A ``model`` named ``http(s)://HOST:PORT/v1`` is a served model (docs/serving.md): it samples and scores on the
    server; ``tokenizer_model``, a local model with its vocabulary (checked against the server's), writes the prompts.
    """
    from rich.console import Console

    from ..data.instructions import load_instructions
    from ..data.prompts import format_prompt
    from ..data.tokenization import tokenize_prompts
    from ..models.load import load_model, load_tokenizer, resolve_model

    if out is not None:
        check_output_file(out, "--out")
    console = Console(stderr=True, quiet=quiet)
    examples = load_instructions(prompts, fields=fields, split=split, limit=limit)
    if not examples:
        raise MinillmError(f"no examples in '{prompts}'; nothing to generate")
    mode = _logits_mode(save_logits, logits_over, out, examples, prompts)
    served_url = model if is_served(model) else None
    if served_url and tokenizer_model is None:
        raise MinillmError(f"--model {model} is served: pass --tokenizer MODEL, a local model with its vocabulary, "
                           "to write the prompts")
    ref = resolve_model(tokenizer_model if served_url else model, family=family)
    chosen_format = prompt_format or ref.family.prompt_format
    tokenizer = load_tokenizer(ref)
    prompt_ids, kept, dropped = tokenize_prompts(
        examples, tokenizer, prompt_format=chosen_format, add_bos=ref.family.add_bos,
        max_prompt_tokens=max_prompt_tokens,
    )
    if dropped:
        console.print(f"[yellow]skipped {dropped} prompt(s) longer than {max_prompt_tokens} tokens[/]")
    if served_url:
        from ..serving.teacher import ServedTeacher

        lm = ServedTeacher.connect(served_url, tokenizer, None, save_logits or 1, family=ref.family)
    else:
        lm = load_model(ref, dtype=dtype, device=pick_device(device))
        width = lm.get_output_embeddings().weight.shape[0]
        if mode and not 0 < save_logits < width:   # refused before anything is written, not after the JSONL
            raise MinillmError(f"--save-logits needs 0 < k < the model's {width} logits, got {save_logits}")
    stats = GenerationStats()
    records = []
    if mode == "given":   # teacher-forcing over the input's own responses: nothing to sample
        records = [{**examples[i].fields, "prompt": format_prompt(examples[i], chosen_format, tokenizer), "model": model}
                   for i in kept]
        _write_jsonl(records, out)
        _save_logits(console, lm, tokenizer, ref, [examples[i] for i in kept], chosen_format, max_prompt_tokens,
                     save_logits, batch_size, out, model)
        return stats
    generated = []
    for seed in seeds:
        if served_url:
            generations = _served_generations(lm, prompt_ids, sampling, seed, batch_size, stats)
        else:
            generations = generate_with_progress(console, lm, tokenizer, prompt_ids, sampling, seed, batch_size, stats)
        for index, generation in zip(kept, generations):
            example = examples[index]
            records.append({
                **example.fields,
                "prompt": format_prompt(example, chosen_format, tokenizer),
                "generation": tokenizer.decode(generation.token_ids, skip_special_tokens=True),
                "num_tokens": len(generation.token_ids),
                "finished": generation.finished,
                "seed": seed,
                "model": model,
            })
            generated.append((example, records[-1]["generation"]))
    _write_jsonl(records, out)
    console.print(
        f"generated {stats.sequences} responses, {stats.tokens} tokens in {stats.seconds:.1f} s "
        f"({stats.tokens_per_second:.1f} tokens/s)" + (f" -> {out}" if out else "")
    )
    if mode == "generated":
        from ..data.instructions import InstructionExample

        responses = [InstructionExample(e.instruction, e.input, [text], e.fields) for e, text in generated]
        _save_logits(console, lm, tokenizer, ref, responses, chosen_format, max_prompt_tokens, save_logits,
                     batch_size, out, model)
    return stats


def _served_generations(served, prompt_ids, sampling, seed, batch_size, stats):
    """A served model's responses for one seed, counted in ``stats`` as ``generate`` counts them."""
    started = time.perf_counter()
    generations = served.generate(prompt_ids, sampling, seed=seed, batch_size=batch_size)
    stats.seconds += time.perf_counter() - started
    stats.sequences += len(generations)
    stats.tokens += sum(len(g.token_ids) + g.finished for g in generations)
    return generations


LOGITS_OVER = ("auto", "given", "generated")


def _logits_mode(save_logits: int, logits_over: str, out, examples, prompts) -> Optional[str]:
    """None (no logits), "given" or "generated"; every misuse is an error before the model is loaded."""
    if logits_over not in LOGITS_OVER:
        raise MinillmError(f"--logits-over must be one of {', '.join(LOGITS_OVER)}, got '{logits_over}'")
    if not save_logits:
        return None
    if save_logits < 0:
        raise MinillmError(f"--save-logits must be a positive number of top log-probabilities (e.g. 64), got {save_logits}")
    if out is None:
        raise MinillmError("--save-logits writes OUT.logits.safetensors beside the JSONL; give --out")
    has_responses = all(e.output for e in examples)
    if logits_over == "given" and not has_responses:
        raise MinillmError(f"--logits-over given: some records of '{prompts}' have no output to teacher-force")
    if logits_over == "auto":
        return "given" if has_responses else "generated"
    return logits_over


def _save_logits(console, lm, tokenizer, ref, examples, prompt_format, max_prompt_tokens, k, batch_size, out, model):
    """Tokenize (prompt, response) pairs exactly as training does, run the model teacher-forced, save the top k."""
    from ..data.tokenization import tokenize_examples
    from ..training.teacher_cache import compute_topk, logits_path, save

    tokenized = tokenize_examples(
        examples, tokenizer, prompt_format=prompt_format, add_bos=ref.family.add_bos,
        max_prompt_tokens=max_prompt_tokens, max_response_tokens=None,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started = time.perf_counter()
    from ..serving.teacher import ServedTeacher

    if isinstance(lm, ServedTeacher):   # a served model scores on its server
        tensors, width = lm.file_tensors(tokenized.examples, batch_size=batch_size), lm.teacher_width
    else:
        tensors = compute_topk(lm, tokenized.examples, k, pad_id=pad, batch_size=batch_size)
        width = lm.get_output_embeddings().weight.shape[0]
    path = save(logits_path(out), tensors, {"k": k, "model": model, "logit_width": width,
                                           "prompt_format": prompt_format, "examples": len(tokenized.examples)})
    rows = int(tensors["topk_ids"].shape[0])
    console.print(f"saved top-{k} log-probabilities of {rows} response tokens ({len(tokenized.examples)} responses) "
                  f"in {time.perf_counter() - started:.1f} s -> {path}")
    return path


def _write_jsonl(records, out: Optional[Path]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
        return
    with atomic_open(out) as handle:
        handle.write(lines)
