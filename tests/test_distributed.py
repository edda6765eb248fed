"""Training on several processes (gloo on this CPU): a 2-process run gives the parameters of a 1-process run with
the same global batch (sft, kd, minillm with greedy rollouts and L_PT), checkpoints are written once and resume
on another number of processes, DeepSpeed ZeRO stages 1-3 train, resume and convert to Hugging Face.

Every run is a real ``minillm distill`` in subprocesses (``--num-processes 2`` starts them through
torch.distributed.run) on tiny models, one OpenMP thread each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minillm_cli.training.distributed import deepspeed_available

PAIRS = [
    ("The capital of France is", "Paris."), ("List three colours:", "red, green, blue."), ("Two plus two is", "four."),
    ("Is this review positive?", "The film was wonderful."), ("The capital of Italy is", "Rome."),
    ("Water boils at", "one hundred degrees."), ("Cats and dogs are", "animals."), ("Rewrite the sentence", "in plain words."),
    ("Name a colour", "blue."), ("What is two plus two", "four."), ("Where is Paris", "In France."),
    ("Is the music lovely", "Yes, lovely."), ("Count to three", "1 2 3"), ("Say abc", "abc"), ("Name an animal", "A cat."),
    ("Boiling point of water", "100 degrees."),
]

# Constant learning rate, no warm-up, validation only at the end (loss on 2 examples), losses in chunks of 7 tokens.
COMMON = [
    "--device", "cpu", "--no-progress", "--overwrite", "train.lr=1e-3", "train.schedule=constant", "train.warmup_steps=0",
    "eval.every=0", "eval.before_after=false", "eval.rouge_examples=0", "eval.max_examples=2", "data.valid_size=2",
    "train.chunk_tokens=7", "generation.temperature=0", "generation.max_new_tokens=6", "data.lm_chunk_tokens=32",
]
needs_deepspeed = pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (the scale extra)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

    root = tmp_path_factory.mktemp("distributed")
    tokenizer = make_tiny_tokenizer()
    student = make_tiny_model(root / "llama-student", "llama", seed=1, tokenizer=tokenizer)
    teacher = make_tiny_model(root / "llama-teacher", "llama", layers=3, seed=2, tokenizer=tokenizer)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": i, "output": o}) + "\n" for i, o in PAIRS))
    return root, student, teacher, data


def distill(setup, name: str, objective: str, *, processes: int, batch: int, steps: int = 3, extra=(), resume=None):
    """Run ``minillm distill`` on ``processes`` processes; returns its output directory."""
    root, student, teacher, data = setup
    out = root / name
    args = [
        sys.executable, "-m", "minillm_cli", "distill", "-o", objective, "--teacher", str(teacher),
        "--student", str(student), "--output-dir", str(out), "--steps", str(steps), f"data.train={data}",
        f"train.batch_size={batch}", *COMMON, *extra,
    ]
    if resume:
        args += ["--resume", str(resume)]
    if processes > 1:
        args += ["--num-processes", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DS_ACCELERATOR": "cpu", "MINILLM_HOME": str(root / "home")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return out


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def assert_same_training(one: Path, two: Path, setup, tolerance=1e-5):
    from safetensors.torch import load_file

    initial = load_file(setup[1] / "model.safetensors")
    moved = max_diff(weights(one), initial)
    assert moved > 100 * tolerance                       # training moved the weights ...
    assert max_diff(weights(one), weights(two)) < tolerance  # ... by the same amounts on 1 and 2 processes
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)   # the logged loss is the global one


# --- 1 process vs 2 processes, the same global batch ---------------------------------------------------------


@pytest.fixture(scope="module")
def kd_two(setup):
    """kd on 2 processes × batch 2 for 4 steps, checkpoints every 2 steps (shared by the tests below)."""
    return distill(setup, "kd-two", "kd", processes=2, batch=2, steps=4, extra=["checkpoint.every=2"])


def test_kd_two_processes_match_one(setup, kd_two):
    one = distill(setup, "kd-one", "kd", processes=1, batch=4, steps=4, extra=["checkpoint.every=2"])
    assert_same_training(one, kd_two, setup)


@pytest.mark.parametrize("objective,extra", [
    ("sft", []),
    # Greedy rollouts (padding-invariant, so not dependent on how prompts are split), two micro-batches per step
    # (the rollout buffer), L_PT on plain text (its token count is global too), the reference variant's whitening.
    ("minillm", ["train.grad_accum=2", "objective.variant=reference"]),
])
def test_two_processes_match_one(setup, objective, extra):
    accum = 2 if "train.grad_accum=2" in extra else 1
    one = distill(setup, f"{objective}-one", objective, processes=1, batch=4 // accum, extra=extra)
    two = distill(setup, f"{objective}-two", objective, processes=2, batch=2 // accum, extra=extra)
    assert_same_training(one, two, setup)


def test_checkpoint_of_two_processes_resumes_on_one(setup, kd_two):
    checkpoints = sorted(p.name for p in (kd_two / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004"]            # written once, no per-process copies or leftovers
    run = setup[0] / "kd-resumed-on-one"
    shutil.copytree(kd_two, run)
    # The same global batch on one process: batch 4 instead of 2 × 2.
    distill(setup, run.name, "kd", processes=1, batch=4, steps=4, resume=run / "checkpoints" / "step-000002")
    assert max_diff(weights(run), weights(kd_two)) < 1e-5
    assert losses(run) == pytest.approx(losses(kd_two), rel=1e-5)


# --- DeepSpeed ZeRO ------------------------------------------------------------------------------------------


@needs_deepspeed
@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)])
def test_zero_stage_trains_resumes_and_converts(setup, kd_two, stage, tmp_path):
    from minillm_cli.convert.verify import probe_logits
    from minillm_cli.convert.zero import convert_zero

    zero = ["--engine", "deepspeed", "--zero-stage", str(stage), "checkpoint.every=2"]
    run = distill(setup, f"zero{stage}", "kd", processes=2, batch=2, steps=4, extra=zero)
    assert max_diff(weights(run), weights(kd_two)) < 1e-5          # ZeRO computes the same update as DDP
    step2 = run / "checkpoints" / "step-000002"
    assert (step2 / "zero").is_dir() and (step2 / "student" / "config.json").is_file()

    # Resume on 2 processes from step 2: the ZeRO optimizer state continues exactly.
    resumed = setup[0] / f"zero{stage}-resumed"
    shutil.copytree(run, resumed)
    distill(setup, resumed.name, "kd", processes=2, batch=2, steps=4, extra=zero, resume=resumed / "checkpoints" / "step-000002")
    assert max_diff(weights(resumed), weights(run)) < 1e-5

    # ZeRO shards -> Hugging Face safetensors: the student of the last checkpoint, which is the exported one.
    report = convert_zero(run / "checkpoints" / "step-000004", tmp_path / "hf")
    assert report.passed and (tmp_path / "hf" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert torch.equal(probe_logits(converted), probe_logits(final))


@needs_deepspeed
@pytest.mark.slow
def test_zero_checkpoint_resumes_on_another_process_count(setup):
    """Written by 2 processes under ZeRO-2, resumed on 1: weights, schedule and data position continue; the
    optimizer's moments restart (ZeRO partitions them by process count), which the run says."""
    zero = ["--engine", "deepspeed", "--zero-stage", "2", "checkpoint.every=2"]
    run = distill(setup, "zero-2to1", "kd", processes=2, batch=2, steps=2, extra=zero)
    resumed = distill(setup, run.name, "kd", processes=1, batch=4, steps=3, extra=zero,
                      resume=run / "checkpoints" / "step-000002")
    state = json.loads((resumed / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["position"] == 12


# --- a teacher sharded across processes ----------------------------------------------------------------------


@needs_deepspeed
def test_zero3_teacher_rollouts_in_lock_step(setup, tmp_path):
    """Teacher-mixed sampling and plain sampling with a ZeRO-3-partitioned model when the processes decode different
    numbers of tokens: lock-step decoding keeps the collectives matched, and the samples are the unsharded ones."""
    root, student, teacher, _ = setup
    driver = Path(__file__).parent / "drivers" / "zero3_rollouts.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    from minillm_cli.training.distributed import free_port

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(driver), str(student), str(teacher), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in range(2)]
    assert [r["lengths"] for r in results] == [[2, 2], [7]]
    assert all(r["same_responses"] and r["teacher_diff"] < 1e-5 and r["head_diff"] < 1e-5 for r in results)
    assert [r["generation_lengths"] for r in results] == [[2, 2], [7]] and all(r["same_generations"] for r in results)


@needs_deepspeed
def test_on_policy_gkd_with_a_zero3_student_samples_in_lock_step(setup):
    """GKD with λ = 1 samples every batch from a ZeRO-3-partitioned student; the processes' samples end at different
    steps, and the run completes (without lock-step decoding one process would wait on the other's collective).
    The validation's greedy Rouge-L decodes the partitioned student too, before and after."""
    run = distill(setup, "zero3-onpolicy", "gkd", processes=2, batch=2, steps=2,
                  extra=["--engine", "deepspeed", "--zero-stage", "3", "objective.lmbda=1", "eval.before_after=true",
                         "eval.rouge_examples=2"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r][-1] == 2
    assert sum("valid_rougeL" in r for r in records) >= 2
    assert (run / "final" / "model.safetensors").is_file()


@needs_deepspeed
@pytest.mark.slow
def test_minillm_with_zero3_student_and_zero3_teacher_matches_one_process(setup):
    extra = ["objective.variant=reference"]
    one = distill(setup, "minillm-plain-one", "minillm", processes=1, batch=4, extra=extra)
    sharded = distill(setup, "minillm-z3-two", "minillm", processes=2, batch=2, extra=[
        *extra, "--engine", "deepspeed", "--zero-stage", "3", "--teacher-shard", "zero3"])
    assert_same_training(one, sharded, setup)


def test_device_map_teacher_in_lower_precision_trains_minillm(setup, monkeypatch):
    """teacher_shard=device_map loads the teacher spread over this process's devices (here: the CPU) in bf16;
    teacher-mixed sampling and the losses run on it."""
    from minillm_cli.training import sharding
    from minillm_cli.runs.prepare import prepare
    from minillm_cli.config.recipes import load_config

    placements = []
    original = sharding.teacher_device_map
    monkeypatch.setattr(sharding, "teacher_device_map", lambda: placements.append(original()) or placements[-1])

    root, student, teacher, data = setup
    config, options = load_config(None, overrides=[
        f"teacher={teacher}", f"student={student}", f"data.train={data}", "objective.name=minillm", "device=cpu",
        f"output_dir={root / 'device-map'}", "parallel.teacher_shard=device_map", "train.teacher_dtype=bf16",
        "train.batch_size=2", "generation.max_new_tokens=4", "data.lm_chunk_tokens=32", "eval.every=0",
    ])
    engine = prepare(config, options, progress=False).engine
    assert placements == [{"device_map": "cpu"}]        # from_pretrained placed it (all GPUs of the process on a GPU machine)
    assert next(engine.teacher.parameters()).dtype == torch.bfloat16
    records = [engine.train_step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
