"""minillm against Hugging Face TRL, side by side in one run: seconds per step, tokens/s, peak memory, share of peak.

    pip install -e '.[bench]'                            # the pinned TRL
    python bench/vs_trl.py                               # both model settings, every method, batch 8 × 256 tokens
    python bench/vs_trl.py --models tiny --methods fkl,rkl --batch 2 --seq 64 --steps 2   # a quick check

Every row runs the same method in both frameworks on the same models, the same token ids, batch and sequence
length, all in float32 on one process, each (model setting, method, framework) in its own subprocess, so that
the peak memory is that process's alone:

==============  =====================================  ===================================================
method          minillm objective                      TRL (``trl.experimental.gkd.GKDTrainer`` …)
==============  =====================================  ===================================================
fkl             ``kd`` ratio 1 (pure forward KL)       GKD β = 0, λ = 0 (forward KL on the gold responses)
rkl             ``rkl``                                GKD β = 1, λ = 0 (reverse KL)
jsd             ``gkd`` β = 0.5, λ = 0                 GKD β = 0.5, λ = 0
onpolicy        ``gkd`` β = 0.5, λ = 1                 GKD β = 0.5, λ = 1 (student samples every step)
minillm         ``minillm`` ppo_epochs 1, lm_weight 0  ``trl.experimental.minillm.MiniLLMTrainer`` when the
                                                       installed TRL has it (trl <= 1.14.2; removed in 1.15)
==============  =====================================  ===================================================

Model settings: ``tiny`` = random-initialised Llama models at vocabulary 49152 (teacher 4 layers × 256, student
2 layers × 128, made once with ``LlamaConfig`` and saved under ``--out-dir`` so both frameworks load the same
weights; SmolLM2's tokenizer), and ``smollm2`` = SmolLM2-135M-Instruct → its default 6-layer student
(``minillm_cli.runs.prepare.student_from_teacher``). Data: random token ids, prompts of ``--prompt-tokens`` and
gold responses filling the rest of ``--seq``; on-policy methods sample up to ``--seq − --prompt-tokens`` new
tokens at temperature 1, top-k 0, top-p 1 (a sampled end-of-sequence token ends a row early, so on-policy
tokens/s counts the tokens actually in each step). TRL runs with its defaults except: fp32 (``bf16=False``;
TRL's default is bf16 autocast), ``gradient_checkpointing=False`` (TRL's default is on; minillm does not
checkpoint the transformer body, so this is the like-for-like setting; ``--trl-gradient-checkpointing`` turns it
on), no logging or saving. minillm runs with its defaults (``train.chunk_tokens`` 1024) unless told otherwise.

Columns:

- s/step: median of ``--steps`` optimizer steps after one warm-up step (TRL: time between successive
  ``on_step_end`` callbacks; minillm: ``Engine.train_step``; both include batching and the optimizer step);
  "best" is the fastest of them, "CPU s/step" the median process CPU time per step (all threads): on a machine
  shared with other work, wall time includes waiting for the CPU and the CPU time less so.
- tokens/s: every token of the step's sequences (prompt + response; on-policy: as sampled) / s per step.
- peak RSS: the worker process's ``ru_maxrss`` (peak resident set size: weights, optimizer state, activations,
  the Python interpreter and libraries; nothing subtracted). "after load" is the RSS once the models are loaded.
- % of peak: model FLOPs per step / s per step / the machine's measured float32 matmul FLOP/s (``--matmul-n``
  square matmuls in the parent process with the same number of threads, measured before and after the workers;
  the higher of the two). Model FLOPs follow the
  usual count and are the same for both frameworks: 6 · P_body(student) · sequence tokens (forward + backward)
  + 2 · P_body(teacher) · sequence tokens (forward only) + the vocabulary projections over the loss tokens
  (6 · H_s · V for the student, 2 · H_t · V for the teacher, per token); P_body excludes the embeddings and the
  output projection; attention-score FLOPs are not counted. On-policy steps add sampling, counted as a forward
  pass of the student over the sequence tokens (2 · (P_body + H·V) per token, KV cache assumed); MiniLLM's
  rollouts add the teacher's too. Work a framework does beyond this count (recomputation, projecting prompt
  tokens, padding) is overhead.
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

METHODS = {
    # name: (minillm objective, its options, TRL trainer, TRL options)
    "fkl": ("kd", {"ratio": 1.0}, "gkd", {"beta": 0.0, "lmbda": 0.0}),
    "rkl": ("rkl", {}, "gkd", {"beta": 1.0, "lmbda": 0.0}),
    "jsd": ("gkd", {"beta": 0.5, "lmbda": 0.0}, "gkd", {"beta": 0.5, "lmbda": 0.0}),
    "onpolicy": ("gkd", {"beta": 0.5, "lmbda": 1.0}, "gkd", {"beta": 0.5, "lmbda": 1.0}),
    "minillm": ("minillm", {"ppo_epochs": 1, "lm_weight": 0.0}, "minillm", {}),
}
MODELS = ("tiny", "smollm2")
FRAMEWORKS = ("minillm", "trl")
TINY = {"teacher": (4, 256), "student": (2, 128)}   # (layers, hidden)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------------------------
# Models and data, identical for both frameworks.


def tiny_models(out_dir: Path, vocab: int, tokenizer_dir: str) -> tuple[str, str]:
    """Random-initialised Llama teacher and student (seed 0), saved once with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import torch

    paths = []
    for role, (layers, hidden) in TINY.items():
        path = out_dir / "models" / f"tiny-{role}-{layers}x{hidden}-v{vocab}"
        if not (path / "config.json").is_file():
            torch.manual_seed(0 if role == "teacher" else 1)
            config = LlamaConfig(
                vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 64, 1),
                max_position_embeddings=4096, tie_word_embeddings=False,
            )
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
            LlamaForCausalLM(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def model_dirs(args) -> dict[str, tuple[str, str]]:
    from minillm_cli.runs.prepare import ensure_hf_directory, student_from_teacher
    from minillm_cli.models.load import resolve_model

    teacher_ref = ensure_hf_directory(resolve_model(args.teacher))
    student_ref = student_from_teacher(teacher_ref, args.student_layers)
    dirs = {"smollm2": (str(teacher_ref.source), str(student_ref.source))}
    if "tiny" in args.models.split(","):
        dirs["tiny"] = tiny_models(Path(args.out_dir), args.vocab, str(teacher_ref.source))
    return dirs


def token_rows(args, width: int, count: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randint(100, width - 100, (args.seq,), generator=generator).tolist() for _ in range(count)]


def shapes(model) -> dict:
    """Parameter counts for the FLOP model: body (no embeddings, no output projection), hidden size, width."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    body = total - embed.numel() - (0 if head is embed else head.numel())
    return {"body": body, "hidden": head.shape[1], "width": head.shape[0]}


def model_flops(student: dict, teacher: dict, sequence_tokens: float, loss_tokens: float, method: str) -> float:
    width = min(student["width"], teacher["width"])
    flops = 6 * student["body"] * sequence_tokens + 6 * student["hidden"] * width * loss_tokens
    flops += 2 * teacher["body"] * sequence_tokens + 2 * teacher["hidden"] * width * loss_tokens
    if method in ("onpolicy", "minillm"):
        flops += 2 * (student["body"] + student["hidden"] * width) * sequence_tokens
    if method == "minillm":
        flops += 2 * (teacher["body"] + teacher["hidden"] * width) * sequence_tokens
    return float(flops)


# ---------------------------------------------------------------------------------------------------------------
# Workers: one (model setting, method, framework) per process.


def minillm_worker(args, teacher_dir: str, student_dir: str) -> dict:
    import torch

    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.training.engine import Engine, EngineData
    from minillm_cli.models.load import load_model, load_tokenizer, logit_width, resolve_model
    from minillm_cli.plugins import get_objective

    torch.manual_seed(0)
    name, options = METHODS[args.method][:2]
    objective_cls = get_objective(name)
    objective = objective_cls(objective_cls.Options(**options))
    student_ref = resolve_model(student_dir, family="smollm2")
    teacher_ref = resolve_model(teacher_dir, family="smollm2")
    tokenizer = load_tokenizer(student_ref)
    student = load_model(student_ref, trainable=True)
    teacher = load_model(teacher_ref, dtype=args.teacher_dtype)
    width = logit_width(student)
    response = args.seq - args.prompt_tokens
    rows = token_rows(args, width, args.batch * (args.steps + 1))
    examples = [types.SimpleNamespace(prompt_ids=r[: args.prompt_tokens], response_ids=r[args.prompt_tokens:], index=i)
                for i, r in enumerate(rows)]
    config = DistillConfig(output_dir=str(Path(args.out_dir) / "runs" / f"{args.model}-{args.method}"), device="cpu")
    config.train.batch_size, config.train.steps = args.batch, args.steps + 1
    if args.chunk_tokens is not None:
        config.train.chunk_tokens = args.chunk_tokens or None
    config.generation.max_new_tokens = response
    config.eval.before_after, config.eval.every = False, 0
    config.checkpoint.every = 0
    engine = Engine(
        config=config, objective=objective, student=student, teacher=teacher, tokenizer=tokenizer,
        data=EngineData(train=examples, valid=[], valid_references=[]), vocab_width=width,
        output_dir=Path(config.output_dir), config_yaml="", progress=False,
    )
    loaded = rss_mib()
    times, cpu_times, sequence_tokens, loss_tokens = [], [], [], []
    for _ in range(args.steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        record = engine.train_step()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        sequence_tokens.append(record["sequence_tokens"])
        loss_tokens.append(record["tokens"])
    return {"times": times, "cpu_times": cpu_times, "sequence_tokens": sequence_tokens, "loss_tokens": loss_tokens,
            "rss_after_load_mib": loaded, "student": shapes(student), "teacher": shapes(teacher),
            "version": _version("minillm")}


def trl_worker(args, teacher_dir: str, student_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.manual_seed(0)
    trainer_name, options = METHODS[args.method][2:]
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    width = student.get_output_embeddings().weight.shape[0]
    rows = token_rows(args, width, args.batch * (args.steps + 1))
    prompt = args.prompt_tokens
    common = dict(
        output_dir=str(Path(args.out_dir) / "trl" / f"{args.model}-{args.method}"), per_device_train_batch_size=args.batch,
        max_steps=args.steps + 1, learning_rate=5e-4, bf16=False, fp16=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", gradient_checkpointing=args.trl_gradient_checkpointing,
        dataloader_num_workers=0, seed=0,
    )
    step_ends: list[float] = []
    cpu_ends: list[float] = []
    sequence_tokens: list[float] = []
    loss_tokens: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

        def on_step_end(self, *a, **k):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    if trainer_name == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        def collate(examples):
            ids = torch.tensor([e["ids"] for e in examples], dtype=torch.long)
            labels = ids.clone()
            labels[:, :prompt] = -100
            sequence_tokens.append(float(ids.numel()))
            loss_tokens.append(float((labels[:, 1:] != -100).sum()))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "prompts": ids[:, :prompt], "prompt_attention_mask": torch.ones_like(ids[:, :prompt])}

        config = GKDConfig(**common, max_length=args.seq, max_new_tokens=args.seq - prompt, temperature=1.0, **options)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, data_collator=collate,
                             train_dataset=Dataset.from_list([{"ids": r} for r in rows]), processing_class=tokenizer,
                             callbacks=[Timer()])
        original = trainer.generate_on_policy_outputs

        def counted(model, inputs, generation_config):
            ids, mask, labels = original(model, inputs, generation_config)
            sequence_tokens[-1] = float(mask.sum())
            loss_tokens[-1] = float((labels[:, 1:] != -100).sum())
            return ids, mask, labels

        trainer.generate_on_policy_outputs = counted
    else:
        try:
            from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer
        except ImportError:
            import trl

            raise SystemExit(f"SKIP trl {trl.__version__} has no MiniLLMTrainer (removed in trl 1.15; "
                             "--trl-minillm-path runs it from trl 1.14.2)")
        config = MiniLLMConfig(**common, max_completion_length=args.seq - prompt, num_generations=2,
                               generation_batch_size=args.batch, temperature=1.0, top_k=0, top_p=1.0)
        data = Dataset.from_list([{"prompt": tokenizer.decode(r[:prompt])} for r in rows])
        trainer = MiniLLMTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                                 processing_class=tokenizer, callbacks=[Timer()])
    loaded = rss_mib()
    trainer.train()
    times = [b - a for a, b in zip(step_ends, step_ends[1:])]
    cpu_times = [b - a for a, b in zip(cpu_ends, cpu_ends[1:])]
    if trainer_name != "gkd":  # MiniLLMTrainer: tokens are not exposed per step; count the nominal shape
        sequence_tokens = [float(args.batch * args.seq)] * len(times)
        loss_tokens = [float(args.batch * (args.seq - prompt))] * len(times)
    import trl

    return {"times": times, "cpu_times": cpu_times, "sequence_tokens": sequence_tokens[: len(times)],
            "loss_tokens": loss_tokens[: len(times)],
            "rss_after_load_mib": loaded, "student": shapes(student), "teacher": shapes(teacher),
            "version": trl.__version__}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def worker(args) -> dict:
    import torch

    teacher_dir, student_dir = args.teacher_dir, args.student_dir
    run = minillm_worker if args.framework == "minillm" else trl_worker
    result = run(args, teacher_dir, student_dir)
    times = result["times"][1:] or result["times"]
    measured = slice(1, None) if len(result["times"]) > 1 else slice(None)
    seconds = statistics.median(times)
    sequence = statistics.median(result["sequence_tokens"][measured])
    loss = statistics.median(result["loss_tokens"][measured])
    rates = [s / t for s, t in zip(result["sequence_tokens"][measured], times)]
    flops = model_flops(result["student"], result["teacher"], sequence, loss, args.method)
    return {
        "model": args.model, "method": args.method, "framework": args.framework, "version": result["version"],
        "seconds_per_step": seconds, "step_times": result["times"], "tokens_per_second": statistics.median(rates),
        "best_seconds_per_step": min(times), "cpu_seconds_per_step": statistics.median(result["cpu_times"][measured]),
        "step_cpu_times": result["cpu_times"],
        "sequence_tokens_per_step": sequence, "loss_tokens_per_step": loss, "model_flops_per_step": flops,
        "model_flops_per_second": flops / seconds, "rss_after_load_mib": result["rss_after_load_mib"],
        "peak_rss_mib": rss_mib(), "torch_threads": torch.get_num_threads(),
        "student": result["student"], "teacher": result["teacher"],
    }


# ---------------------------------------------------------------------------------------------------------------
# The parent: matmul peak, one subprocess per cell, the table and the JSON.


def matmul_peak(n: int, repeats: int = 10) -> float:
    """Float32 FLOP/s of an n × n by n × n matmul (best of ``repeats`` after warm-up), torch's default threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--teacher", default="smollm2-135m-instruct", help="the smollm2 setting's teacher")
    parser.add_argument("--student-layers", type=int, default=6, help="the smollm2 setting's student")
    parser.add_argument("--vocab", type=int, default=49152, help="the tiny setting's vocabulary")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="minillm's train.chunk_tokens (default: its own)")
    parser.add_argument("--teacher-dtype", default="fp32", help="minillm's train.teacher_dtype")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true")
    parser.add_argument("--trl-minillm-path", default=None,
                        help="a directory holding trl <= 1.14.2 (pip install --target DIR --no-deps trl==1.14.2), put "
                             "first on the path of the TRL minillm worker only: later TRL has no MiniLLMTrainer")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--out-dir", default="/tmp/minillm-bench")
    parser.add_argument("--json", default="bench/results/vs_trl.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--teacher-dir", help=argparse.SUPPRESS)
    parser.add_argument("--student-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for value, known, what in ((args.models, MODELS, "model setting"), (args.methods, METHODS, "method"),
                               (args.frameworks, FRAMEWORKS, "framework")):
        for item in value.split(","):
            if item not in known:
                sys.exit(f"unknown {what} '{item}'; known: {', '.join(known)}")
    peak = matmul_peak(args.matmul_n)
    console.print(f"float32 matmul peak ({args.matmul_n}², {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s")
    dirs = model_dirs(args)
    load_before = os.getloadavg()
    rows, skipped = [], []
    passthrough = [a for a in sys.argv[1:]]
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for framework in args.frameworks.split(","):
                console.print(f"running {model} / {method} / {framework} …")
                command = [sys.executable, __file__, *passthrough, "--worker", "--model", model, "--method", method,
                           "--framework", framework, "--teacher-dir", dirs[model][0], "--student-dir", dirs[model][1]]
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
                if framework == "trl" and method == "minillm" and args.trl_minillm_path:
                    env["PYTHONPATH"] = os.pathsep.join([args.trl_minillm_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
                skip = next((l for l in (done.stdout + done.stderr).splitlines() if l.startswith("SKIP ")), None)
                if skip:
                    skipped.append({"model": model, "method": method, "framework": framework, "reason": skip[5:]})
                    console.print(f"[yellow]skipped: {skip[5:]}[/]")
                    continue
                if done.returncode != 0 or line is None:
                    console.print(f"[red]{model} / {method} / {framework} failed[/]\n{done.stderr[-3000:]}")
                    continue
                row = json.loads(line[len("RESULT "):])
                row["share_of_matmul_peak"] = row["model_flops_per_second"] / peak
                rows.append(row)
    load_after = os.getloadavg()
    peak_after = matmul_peak(args.matmul_n)
    if peak_after > peak:   # on a shared machine the first measurement may have been slowed: keep the best
        for row in rows:
            row["share_of_matmul_peak"] = row["model_flops_per_second"] / peak_after
        peak = peak_after

    title = (f"minillm vs TRL: batch {args.batch} × {args.seq} tokens ({args.prompt_tokens} prompt), fp32, "
             f"{torch.get_num_threads()} threads, matmul peak {peak / 1e9:.0f} GFLOP/s")
    table = Table(title=title)
    for column in ("model", "method", "framework", "s/step", "best", "CPU s/step", "tokens/s", "peak RSS MiB",
                   "after load MiB", "% of peak", "time ×TRL", "CPU ×TRL", "memory ×TRL"):
        table.add_column(column, justify="left" if column in ("model", "method", "framework") else "right")
    by_key = {(r["model"], r["method"], r["framework"]): r for r in rows}
    for row in rows:
        peer = by_key.get((row["model"], row["method"], "trl"))
        ratio_time = ratio_cpu = ratio_memory = ""
        if peer is not None and row["framework"] != "trl":
            ratio_time = f"{row['seconds_per_step'] / peer['seconds_per_step']:.2f}"
            ratio_cpu = f"{row['cpu_seconds_per_step'] / peer['cpu_seconds_per_step']:.2f}"
            ratio_memory = f"{row['peak_rss_mib'] / peer['peak_rss_mib']:.2f}"
        name = row["framework"] + ("" if row["framework"] == "minillm" else f" {row['version']}")
        table.add_row(row["model"], row["method"], name, f"{row['seconds_per_step']:.2f}",
                      f"{row['best_seconds_per_step']:.2f}", f"{row['cpu_seconds_per_step']:.2f}",
                      f"{row['tokens_per_second']:.0f}", f"{row['peak_rss_mib']:.0f}", f"{row['rss_after_load_mib']:.0f}",
                      f"{100 * row['share_of_matmul_peak']:.1f}", ratio_time, ratio_cpu, ratio_memory)
    console.print(table)
    for skip in skipped:
        console.print(f"{skip['model']} / {skip['method']} / {skip['framework']}: {skip['reason']}")
    console.print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "trl": _version("trl"), "transformers": _version("transformers"), "matmul_peak_flops": peak,
            "load_average_before": load_before, "load_average_after": load_after, "args": vars(args),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    out.write_text(json.dumps({"meta": meta, "results": rows, "skipped": skipped}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
