"""Tokens per second of MiniLLM's rollouts: teacher-mixed sampling against plain student sampling, side by side.

    python bench/rollout_speed.py                     # SmolLM2-135M-Instruct → its 6-layer student, 8 prompts × ≤ 64 tokens
    python bench/rollout_speed.py --batch 16 --max-new-tokens 128 --json bench/results/rollout_speed.json

Settings, all on the same prompts (the embedded data set in the family's prompt format) and the paper's sampling
(temperature 1, top-k 0, top-p 1):

- ``student model.generate (plain)``: the student's own ``model.generate`` called directly (left-padded batch, the
  same generation config), the reference for the overhead of minillm's wrapper;
- ``student generate``: the student alone through ``minillm_cli.models.generation.generate`` (minillm's own decoding
  loop with the KV cache: what evaluation, SeqKD and the on-policy objectives sample with); its "× plain" column is
  against the row above;
- ``teacher generate``: the teacher alone, likewise;
- ``rollout α=0``: ``rollout.sample_rollouts`` without teacher mixing; it still decodes the teacher alongside,
  because the rewards need log p;
- ``rollout α=0.2``: teacher-mixed sampling (docs/method.md §1), both models decoding with their own KV caches.

Tokens counted are the sampled ones up to and including end-of-sequence. The "bound" column of a rollout row is
its tokens/s against the sum-of-both-models time: 1 / (1/student + 1/teacher) tokens/s from the two generate rows.
Each row is the median of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from sampling_pair import add_pair_options, load_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_options(parser, "bench/results/rollout_speed.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from rich.console import Console
    from rich.table import Table

    from minillm_cli.models.generation import GenerationStats, SamplingConfig, generate
    from minillm_cli.training.rollout import sample_rollouts

    console = Console(width=max(Console().width, 120))
    pair = load_pair(args, console)
    teacher, student, tokenizer, width, prompts = pair.teacher, pair.student, pair.tokenizer, pair.width, pair.prompts
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)

    def run_generate(model, seed):
        stats = GenerationStats()
        generate(model, tokenizer, prompts, sampling, seed=seed, batch_size=args.batch, stats=stats)
        return stats.tokens

    def run_plain(model, seed):
        """model.generate itself: no wrapper, the same settings; tokens up to and including the first eos."""
        from minillm_cli.models.generation import _eos_ids, left_pad

        config = sampling.generation_config(tokenizer)
        eos = _eos_ids(tokenizer, model)
        config.eos_token_id = sorted(eos)
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        count = 0
        for row in output[:, ids.shape[1]:].tolist():
            cut = next((i for i, tok in enumerate(row) if tok in eos), None)
            count += len(row) if cut is None else cut + 1
        return count

    def run_rollout(alpha, seed):
        rollouts = sample_rollouts(student, teacher, tokenizer, prompts, sampling, alpha=alpha, seed=seed,
                                   batch_size=args.batch, vocab_width=width)
        return sum(len(r) for r in rollouts.responses)

    settings = {
        "student model.generate (plain)": lambda seed: run_plain(student, seed),
        "student generate": lambda seed: run_generate(student, seed),
        "teacher generate": lambda seed: run_generate(teacher, seed),
        "rollout α=0": lambda seed: run_rollout(0.0, seed),
        "rollout α=0.2": lambda seed: run_rollout(0.2, seed),
    }
    rows = []
    for name, fn in settings.items():
        console.print(f"running {name} …")
        fn(100)                                             # warm-up
        rates, tokens = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            count = fn(repeat)
            rates.append(count / (time.perf_counter() - started))
            tokens.append(count)
        rows.append({"setting": name, "tokens_per_second": statistics.median(rates), "runs": rates, "tokens": tokens})
    by_name = {row["setting"]: row["tokens_per_second"] for row in rows}
    bound = 1.0 / (1.0 / by_name["student generate"] + 1.0 / by_name["teacher generate"])
    for row in rows:
        row["share_of_both_models_bound"] = row["tokens_per_second"] / bound if row["setting"].startswith("rollout") else None
        row["relative_to_student_generate"] = row["tokens_per_second"] / by_name["student generate"]
        row["relative_to_plain_generate"] = row["tokens_per_second"] / by_name["student model.generate (plain)"]

    table = Table(title=f"rollouts: {args.teacher} → {args.student or f'{args.student_layers}-layer student'}, "
                        f"{args.batch} prompts × ≤ {args.max_new_tokens} tokens, torch threads {torch.get_num_threads()}")
    for column in ("setting", "tokens/s (median)", "× plain", "× student generate", "× both-models bound", "runs"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in rows:
        share = row["share_of_both_models_bound"]
        plain = f"{row['relative_to_plain_generate']:.2f}" if row["setting"] == "student generate" else ""
        table.add_row(row["setting"], f"{row['tokens_per_second']:.1f}", plain,
                      f"{row['relative_to_student_generate']:.2f}", "" if share is None else f"{share:.2f}",
                      ", ".join(f"{r:.1f}" for r in row["runs"]))
    console.print(table)
    console.print(f"sum-of-both-models bound: {bound:.1f} tokens/s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "args": vars(args),
            "both_models_bound_tokens_per_second": bound}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
