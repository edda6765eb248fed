"""LoRA students (peft): adapters on the student's linear layers (``train.lora``) and exports that hold them.

Only the adapters train; the teacher, the rollouts and every loss see the student with its adapters applied, as
the full model would be. An export holds the merged model with the adapter in ``adapter/``, or the adapter alone;
``minillm convert merge-lora`` (minillm_cli/convert/lora.py) folds an adapter into a full model later.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Optional

from ..errors import MinillmError

ADAPTER_DIR = "adapter"   # where an export that holds the merged model keeps the adapter


def require_peft():
    """Fail with the install command when peft is missing."""
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise MinillmError("LoRA needs peft: pip install 'minillm[scale]' (or pip install peft)") from exc


@contextlib.contextmanager
def quiet_peft():
    """peft calls transformers APIs that transformers 5 marks deprecated; those warnings are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def apply_lora(model, lora, seed: int = 0):
    """The student with LoRA adapters (``train.lora``: r, alpha, dropout, target_modules); only they train.

    The adapters' random initialisation is drawn from ``seed`` (every process and every run the same), without
    touching the global random state."""
    require_peft()
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        with quiet_peft(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wrapped = get_peft_model(model, config)
    except ValueError as exc:   # target modules that the model does not have
        first = str(exc).strip().splitlines()[0]
        raise MinillmError(f"cannot add LoRA adapters to {type(model).__name__} ({first}); fix train.lora.target_modules") from exc
    wrapped.train()
    return wrapped


def is_lora(model) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "peft_config")


def merged_copy(model):
    """A plain transformers model with the adapters folded in; ``model`` itself keeps training unchanged."""
    return copy.deepcopy(model).merge_and_unload()


def export_lora(model, tokenizer, out: Path, metadata: Optional[dict] = None, *, merge: bool = True) -> Path:
    """``out`` holds the merged model (safetensors) with the adapter in ``out/adapter``, or (``merge=False``) only
    the adapter and the tokenizer; replaced atomically."""
    from ..atomic import atomic_directory, atomic_open

    with atomic_directory(out, overwrite=True) as tmp:
        adapter = tmp / ADAPTER_DIR if merge else tmp
        if merge:
            merged = merged_copy(model)
            merged.save_pretrained(tmp, safe_serialization=True)
            del merged
        model.save_pretrained(adapter, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if metadata:
            with atomic_open(tmp / "minillm.json") as handle:
                json.dump({**metadata, "lora": True, "merged": merge}, handle, indent=2)
    return out
