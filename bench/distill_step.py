"""Seconds per step and peak memory of minillm's objectives on one engine, side by side.

    python bench/distill_step.py                       # SmolLM2-135M-Instruct → its 6-layer student, 8 × 256 tokens
    python bench/distill_step.py --settings sft,kd --steps 3 --json bench/results/distill_step.json

Each setting runs in its own process (peak RSS is per process), on the same models and the same synthetic
batch shape: prompts of ``--prompt-tokens`` and gold responses filling the rest of ``--seq`` tokens; on-policy
settings sample up to ``--seq - --prompt-tokens`` new tokens. The first step is warm-up; the table shows the
median of the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

SETTINGS = {
    "sft": ("sft", {}),
    "kd": ("kd", {"ratio": 0.5}),
    "rkl": ("rkl", {}),
    "gkd-lambda0": ("gkd", {"beta": 0.5, "lmbda": 0.0}),
    "gkd-lambda1": ("gkd", {"beta": 0.5, "lmbda": 1.0}),
    "tvd": ("tvd", {}),
    # MiniLLM: a step that samples teacher-mixed rollouts, then ppo_epochs − 1 steps that replay them
    "minillm": ("minillm", {"ppo_epochs": 4}),
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args) -> dict:
    import torch

    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.runs.prepare import ensure_hf_directory, student_from_teacher
    from minillm_cli.training.engine import Engine, EngineData
    from minillm_cli.models.load import load_model, load_tokenizer, logit_width, resolve_model
    from minillm_cli.plugins import get_objective

    torch.manual_seed(0)
    name, options = SETTINGS[args.worker]
    objective_cls = get_objective(name)
    objective = objective_cls(objective_cls.Options(**options))
    teacher_ref = ensure_hf_directory(resolve_model(args.teacher))
    student_ref = student_from_teacher(teacher_ref, args.student_layers) if not args.student else resolve_model(args.student)
    tokenizer = load_tokenizer(student_ref)
    student = load_model(student_ref, trainable=True)
    teacher = load_model(teacher_ref, dtype=args.teacher_dtype) if "teacher" in objective.needs else None
    width = logit_width(student)
    response_tokens = args.seq - args.prompt_tokens
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(args.batch * (args.steps + 1)):
        ids = torch.randint(100, width - 100, (args.seq,), generator=generator).tolist()
        examples.append(types.SimpleNamespace(prompt_ids=ids[: args.prompt_tokens], response_ids=ids[args.prompt_tokens:], index=i))
    config = DistillConfig(output_dir=str(Path(args.out_dir) / args.worker), device=args.device)
    config.train.batch_size, config.train.steps, config.train.chunk_tokens = args.batch, args.steps + 1, args.chunk_tokens
    config.train.precision = args.precision
    config.generation.max_new_tokens = response_tokens
    config.eval.before_after, config.eval.every = False, 0
    config.checkpoint.every = 0
    lm_chunks = None
    if "lm_chunks" in objective.needs:   # L_PT's packed plain text: random ids of the same length
        lm_chunks = [torch.randint(100, width - 100, (args.seq,), generator=generator).tolist() for _ in range(64)]
    data = EngineData(train=examples, valid=[], valid_references=[], lm_chunks=lm_chunks)
    engine = Engine(
        config=config, objective=objective, student=student, teacher=teacher, tokenizer=tokenizer, data=data,
        vocab_width=width, output_dir=Path(config.output_dir), config_yaml="", progress=False,
    )
    loaded_rss = rss_mib()
    sampled = []
    if hasattr(engine, "sample_mixed"):
        original = engine.sample_mixed

        def counting_sample_mixed(*a, **k):
            sampled[-1] = True
            return original(*a, **k)

        engine.sample_mixed = counting_sample_mixed
    times, tokens = [], []
    for _ in range(args.steps + 1):
        sampled.append(False)
        started = time.perf_counter()
        record = engine.train_step()
        times.append(time.perf_counter() - started)
        tokens.append(record["tokens"])
    measured = times[1:]
    extra = {}
    if any(sampled[1:]):
        extra["sampling_step_seconds"] = [t for t, s in zip(times[1:], sampled[1:]) if s]
        extra["replay_step_seconds"] = [t for t, s in zip(times[1:], sampled[1:]) if not s]
    return {**extra,
        "setting": args.worker, "objective": name, "options": options,
        "seconds_per_step": statistics.median(measured), "step_times": times,
        "loss_tokens_per_step": statistics.median(tokens[1:]),
        "sequence_tokens_per_second": args.batch * args.seq / statistics.median(measured),
        "rss_after_load_mib": loaded_rss, "peak_rss_mib": rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--student", default=None, help="default: cut --student-layers from the teacher")
    parser.add_argument("--student-layers", type=int, default=6)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--teacher-dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="/tmp/minillm-bench")
    parser.add_argument("--json", default="bench/results/distill_step.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = []
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            sys.exit(f"unknown setting '{setting}'; known: {', '.join(SETTINGS)}")
        command = [sys.executable, __file__, "--worker", setting] + [
            a for a in sys.argv[1:] if not a.startswith("--settings") and a != args.settings
        ]
        console.print(f"running {setting} …")
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            console.print(f"[red]{setting} failed[/]\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[len("RESULT "):]))
    table = Table(title=f"{args.teacher} → {args.student or f'{args.student_layers}-layer student'}, batch {args.batch} × {args.seq} tokens, {args.precision}")
    for column in ("setting", "s/step (median)", "s/step: sampling | replay", "sequence tok/s", "loss tokens/step",
                   "RSS after load MiB", "peak RSS MiB"):
        table.add_column(column, justify="right" if column != "setting" else "left")
    for row in rows:
        split = ""
        if "sampling_step_seconds" in row:
            replay = row["replay_step_seconds"]
            split = f"{statistics.mean(row['sampling_step_seconds']):.2f} | {statistics.median(replay):.2f}" if replay else ""
        table.add_row(row["setting"], f"{row['seconds_per_step']:.2f}", split, f"{row['sequence_tokens_per_second']:.0f}",
                      f"{row['loss_tokens_per_step']:.0f}", f"{row['rss_after_load_mib']:.0f}", f"{row['peak_rss_mib']:.0f}")
    console.print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
