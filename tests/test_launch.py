"""Launch options, the command every launched process runs, the DeepSpeed config built from a run's config, and
the sharding of plain-text batches across processes (no subprocesses: see test_distributed.py for real runs)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from minillm_cli.errors import MinillmError
from minillm_cli.runs.launch import LaunchOptions, distill_args, launcher_command, strip_local_rank
from minillm_cli.config.recipes import load_config


def test_launcher_command_runs_minillm_on_every_process():
    options = LaunchOptions(num_processes=4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                            main_process_port=29500)
    command = launcher_command(options, ["distill", "train.lr=1e-4"])
    assert command[:3] == [sys.executable, "-m", "minillm_cli.runs.launch"]   # torch.distributed.run, quietly
    joined = " ".join(command)
    assert "--nproc_per_node 4 --nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500" in joined
    assert command[-4:] == ["-m", "minillm_cli", "distill", "train.lr=1e-4"]


@pytest.mark.parametrize("options,message", [
    (LaunchOptions(num_processes=0), "--num-processes must be >= 1"),
    (LaunchOptions(num_machines=2, main_process_port=1), "--main-process-ip"),
    (LaunchOptions(num_machines=2, main_process_ip="h"), "--main-process-port"),
    (LaunchOptions(num_machines=2, machine_rank=2, main_process_ip="h", main_process_port=1), "--machine-rank"),
])
def test_bad_launch_options_are_explained(options, message):
    with pytest.raises(MinillmError, match=message):
        options.check()


def test_launched_processes_get_the_same_config():
    options = {"teacher": "t", "train.steps": 3, "trim_vocab": True, "parallel.engine": "deepspeed", "student": None}
    args = distill_args(overrides=["train.lr=1e-4", "train.steps=5"], recipe="r.yaml", options=options,
                        resume="auto", overwrite=True, print_config=False, progress=False)
    assert args == ["distill", "--recipe", "r.yaml", "--resume", "auto", "--overwrite", "--no-progress", "teacher=t",
                    "train.steps=3", "trim_vocab=true", "parallel.engine=deepspeed", "train.lr=1e-4", "train.steps=5"]
    # The typed overrides come last and win over the flags, as in one process.
    config, _ = load_config(None, overrides=args[7:])
    assert config.train.steps == 5 and config.trim_vocab is True and config.parallel.engine == "deepspeed"


def test_the_deepspeed_launchers_local_rank_argument_is_dropped():
    assert strip_local_rank(["--local_rank=1", "distill", "--local-rank", "0", "x=1"]) == ["distill", "x=1"]


def test_parallel_options_are_checked_with_the_rest():
    with pytest.raises(MinillmError) as error:
        load_config(None, overrides=["parallel.zero_stage=4", "parallel.engine=ds", "parallel.teacher_shard=tp"])
    text = str(error.value)
    assert "must be 0, 1, 2 or 3" in text and "deepspeed" in text and "device_map" in text


def test_deepspeed_config_from_the_run(tmp_path, monkeypatch):
    from minillm_cli.training.distributed import deepspeed_config

    monkeypatch.setenv("WORLD_SIZE", "4")
    config, _ = load_config(None, overrides=[
        "parallel.engine=deepspeed", "parallel.zero_stage=3", "parallel.offload_optimizer=cpu",
        "parallel.offload_params=cpu", "train.batch_size=2", "train.grad_accum=3", "train.max_grad_norm=0.5",
        "device=cpu",
    ])
    ds = deepspeed_config(config)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"

    # The user's own file: 'auto' filled from train, optimizer sections refused, mismatched batches explained.
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}))
    config.parallel.deepspeed_config = str(own)
    ds = deepspeed_config(config, world_size=2)
    assert ds["zero_optimization"] == {"stage": 1} and ds["train_batch_size"] == 12
    own.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(MinillmError, match="optimizer"):
        deepspeed_config(config)
    own.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(MinillmError, match="batch_size 2"):
        deepspeed_config(config)
    config.parallel.deepspeed_config = None
    config.parallel.zero_stage, config.parallel.offload_params = 2, "cpu"
    with pytest.raises(MinillmError, match="zero_stage=3"):
        deepspeed_config(config)


def test_plain_text_batches_are_sharded_across_processes():
    """Process r of N takes chunks [p + r·B, p + (r+1)·B) of each global batch of N·B: together exactly the chunks
    one process with batch N·B takes, and the position advances by N·B on each."""
    from minillm_cli.training.checkpoint import TrainerState
    from minillm_cli.training.engine import Engine

    chunks = [[i, i + 100, i + 200] for i in range(10)]

    def fake(rank, world, batch):
        engine = types.SimpleNamespace(
            data=types.SimpleNamespace(lm_chunks=chunks), objective=types.SimpleNamespace(name="x"),
            config=types.SimpleNamespace(train=types.SimpleNamespace(batch_size=batch)), state=TrainerState(),
            accelerator=types.SimpleNamespace(process_index=rank, num_processes=world), device="cpu",
            tokenizer=types.SimpleNamespace(pad_token_id=0),
        )
        return engine

    one = fake(0, 1, 4)
    two = [fake(r, 2, 2) for r in range(2)]
    for _ in range(3):   # wraps around the 10 chunks
        whole = Engine.lm_batch(one).input_ids.tolist()
        parts = [row for engine in two for row in Engine.lm_batch(engine).input_ids.tolist()]
        assert sorted(parts) == sorted(whole)
        assert two[0].state.lm_position == two[1].state.lm_position == one.state.lm_position
