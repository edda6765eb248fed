"""Samples per second of one training process against two on this machine, with the same global batch.

    python bench/processes.py                                  # kd and minillm, 9 steps each setting
    python bench/processes.py --objectives kd --steps 8 --json bench/results/processes.json

Every setting is a real ``minillm distill`` run (``--num-processes 2`` starts two processes through
torch.distributed.run, gloo on CPUs) on the same random-init Llama-architecture models (teacher 4 layers × 256,
student 2 layers × 256, 2048 logits) and the embedded instruction data, global batch 8 per optimizer step:

- ``1 proc × 1 thread``: the baseline;
- ``1 proc × N threads``: the same cores given to one process through OpenMP;
- ``2 procs × 1 thread``: data parallel (DDP), each process a micro-batch of 4;
- ``2 procs ZeRO-2``: the same through DeepSpeed (when installed).

Samples/s is the samples of the timed steps over their seconds (the first step is warm-up and is left out; with
the default 9 steps, minillm's 8 timed steps are 2 sampling steps and 6 replays, the 1:3 ratio of ppo_epochs 4);
sequence tokens/s counts every prompt and response token of those steps. On a 2-core machine two processes can at
best double one single-threaded process; the gradient all-reduce (gloo over loopback) is what they pay.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GLOBAL_BATCH = 8


def make_models(root: Path) -> tuple[Path, Path]:
    from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    teacher = make_tiny_model(root / "llama-teacher", "llama", vocab_size=2048, layers=4, hidden=256, seed=2,
                              tokenizer=tokenizer)
    student = make_tiny_model(root / "llama-student", "llama", vocab_size=2048, layers=2, hidden=256, seed=1,
                              tokenizer=tokenizer)
    return teacher, student


def run(setting: dict, objective: str, teacher: Path, student: Path, out: Path, steps: int) -> dict:
    processes, threads = setting["processes"], setting["threads"]
    args = [
        sys.executable, "-m", "minillm_cli", "distill", "-o", objective, "--teacher", str(teacher),
        "--student", str(student), "--output-dir", str(out), "--steps", str(steps), "--device", "cpu",
        "--no-progress", "--overwrite", f"train.batch_size={GLOBAL_BATCH // processes}", "train.lr=1e-4",
        "eval.every=0", "eval.before_after=false", "eval.rouge_examples=0", "eval.max_examples=8",
        "checkpoint.every=0", "data.limit=200", "data.max_prompt_tokens=128", "data.max_response_tokens=64",
        "generation.max_new_tokens=32", "data.lm_chunk_tokens=128", *setting.get("extra", []),
    ]
    if processes > 1:
        args += ["--num-processes", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in records if "seconds" in r][1:]
    seconds = sum(r["seconds"] for r in steps_)
    tokens = sum(r["sequence_tokens"] for r in steps_)
    return {"median_seconds_per_step": statistics.median(r["seconds"] for r in steps_),
            "samples_per_second": GLOBAL_BATCH * len(steps_) / seconds, "sequence_tokens_per_second": tokens / seconds,
            "steps_timed": len(steps_)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", default="kd,minillm")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--json", default=None, help="Write the results here.")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [
        {"name": "1 proc × 1 thread", "processes": 1, "threads": 1},
        {"name": f"1 proc × {cores} threads", "processes": 1, "threads": cores},
        {"name": "2 procs × 1 thread (DDP)", "processes": 2, "threads": max(1, cores // 2)},
    ]
    try:
        import deepspeed  # noqa: F401

        settings.append({"name": "2 procs ZeRO-2", "processes": 2, "threads": max(1, cores // 2),
                         "extra": ["--engine", "deepspeed", "--zero-stage", "2"]})
    except Exception:  # noqa: BLE001 - not installed, or a broken install
        pass
    results = {"machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version(),
                           "load_average_at_start": os.getloadavg()[0]},   # other jobs on the machine skew the numbers
               "global_batch": GLOBAL_BATCH, "steps": args.steps, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher, student = make_models(root)
        for objective in args.objectives.split(","):
            base = None
            for setting in settings:
                result = run(setting, objective, teacher, student, root / "run", args.steps)
                if "error" not in result:
                    base = base or result["samples_per_second"]
                    result["speedup_vs_1_thread"] = result["samples_per_second"] / base
                row = {"objective": objective, "setting": setting["name"], **result}
                results["runs"].append(row)
                shown = (f"{result['samples_per_second']:7.2f} samples/s  {result['sequence_tokens_per_second']:8.0f} "
                         f"tok/s  ×{result['speedup_vs_1_thread']:.2f}") if "error" not in result else "failed: " + result["error"][-300:]
                print(f"{objective:8s} {setting['name']:28s} {shown}", flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
