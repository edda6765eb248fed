"""Training across processes and machines: the accelerator (accelerate's DDP or DeepSpeed ZeRO through
accelerate), the student wrapper that keeps the hidden-state forward pass inside the distributed wrapper, the
per-process random state and reductions over processes (sharded teachers and ZeRO-3 decoding: ``sharding``).

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


def require_deepspeed(what: str) -> None:
    if not deepspeed_available():
        raise MinillmError(f"{what} needs DeepSpeed: pip install 'minillm[scale]' (or pip install deepspeed)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_cpu(config) -> bool:
    import torch

    return config.device == "cpu" or not torch.cuda.is_available()


def single_process_env() -> None:
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
    require_deepspeed("parallel.engine=deepspeed")
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    single_process_env()
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
