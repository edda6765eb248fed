"""Tokens per second and peak GPU memory of kd and minillm on one H100-class GPU: a random-init Llama-architecture
teacher of ~1.1B parameters distilled into a ~0.25B student.

    python bench/gpu_scale.py                                      # on a machine with a CUDA GPU (~10 minutes)
    python bench/gpu_scale.py --json bench/results/gpu_scale.json
    python bench/gpu_scale.py --tiny --device cpu --steps 2        # a smoke test of the script itself, on a CPU

Models (random init, saved once to a temporary directory; 32000 logits, the tiny test tokenizer: ids beyond it are
never decoded, so the vocabulary cost is the real one):

| | layers | hidden | heads / kv | MLP | parameters |
|---|---|---|---|---|---|
| teacher | 16 | 2048 | 32 / 8 | 8192 | ~1.10B |
| student | 12 | 1024 | 16 / 4 | 4096 | ~0.25B |

Settings, each in its own process (clean CUDA memory statistics): the student trains in bf16 mixed precision, the
teacher is held in bf16, batch 8, prompts up to 256 and responses up to 256 tokens (the embedded instruction data),
``train.chunk_tokens`` 1024:

- ``kd``: 0.5·CE + 0.5·FKL on gold responses;
- ``minillm``: teacher-mixed rollouts of up to ``--new-tokens`` tokens (default 256), 4 PPO epochs per rollout
  buffer (one sampling step, then three replay steps), L_PT on packed plain text; both sampling and replay
  steps are timed;
- ``kd-zero3-teacher`` (with DeepSpeed installed and ``--zero``): the same with the teacher under ZeRO-3 inference
  on this one GPU (its overhead without the memory saving of several GPUs).

Reported per setting: median seconds per step (after ``--warmup`` steps), sequence tokens/s (every prompt and
response token of the step), samples/s, peak GPU memory allocated and reserved (torch.cuda), and for minillm the
sampling and replay steps separately.
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
import time
from pathlib import Path

SIZES = {
    "full": {
        "teacher": dict(layers=16, hidden=2048, heads=32, kv=8, mlp=8192),
        "student": dict(layers=12, hidden=1024, heads=16, kv=4, mlp=4096),
        "vocab": 32000,
    },
    "tiny": {
        "teacher": dict(layers=2, hidden=64, heads=4, kv=2, mlp=128),
        "student": dict(layers=1, hidden=32, heads=2, kv=1, mlp=64),
        "vocab": 512,
    },
}

SETTINGS = {
    "kd": ["-o", "kd"],
    "minillm": ["-o", "minillm", "objective.ppo_epochs=4"],
    "kd-zero3-teacher": ["-o", "kd", "parallel.teacher_shard=zero3"],
}


def make_models(root: Path, size: str) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from minillm_cli.testing import make_tiny_tokenizer

    spec = SIZES[size]
    tokenizer = make_tiny_tokenizer()
    paths = []
    for name, seed in (("teacher", 2), ("student", 1)):
        shape = spec[name]
        config = LlamaConfig(
            vocab_size=spec["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv"], max_position_embeddings=1024, tie_word_embeddings=False,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        path = root / f"llama-{name}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
        del model
    return paths[0], paths[1]


def worker(args) -> dict:
    """One setting in this process: prepare the run as `minillm distill` does, time train_step."""
    import torch

    from minillm_cli.runs.prepare import prepare
    from minillm_cli.config.recipes import load_config

    cuda = args.device.startswith("cuda")
    overrides = [
        *SETTINGS[args.worker][2:], f"teacher={args.teacher}", f"student={args.student}", f"device={args.device}",
        f"output_dir={args.out}", "train.batch_size=8", f"train.steps={args.warmup + args.steps}",
        f"train.precision={'bf16' if cuda else 'fp32'}", f"train.teacher_dtype={'bf16' if cuda else 'fp32'}",
        "train.chunk_tokens=1024", "data.max_prompt_tokens=256", "data.max_response_tokens=256",
        f"generation.max_new_tokens={args.new_tokens}", "data.lm_chunk_tokens=512", "eval.every=0",
        "eval.before_after=false", "checkpoint.every=0", "data.limit=400",
    ]
    config, options = load_config(None, overrides=overrides, options={"objective.name": SETTINGS[args.worker][1]})
    engine = prepare(config, options, progress=False).engine
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, tokens, sampling, replay = [], [], [], []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        record = engine.train_step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if step >= args.warmup:
            times.append(elapsed)
            tokens.append(record["sequence_tokens"])
            if args.worker == "minillm":   # steps 0, 4, 8, … sample a new rollout buffer; the others replay it
                (sampling if step % 4 == 0 else replay).append(elapsed)
    median = statistics.median(times)
    result = {
        "seconds_per_step": median, "sequence_tokens_per_second": sum(tokens) / sum(times),
        "samples_per_second": 8 / median, "steps_timed": len(times),
        "student_parameters": sum(p.numel() for p in engine.model.parameters()),
        "teacher_parameters": sum(p.numel() for p in engine.teacher.parameters()) if engine.teacher is not None else 0,
    }
    if sampling:
        result["sampling_step_seconds"] = statistics.median(sampling)
    if replay:
        result["replay_step_seconds"] = statistics.median(replay)
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="kd,minillm")
    parser.add_argument("--zero", action="store_true", help="Also time kd with a ZeRO-3 teacher (needs DeepSpeed).")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per setting (after the warm-up).")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=256, help="minillm: maximum new tokens per rollout.")
    parser.add_argument("--tiny", action="store_true", help="Tiny models: test the script, not the GPU.")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("@@" + json.dumps(worker(args)))
        return
    settings = args.settings.split(",") + (["kd-zero3-teacher"] if args.zero else [])
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
               "models": SIZES["tiny" if args.tiny else "full"], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        teacher, student = make_models(Path(tmp), "tiny" if args.tiny else "full")
        for setting in settings:
            command = [sys.executable, __file__, "--worker", setting, "--teacher", str(teacher), "--student", str(student),
                       "--out", str(Path(tmp) / setting), "--device", args.device, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--new-tokens", str(args.new_tokens)]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
            row = {"setting": setting, **(json.loads(lines[-1][2:]) if proc.returncode == 0 and lines
                                          else {"error": proc.stderr[-2000:]})}
            results["runs"].append(row)
            if "error" in row:
                print(f"{setting:18s} failed:\n{row['error']}", flush=True)
            else:
                memory = f"  peak {row['peak_allocated_gib']:.1f} GiB" if "peak_allocated_gib" in row else ""
                print(f"{setting:18s} {row['seconds_per_step']:.3f} s/step  {row['sequence_tokens_per_second']:9.0f} tok/s  "
                      f"{row['samples_per_second']:.2f} samples/s{memory}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
