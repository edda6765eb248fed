"""A DeepSpeed ZeRO checkpoint (the optimizer shards of every process) to a Hugging Face directory, verified.

``minillm convert zero`` writes safetensors. DeepSpeed keeps the fp32 master weights partitioned across the
``zero_pp_rank_*`` files; its ``zero_to_fp32`` reassembles them for any stage (1, 2, 3), whatever the number of
processes that wrote them.
The architecture and tokenizer come from the checkpoint's ``student/`` directory (minillm writes it beside
``zero/``) or from ``--model``. The result is reloaded and checked on a probe batch like every conversion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import MinillmError

PREFIXES = ("lm.", "module.", "_forward_module.")   # minillm's student wrapper, DDP/DeepSpeed wrappers


def find_zero_dir(checkpoint: Path) -> Path:
    """The DeepSpeed checkpoint folder: ``checkpoint/zero`` of a minillm checkpoint, or ``checkpoint`` itself."""
    checkpoint = Path(checkpoint).expanduser()
    for candidate in (checkpoint / "zero", checkpoint):
        if (candidate / "latest").is_file() or any(candidate.glob("*/zero_pp_rank_*_optim_states.pt")) \
                or any(candidate.glob("zero_pp_rank_*_optim_states.pt")):
            return candidate
    raise MinillmError(
        f"'{checkpoint}' is not a DeepSpeed ZeRO checkpoint (no 'latest' file or zero_pp_rank_*_optim_states.pt, "
        "nor a zero/ folder holding them); pass a checkpoint of a run with parallel.engine=deepspeed"
    )


def strip_prefix(state: dict) -> dict:
    """The state dict without the wrappers' name prefixes (PREFIXES) that every key carries."""
    for prefix in PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def zero_state_dict(zero_dir: Path, tag: Optional[str] = None) -> dict:
    """The full fp32 weights of a ZeRO checkpoint, names as in the Hugging Face model."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as exc:
        raise MinillmError("converting a ZeRO checkpoint needs DeepSpeed: pip install 'minillm[scale]'") from exc
    if tag is None and not (zero_dir / "latest").is_file():
        tags = sorted(p.name for p in zero_dir.iterdir() if p.is_dir() and any(p.glob("zero_pp_rank_*")))
        if not tags and any(zero_dir.glob("zero_pp_rank_*")):
            zero_dir, tags = zero_dir.parent, [zero_dir.name]
        if not tags:
            raise MinillmError(f"no ZeRO shards in '{zero_dir}'")
        tag = tags[-1]
    state = get_fp32_state_dict_from_zero_checkpoint(str(zero_dir), tag=tag)
    state = strip_prefix(dict(state))
    if any(".lora_" in key or ".base_layer." in key for key in state):
        raise MinillmError(
            "this ZeRO checkpoint holds LoRA adapters; use the run's exported adapter and `minillm convert merge-lora`"
        )
    return state


def convert_zero(checkpoint, out, *, model: Optional[str] = None, dtype: str = "fp32", tag: Optional[str] = None,
                 overwrite: bool = False):
    """Reassemble a ZeRO checkpoint into a Hugging Face directory (safetensors, config, tokenizer), verified."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.load import quiet_transformers, resolve_model
    from .verify import dtype_name, load_source_tokenizer, prepare_out, save_and_verify

    started = time.perf_counter()
    checkpoint = Path(checkpoint).expanduser()
    zero_dir = find_zero_dir(checkpoint)
    model_dir = Path(model).expanduser() if model else checkpoint / "student"
    if not (model_dir / "config.json").is_file():
        raise MinillmError(
            f"no model config for the ZeRO checkpoint (looked in '{model_dir}'); pass --model with the student's "
            "model directory (its config.json and tokenizer)"
        )
    ref = resolve_model(str(model_dir))
    dtype = dtype_name(dtype)
    out = prepare_out(out, ref, overwrite)
    quiet_transformers()
    state = zero_state_dict(zero_dir, tag)
    config = AutoConfig.from_pretrained(model_dir)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = {name for name in missing if _is_tied(hf_model, name, state)}
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MinillmError(f"the ZeRO checkpoint does not fit the model of '{model_dir}' ({problem}); pass the right --model")
    hf_model.tie_weights()
    hf_model.eval()
    tokenizer = load_source_tokenizer(ref)
    report = save_and_verify("zero", ref, hf_model, tokenizer, out, dtype, started, overwrite=overwrite)
    report.source = str(zero_dir)
    return report


def _is_tied(model, name: str, state: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(params.get(other) is target for other in state if other != name)
