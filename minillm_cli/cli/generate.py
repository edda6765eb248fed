"""``minillm generate``: sample responses from a model for a file of prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def generate(
    model: str = typer.Option(..., "--model", "-m", help="Model: alias, hub id, local directory or .gguf file; or a server's API root, http(s)://HOST:PORT/v1 (with --tokenizer)."),
    prompts: str = typer.Option(
        "default", "--prompts", "-p", help="Instruction data: 'default' (embedded), a JSONL/JSON/CSV/Parquet file, or a dataset name."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output JSONL file (default: standard output)."),
    split: Optional[str] = typer.Option(None, help="Split of a directory or hub dataset."),
    fields: Optional[str] = typer.Option(None, help="Field mapping, e.g. instruction=question,output=answer."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N examples."),
    prompt_format: Optional[str] = typer.Option(None, help="alpaca or chat (default: the model family's)."),
    family: Optional[str] = typer.Option(None, help="Model family, when it cannot be detected."),
    max_prompt_tokens: int = typer.Option(256, help="Prompts longer than this are skipped (and counted)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(0, help="Top-k filtering; 0 = off."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold; 1 = off."),
    max_new_tokens: int = typer.Option(256, help="Maximum new tokens per response."),
    no_repeat_ngram: int = typer.Option(0, help="Forbid repeating n-grams of this size; 0 = off."),
    seeds: str = typer.Option("10", help="Comma-separated seeds; one generation per prompt per seed."),
    batch_size: int = typer.Option(8, help="Prompts per batch."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, … (default: cuda when available)."),
    save_logits: int = typer.Option(
        0, "--save-logits", metavar="K",
        help="Also save the model's top-K log-probabilities of every response token (teacher-forced) to "
             "OUT.logits.safetensors, for a run's data.teacher_logits; 0 = off.",
    ),
    tokenizer: Optional[str] = typer.Option(
        None, help="With --model http://HOST:PORT/v1 (a served model, docs/serving.md): a local model with its "
                   "vocabulary, to write the prompts (checked against the server's tokenizer).",
    ),
    logits_over: str = typer.Option(
        "auto", help="Responses --save-logits scores: given (the input's outputs, no sampling), generated, or auto "
                     "(given when every input record has an output).",
    ),
) -> None:
    """Sample a response for every prompt; write JSONL keeping the input fields and adding the generation."""
    from ..models.generation import SamplingConfig
    from ..runs.generate import run_generate
    from .parsing import parse_seeds

    run_generate(
        model=model,
        prompts=prompts,
        out=out,
        split=split,
        fields=fields,
        limit=limit,
        prompt_format=prompt_format,
        family=family,
        max_prompt_tokens=max_prompt_tokens,
        sampling=SamplingConfig(
            temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram,
        ),
        seeds=parse_seeds(seeds),
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        save_logits=save_logits,
        logits_over=logits_over,
        tokenizer_model=tokenizer,
    )
