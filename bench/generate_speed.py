"""Tokens per second of ``minillm generate``'s batched sampling (KV cache), at several batch sizes.

    python bench/generate_speed.py                               # SmolLM2-135M-Instruct, batch 1 and 8, 3 repeats
    python bench/generate_speed.py --model ./runs/default/final --batch-sizes 1,4,16

Prompts are the first ``--prompts`` of the embedded data set in the model family's prompt format; sampling is
the paper's (temperature 1, top-k 0, top-p 1) up to ``--max-new-tokens``. Tokens counted are the generated
ones up to and including end-of-sequence; padding after a finished sequence is not counted. The table shows the
median of ``--repeats`` runs after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per run")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--json", default="bench/results/generate_speed.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from rich.console import Console
    from rich.table import Table

    from minillm_cli.data.instructions import load_instructions
    from minillm_cli.data.tokenization import tokenize_prompts
    from minillm_cli.runs.prepare import ensure_hf_directory
    from minillm_cli.models.generation import GenerationStats, SamplingConfig, generate
    from minillm_cli.models.load import load_model, load_tokenizer, resolve_model

    console = Console()
    ref = ensure_hf_directory(resolve_model(args.model), console)
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, dtype=args.dtype)
    examples = load_instructions("default", limit=args.prompts)
    prompts, _, _ = tokenize_prompts(examples, tokenizer, prompt_format=ref.family.prompt_format, add_bos=ref.family.add_bos)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    generate(model, tokenizer, prompts[:1], SamplingConfig(max_new_tokens=4), seed=0)  # warm-up
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        rates, tokens = [], []
        for repeat in range(args.repeats):
            stats = GenerationStats()
            started = time.perf_counter()
            generate(model, tokenizer, prompts, sampling, seed=repeat, batch_size=batch_size, stats=stats)
            wall = time.perf_counter() - started
            rates.append(stats.tokens / wall)
            tokens.append(stats.tokens)
        rows.append({"batch_size": batch_size, "tokens_per_second": statistics.median(rates), "runs": rates, "tokens": tokens})
    table = Table(title=f"generate: {args.model}, {args.prompts} prompts, ≤ {args.max_new_tokens} new tokens, {args.dtype}, torch threads {torch.get_num_threads()}")
    table.add_column("batch size", justify="right")
    table.add_column("tokens/s (median)", justify="right")
    table.add_column("runs", justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), f"{row['tokens_per_second']:.1f}", ", ".join(f"{r:.1f}" for r in row["runs"]))
    console.print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
