"""Training across processes and machines: the accelerator (accelerate's DDP or DeepSpeed ZeRO through
accelerate), the student wrapper that keeps the hidden-state forward pass inside the distributed wrapper, sharded
teachers, lock-step decoding under ZeRO-3, and the per-process random state.

Correctness across processes (docs/scaling.md):

- every process draws its own slice of each global micro-batch (``engine.ExampleStream``) and of each plain-text
  batch (``Engine.lm_batch``): no example is seen twice in a step;
- token counts are summed over processes before any loss is computed, and DDP's (and ZeRO's) gradient average
  is turned back into the sum by dividing by ``global tokens / processes``: a per-token mean taken once;
- MiniLLM's whitening statistics and its L_PT token count are sums over processes (``ctx.sum_over_processes``);
- checkpoints are written once (the main process; ZeRO shards by every process into the same checkpoint) and
  hold positions that do not depend on the process count, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Optional

from ..errors import MinillmError

ZERO_DIR = "zero"   # DeepSpeed's own checkpoint (optimizer shards) inside a minillm checkpoint


def deepspeed_available() -> bool:
    """Whether DeepSpeed is installed (found, not imported: importing it takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def _require_deepspeed(what: str) -> None:
    if not deepspeed_available():
        raise MinillmError(f"{what} needs DeepSpeed: pip install 'minillm[scale]' (or pip install deepspeed)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_cpu(config) -> bool:
    import torch

    return config.device == "cpu" or not torch.cuda.is_available()


def _single_process_env() -> None:
    """DeepSpeed wants a process group even for one process; outside a launcher it gets a local one."""
    if "LOCAL_RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def deepspeed_config(config, world_size: Optional[int] = None) -> dict:
    """The DeepSpeed config of a run: the user's file (``parallel.deepspeed_config``) or one built from
    ``parallel.*``; batch sizes, accumulation and clipping always come from ``train``."""
    train, parallel = config.train, config.parallel
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if parallel.deepspeed_config:
        path = Path(parallel.deepspeed_config).expanduser()
        try:
            ds = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MinillmError(f"cannot read the DeepSpeed config '{path}' ({exc}); give a JSON file") from exc
        sections = [key for key in ("optimizer", "scheduler") if key in ds]
        if sections:
            raise MinillmError(
                f"DeepSpeed config '{path}' has {' and '.join(sections)} section(s); minillm builds AdamW and the "
                "schedule from train.* (lr, betas, eps, weight_decay, schedule, warmup_steps): remove them"
            )
    else:
        zero = {"stage": parallel.zero_stage}
        if parallel.offload_optimizer != "none":
            zero["offload_optimizer"] = {"device": parallel.offload_optimizer, "pin_memory": not on_cpu(config)}
        if parallel.offload_params != "none":
            if parallel.zero_stage != 3:
                raise MinillmError("parallel.offload_params needs parallel.zero_stage=3 (only ZeRO-3 partitions parameters)")
            zero["offload_param"] = {"device": parallel.offload_params, "pin_memory": not on_cpu(config)}
        for section in ("offload_optimizer", "offload_param"):
            if zero.get(section, {}).get("device") == "nvme":
                if not parallel.nvme_path:
                    raise MinillmError("nvme offloading needs parallel.nvme_path (a directory on a fast local disk)")
                zero[section]["nvme_path"] = parallel.nvme_path
        if parallel.zero_stage == 3:
            # Exports and checkpoints gather the full weights; 16-bit gathering on save is what accelerate asks for.
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        ds = {"zero_optimization": zero}
    auto = lambda key: ds.get(key, "auto") == "auto"  # noqa: E731
    if auto("train_micro_batch_size_per_gpu"):
        ds["train_micro_batch_size_per_gpu"] = train.batch_size
    if auto("gradient_accumulation_steps"):
        ds["gradient_accumulation_steps"] = train.grad_accum
    if auto("train_batch_size"):
        ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    if auto("gradient_clipping"):
        ds["gradient_clipping"] = float(train.max_grad_norm or 0.0)
    if (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) != (train.batch_size, train.grad_accum):
        raise MinillmError(
            f"DeepSpeed config sets micro-batch {ds['train_micro_batch_size_per_gpu']} × accumulation "
            f"{ds['gradient_accumulation_steps']} but train has batch_size {train.batch_size} × grad_accum "
            f"{train.grad_accum}; set them in train (or to 'auto' in the DeepSpeed config)"
        )
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("zero_force_ds_cpu_optimizer", False)   # minillm's torch AdamW also with an offloaded optimizer
    ds.setdefault("steps_per_print", 2**31 - 1)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def make_accelerator(config):
    """An Accelerator for the run: DDP (or one process) with ``parallel.engine=accelerate``, DeepSpeed ZeRO with
    ``deepspeed``. accelerate's global state is reset first so that an earlier engine in the same process cannot pin
    its precision on this one (the process group is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.train.precision]
    AcceleratorState._reset_state()
    cpu = on_cpu(config)
    if config.parallel.engine != "deepspeed":
        return Accelerator(mixed_precision=precision, cpu=cpu)
    _require_deepspeed("parallel.engine=deepspeed")
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _single_process_env()
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(config))
    # On CPU accelerate would pick no backend for DeepSpeed (and count one process); gloo is the CPU backend.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu else []
    return Accelerator(mixed_precision=precision, deepspeed_plugin=plugin, kwargs_handlers=handlers)


def zero_stage(accelerator) -> int:
    """The ZeRO stage the accelerator runs (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def uses_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


# --- the student inside the distributed wrapper ----------------------------------------------------------------


def student_body(model):
    """The module whose forward gives final hidden states (``forward.forward_hidden``), as a wrapper for
    ``accelerator.prepare``: DDP's gradient hooks and ZeRO's parameter gathering follow the wrapper's forward, so
    the body must run inside it; the vocabulary projection runs outside (chunked losses call it as a module)."""
    import torch

    class StudentBody(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, **inputs):
            return self.lm.base_model(**inputs, use_cache=False).last_hidden_state

    return StudentBody(model)


def inner_model(model):
    """The transformers causal LM of a student: itself, or the model inside a PEFT wrapper (adapters injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


# --- sharded teachers -------------------------------------------------------------------------------------------


def shard_teacher_zero3(teacher, config, accelerator):
    """The teacher partitioned across processes for inference (DeepSpeed ZeRO-3, no optimizer): each process holds
    1/N of its parameters and gathers a layer's weights just before running it."""
    _require_deepspeed("parallel.teacher_shard=zero3")
    import deepspeed
    import torch

    if not torch.distributed.is_initialized():   # one process without a launcher: a group of one
        _single_process_env()
        deepspeed.init_distributed(dist_backend="gloo" if accelerator.device.type == "cpu" else None,
                                   auto_mpi_discovery=False)

    ds = {
        "train_micro_batch_size_per_gpu": config.train.batch_size,
        "zero_optimization": {"stage": 3},
        "steps_per_print": 2**31 - 1,
    }
    dtype = str(next(teacher.parameters()).dtype)
    if dtype.endswith("bfloat16"):
        ds["bf16"] = {"enabled": True}
    elif dtype.endswith("float16"):
        ds["fp16"] = {"enabled": True}
    if config.parallel.offload_params != "none":
        ds["zero_optimization"]["offload_param"] = {"device": config.parallel.offload_params}
    engine, *_ = deepspeed.initialize(model=teacher, config=ds)
    engine.module.eval()
    return engine.module


def is_partitioned(model) -> bool:
    """Whether ZeRO-3 has partitioned the model's parameters (each process holds a slice)."""
    return model is not None and any(hasattr(p, "ds_id") for p in model.parameters())


class _Width:
    def __init__(self, shape):
        self.weight = type("W", (), {"shape": shape})()


def lockstep(model, accelerator):
    """A view of a ZeRO-3-partitioned model for decoding loops whose length differs between processes.

    Every forward pass of a partitioned model is a collective (each layer's weights are gathered from all
    processes), so all processes must run the same number of them. Before each forward pass this view sums an
    'I am still decoding' flag over processes; a process whose own loop has ended keeps running 1-token dummy passes
    (``drain``) until every process's flag is 0. transformers' ``generate`` does the same with ``synced_gpus``.
    """
    import functools

    import torch

    class Lockstep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

            def forward(*args, **kwargs):
                self.any_active(True)
                return self.inner(*args, **kwargs)

            # The decoding loop reads the signature (cache argument, logits_to_keep): the inner model's.
            self.forward = functools.wraps(inner.forward)(forward)

        def any_active(self, active: bool) -> bool:
            flag = torch.tensor([1.0 if active else 0.0], device=accelerator.device)
            return float(accelerator.reduce(flag, "sum").item()) > 0

        def get_output_embeddings(self):
            head = self.inner.get_output_embeddings()
            shape = getattr(head.weight, "ds_shape", head.weight.shape)
            return _Width(shape)

    return Lockstep(model)


def drain(views, device) -> None:
    """Run dummy 1-token passes of the lock-step ``views`` (in the order a decoding step calls them) until no
    process is decoding any more: what a process whose own decoding loop ended does while the others finish."""
    import torch

    if not views:
        return
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    with torch.inference_mode():
        while True:
            for index, view in enumerate(views):
                if not view.any_active(False):
                    if index == 0:
                        return
                    raise RuntimeError("lock-step decoding lost step between processes")
                view.inner(input_ids=ids, use_cache=False)


@contextlib.contextmanager
def gathered(model, accelerator):
    """All of a ZeRO-3 model's parameters present on every process for the duration (a no-op otherwise)."""
    if not is_partitioned(model):
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield model


# --- random state per process -----------------------------------------------------------------------------------


def process_seed(seed: int, rank: int) -> int:
    """The torch seed of process ``rank``: the run's seed on process 0, a distinct stream on the others, so that
    processes sample different tokens (process 0 of a multi-process run draws like a single-process run)."""
    return seed if rank == 0 else seed * 1_000_003 + 7_919 * rank


def gather_objects(accelerator, value) -> list:
    """``value`` of every process, in rank order (on every process)."""
    if accelerator.num_processes == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * accelerator.num_processes
    dist.all_gather_object(out, value)
    return out


def place_teacher(teacher, config, accelerator):
    """The teacher where the run wants it: on this process's device (default), left where ``device_map`` put it,
    or partitioned across processes (ZeRO-3 inference)."""
    if teacher is None:
        return None
    shard = config.parallel.teacher_shard
    if shard == "zero3":
        return shard_teacher_zero3(teacher, config, accelerator)
    if shard == "device_map" or getattr(teacher, "hf_device_map", None):
        return teacher
    return teacher.to(accelerator.device)


def teacher_device_map() -> dict:
    """``from_pretrained`` arguments that spread the teacher over this process's share of the visible GPUs
    (all of them for one process per machine; with k processes on a machine, process i gets GPUs i, i+k, …),
    or over the CPU when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"device_map": "cpu"}
    count = torch.cuda.device_count()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    mine = [gpu for gpu in range(count) if gpu % local_world == local_rank % local_world] or [local_rank % count]
    return {"device_map": "auto", "max_memory": {gpu: ("0GiB" if gpu not in mine else _free(gpu)) for gpu in range(count)}}


def _free(gpu: int) -> str:
    import torch

    free, _ = torch.cuda.mem_get_info(gpu)
    return f"{int(free * 0.9) // 2**20}MiB"


def gathered_head(model, width):
    """A partitioned model's output head as a plain function of its gathered weights: one gather per forward pass
    instead of one collective per loss chunk (whose number differs between processes)."""
    import torch

    projection = model.get_output_embeddings()
    params = list(projection.parameters())
    with _gather(params):
        weight = projection.weight.detach().clone()
        bias = projection.bias.detach().clone() if getattr(projection, "bias", None) is not None else None
    cap = getattr(model.config, "final_logit_softcapping", None)

    def head(hidden):
        logits = torch.nn.functional.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype))
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits[..., :width] if width is not None and width < logits.shape[-1] else logits

    return head


@contextlib.contextmanager
def _gather(params):
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def mean_over_processes(accelerator, totals: dict) -> dict:
    """Per-process step metrics (each normalised by global tokens / processes) as the global ones: their mean
    over processes. Keys missing on some process count as 0 there."""
    if accelerator.num_processes == 1:
        return totals
    import torch

    keys = sorted({key for keys in gather_objects(accelerator, sorted(totals)) for key in keys})
    values = torch.tensor([float(totals.get(key, 0.0)) for key in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, "sum") / accelerator.num_processes
    merged = dict(zip(keys, values.tolist()))
    return {key: merged[key] for key in [*totals, *(k for k in keys if k not in totals)]}


def quiet_deepspeed() -> None:
    """On a machine without accelerators, tell DeepSpeed (when installed: transformers and accelerate import it)
    that it runs on the CPU, instead of letting it guess and print a warning on every command. Checked through
    device files only: torch is not imported for this."""
    if "DS_ACCELERATOR" in os.environ:
        return
    dev = Path("/dev")
    patterns = ("nvidia[0-9]*", "kfd", "dri/renderD*", "accel*", "neuron*")
    if dev.is_dir() and not any(any(dev.glob(pattern)) for pattern in patterns):
        os.environ["DS_ACCELERATOR"] = "cpu"
