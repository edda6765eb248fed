"""Teachers larger than one device, and models partitioned by ZeRO-3: placement (device, ``device_map``, ZeRO-3
inference shards), gathered weights, and lock-step decoding of partitioned models across processes."""

from __future__ import annotations

import contextlib
import os

from .distributed import require_deepspeed, single_process_env


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


def shard_teacher_zero3(teacher, config, accelerator):
    """The teacher partitioned across processes for inference (DeepSpeed ZeRO-3, no optimizer): each process holds
    1/N of its parameters and gathers a layer's weights just before running it."""
    require_deepspeed("parallel.teacher_shard=zero3")
    import deepspeed
    import torch

    if not torch.distributed.is_initialized():   # one process without a launcher: a group of one
        single_process_env()
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


@contextlib.contextmanager
def gathered(model, accelerator):
    """All of a ZeRO-3 model's parameters present on every process for the duration (a no-op otherwise)."""
    if not is_partitioned(model):
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield model


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
            # What decoding reads besides forward: the context limits and the end-of-sequence ids.
            self.config = inner.config
            self.generation_config = getattr(inner, "generation_config", None)

            def forward(*args, **kwargs):
                self.any_active(True)
                return self.inner(*args, **kwargs)

            # The decoding loop reads the signature (cache argument, logits_to_keep): the inner model's.
            self.forward = functools.wraps(inner.forward)(forward)

        def any_active(self, active: bool) -> bool:
            flag = torch.tensor([1.0 if active else 0.0], device=accelerator.device)
            return float(accelerator.reduce(flag, "sum").item()) > 0

        def get_output_embeddings(self):   # decoding reads the width from it (``decoding.logit_width``)
            return self.inner.get_output_embeddings()

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
