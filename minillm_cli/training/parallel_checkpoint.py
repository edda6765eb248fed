"""Checkpoints and exports of a run on several processes (the engine's ``save``, ``resume`` and ``_export``).

A checkpoint is written once, by the main process, in the layout of ``checkpoint.py`` (full student weights,
optimizer, scheduler, trainer state, random states, objective state, config), plus:

- ``ranks.pt``: the random state of every process (sampling differs per process), so that a run resumed on the
  same number of processes continues exactly; on another number, process 0 continues the saved stream and the
  others start fresh streams seeded from (seed, step, rank);
- with DeepSpeed, ``zero/``: DeepSpeed's own checkpoint (each process writes its ZeRO optimizer shards into it;
  ``optimizer.pt`` then only marks the format) and ``student/`` (the student's config.json and tokenizer), from
  which ``minillm convert zero`` makes a Hugging Face directory.

Under ZeRO-3 the full weights are gathered on every process for the save (the student is small next to its
teacher). Resuming on the process count that wrote the checkpoint loads the ZeRO state exactly; on another count
the weights are loaded and the optimizer's moments restart (DeepSpeed partitions them by process count), with a
warning. Without DeepSpeed the checkpoint holds nothing that depends on the process count, so a checkpoint of
2 processes resumes exactly on 1 and vice versa.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .distributed import ZERO_DIR, gather_objects, process_seed, uses_deepspeed
from .sharding import gathered

RANKS_FILE = "ranks.pt"
STUDENT_DIR = "student"
ZERO_TAG = "state"


class _Marker:
    """Stands in for a DeepSpeed optimizer in ``checkpoint.save_checkpoint``/``load_checkpoint``: its real state
    is in ``zero/``."""

    def state_dict(self):
        return {"deepspeed": True}

    def load_state_dict(self, state):
        pass


def _capture_module():
    """A module whose load_state_dict keeps what it is given (to read a checkpoint's weights without a model)."""
    import torch

    class Capture(torch.nn.Module):
        loaded: dict = {}

        def state_dict(self, *args, **kwargs):
            return {}

        def load_state_dict(self, state_dict, strict=True, assign=False):
            self.loaded = dict(state_dict)
            return [], []

    return Capture()


def _barrier(accelerator):
    accelerator.wait_for_everyone()


def save_parallel(engine, save_checkpoint) -> Path:
    import torch

    from .checkpoint import rng_states

    accelerator = engine.accelerator
    main = accelerator.is_main_process
    _barrier(accelerator)
    states = gather_objects(accelerator, rng_states())
    staging = engine.output_dir / "checkpoints" / f".staging-step-{engine.state.step:06d}"
    extra = {}
    deepspeed = uses_deepspeed(accelerator)
    if deepspeed:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        _barrier(accelerator)
        # Every process writes its ZeRO partition; the file system must be shared between machines.
        engine.student.save_checkpoint(str(staging / ZERO_DIR), tag=ZERO_TAG)
        _barrier(accelerator)
        extra[ZERO_DIR] = staging / ZERO_DIR
    path = None
    with gathered(engine.unwrapped(), accelerator) as model:
        if main:
            def write_extra(directory: Path) -> None:
                torch.save({"world": accelerator.num_processes, "states": states}, directory / RANKS_FILE)
                if deepspeed:
                    model.config.save_pretrained(directory / STUDENT_DIR)
                    engine.tokenizer.save_pretrained(directory / STUDENT_DIR)

            optimizer = _Marker() if deepspeed else engine.optimizer
            try:
                path = save_checkpoint(
                    engine.output_dir, engine.state, _own_storage(model) if deepspeed else model, optimizer,
                    engine.scheduler, engine.objective, engine.rng, engine.config_yaml,
                    keep=engine.config.checkpoint.keep, extra=extra, write_extra=write_extra,
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    _barrier(accelerator)
    return path


def _own_storage(model):
    """A module whose state dict is ``model``'s with every tensor copied out of ZeRO's flat buffers (safetensors
    refuses views into a larger storage); tied weights stay one tensor."""
    import torch

    class OwnStorage(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            copies, out = {}, {}
            for name, tensor in model.state_dict().items():
                key = (tensor.data_ptr(), tuple(tensor.shape))
                if key not in copies:
                    copies[key] = tensor.detach().clone()
                out[name] = copies[key]
            return out

    return OwnStorage()


def resume_parallel(engine, path: Path, load_checkpoint):
    import torch

    from .checkpoint import set_rng_states

    accelerator = engine.accelerator
    deepspeed = uses_deepspeed(accelerator)
    if not deepspeed:
        state = load_checkpoint(path, engine.unwrapped(), engine.optimizer, engine.scheduler, engine.objective, engine.rng)
    else:
        capture = _capture_module()
        state = load_checkpoint(path, capture, _Marker(), engine.scheduler, engine.objective, engine.rng)
        saved_world = _saved_world(path)
        zero = path / ZERO_DIR
        if zero.is_dir() and saved_world == accelerator.num_processes:
            engine.student.load_checkpoint(str(zero), tag=ZERO_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        else:
            _load_full_weights(engine, capture.loaded)
            if accelerator.is_main_process:
                warnings.warn(
                    f"checkpoint {path.name} was written by {saved_world or 'another number of'} process(es) "
                    f"under DeepSpeed and is resumed on {accelerator.num_processes}: the weights, schedule, data "
                    "position and random state continue, the optimizer's moments restart (ZeRO partitions them by "
                    "process count); resume on the same count to continue them exactly",
                    stacklevel=2,
                )
    # Every process restored process 0's random state above; each takes its own back when it can.
    ranks = path / RANKS_FILE
    saved = torch.load(ranks, weights_only=True) if ranks.is_file() else None
    rank = accelerator.process_index
    if saved is not None and saved.get("world") == accelerator.num_processes:
        set_rng_states(saved["states"][rank])
    elif rank > 0:
        torch.manual_seed(process_seed(engine.config.train.seed + state.step, rank))
    return state


def _saved_world(path: Path):
    import torch

    ranks = path / RANKS_FILE
    return torch.load(ranks, weights_only=True).get("world") if ranks.is_file() else None


def _load_full_weights(engine, weights: dict) -> None:
    """The checkpoint's full weights into a DeepSpeed student (ZeRO-3: gathered, changed on process 0 and
    broadcast), then into the optimizer's fp32 master copy."""
    import torch

    model = engine.unwrapped()
    params = dict(model.named_parameters())
    if engine.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
            if engine.accelerator.is_main_process:
                _copy(params, weights)
    else:
        _copy(params, weights)
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    refresh = getattr(optimizer, "refresh_fp32_params", None)
    if callable(refresh):
        refresh()
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


def _copy(params: dict, weights: dict) -> None:
    import torch

    from ..errors import MinillmError

    missing = [name for name in params if name not in weights]
    # Tied weights appear once in the file (safetensors drops duplicates): the tied parameter is the same tensor.
    missing = [name for name in missing if not any(params[name] is params[other] for other in weights if other in params)]
    if missing:
        raise MinillmError(f"checkpoint lacks {len(missing)} student weight(s), e.g. {missing[0]}; it belongs to another model")
    with torch.no_grad():
        for name, param in params.items():
            if name in weights:
                param.data.copy_(weights[name].to(param.dtype))


def export_parallel(engine, out: Path, meta: dict, export_model):
    """Every process takes part (ZeRO-3 gathers the weights); the main process writes ``out``."""
    from .numerics import nonfinite_parameter, nonfinite_weights_error

    accelerator = engine.accelerator
    path = None
    with gathered(engine.unwrapped(), accelerator) as model:
        # Every process holds the same (gathered) weights, so every process refuses together.
        bad = nonfinite_parameter(model)
        if bad is not None:
            raise nonfinite_weights_error(bad, engine.state, engine.config.train.lr)
        if accelerator.is_main_process:
            try:
                if hasattr(engine.model, "peft_config"):
                    from .lora import export_lora

                    path = export_lora(engine.model, engine.tokenizer, out, meta, merge=engine.config.train.lora.merge_on_export)
                else:
                    path = export_model(model, engine.tokenizer, out, meta)
            except Exception as exc:   # a full disk: one line, the earlier export and the checkpoints intact
                from .checkpoint import write_failure_error

                error = write_failure_error(exc, f"{out.name}/ in {out.parent}", engine.output_dir)
                if error is None:
                    raise
                raise error from exc
    _barrier(accelerator)
    return path
