"""LoRA students (peft): adapters on the student's linear layers (``train.lora``), exports that hold the merged
model and the adapter, and ``minillm convert merge-lora`` to fold an adapter into a full model.

Only the adapters train; the teacher, the rollouts and every loss see the student with its adapters applied, as
the full model would be. The merged model computes what the adapted one does (up to float rounding), which the
conversion checks on a probe batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from pathlib import Path
from typing import Optional

from ..errors import MinillmError

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
# Probe logits of the merged model vs the adapted one: W + s·BA computed in one matrix instead of two differs in
# the last bits; relative to the largest logit.
MERGE_RTOL = 1e-4


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise MinillmError("LoRA needs peft: pip install 'minillm[scale]' (or pip install peft)") from exc


@contextlib.contextmanager
def _quiet():
    """peft calls transformers APIs that transformers 5 marks deprecated; those warnings are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def apply_lora(model, lora, seed: int = 0):
    """The student with LoRA adapters (``train.lora``: r, alpha, dropout, target_modules); only they train.

    The adapters' random initialisation is drawn from ``seed`` (every process and every run the same), without
    touching the global random state."""
    _require_peft()
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        with _quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wrapped = get_peft_model(model, config)
    except ValueError as exc:   # target modules that the model does not have
        first = str(exc).strip().splitlines()[0]
        raise MinillmError(f"cannot add LoRA adapters to {type(model).__name__} ({first}); fix train.lora.target_modules") from exc
    wrapped.train()
    return wrapped


def is_lora(model) -> bool:
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


def adapter_base(adapter_dir: Path) -> Optional[str]:
    try:
        return json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def find_adapter(path: Path) -> Path:
    path = Path(path).expanduser()
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise MinillmError(f"no LoRA adapter in '{path}' (no {ADAPTER_CONFIG} there or in {ADAPTER_DIR}/); pass an adapter directory")


def merge_lora(adapter, out, *, base: Optional[str] = None, dtype: str = "fp32", overwrite: bool = False):
    """Fold a LoRA adapter into its base model and save a Hugging Face directory (safetensors + tokenizer).

    ``base`` defaults to the model the adapter was trained on (``base_model_name_or_path``). Verified: the saved
    model is reloaded and its probe logits compared with the adapted model's (before merging)."""
    _require_peft()
    import torch
    from peft import PeftModel

    from ..convert import core as convert
    from ..models.load import load_model, resolve_model

    started = time.perf_counter()
    adapter_dir = find_adapter(Path(adapter))
    base = base or adapter_base(adapter_dir)
    if not base:
        raise MinillmError(f"adapter '{adapter_dir}' does not name its base model; pass --base MODEL")
    try:
        ref = resolve_model(base)
    except MinillmError as exc:
        raise MinillmError(f"base model of the adapter: {exc}; pass --base MODEL") from exc
    dtype = convert.dtype_name(dtype)
    out = convert._prepare_out(out, ref, overwrite)
    model = load_model(ref, "fp32")
    with _quiet():
        adapted = PeftModel.from_pretrained(model, str(adapter_dir))
    adapted.eval()
    reference = convert.probe_logits(adapted)
    merged = adapted.merge_and_unload()
    merged_logits = convert.probe_logits(merged)
    diff = convert.compare_logits(reference, merged_logits)
    tolerance = MERGE_RTOL * max(1.0, reference.abs().max().item())
    if not diff <= tolerance:
        raise MinillmError(
            f"merging changed the probe logits by {diff:.3g} (tolerance {tolerance:.3g}); '{out}' was not written"
        )
    tokenizer = convert._load_tokenizer(ref)
    if tokenizer is None and (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with torch.no_grad():
        report = convert._save_and_verify("merge-lora", ref, merged, tokenizer, out, dtype, started, overwrite=overwrite)
    report.notes.append(f"adapter {adapter_dir} merged (probe logits vs the adapted model: max |Δ| {diff:.3g})")
    return report
