"""``minillm convert merge-lora``: a LoRA adapter folded into its base model, saved as a full model and verified.

The merged model computes what the adapted one does (up to float rounding), which the merge checks on a probe
batch before the result is saved and verified like every conversion.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from ..errors import MinillmError
from ..training.lora import ADAPTER_DIR, quiet_peft, require_peft

ADAPTER_CONFIG = "adapter_config.json"
# Probe logits of the merged model vs the adapted one: W + s·BA computed in one matrix instead of two differs in
# the last bits; relative to the largest logit.
MERGE_RTOL = 1e-4


def adapter_base(adapter_dir: Path) -> Optional[str]:
    """The base model an adapter names (``base_model_name_or_path`` of its config), or None."""
    try:
        return json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def find_adapter(path: Path) -> Path:
    """The adapter directory: ``path`` itself, or the ``adapter/`` of an export holding the merged model."""
    path = Path(path).expanduser()
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise MinillmError(f"no LoRA adapter in '{path}' (no {ADAPTER_CONFIG} there or in {ADAPTER_DIR}/); pass an adapter directory")


def merge_lora(adapter, out, *, base: Optional[str] = None, dtype: str = "fp32", overwrite: bool = False):
    """Fold a LoRA adapter into its base model and save a Hugging Face directory (safetensors + tokenizer).

    ``base`` defaults to the model the adapter was trained on (``base_model_name_or_path``). Verified: the saved
    model is reloaded and its probe logits compared with the adapted model's (before merging)."""
    require_peft()
    import torch
    from peft import PeftModel

    from ..models.load import load_model, resolve_model
    from .verify import compare_logits, dtype_name, load_source_tokenizer, prepare_out, probe_logits, save_and_verify

    started = time.perf_counter()
    adapter_dir = find_adapter(Path(adapter))
    base = base or adapter_base(adapter_dir)
    if not base:
        raise MinillmError(f"adapter '{adapter_dir}' does not name its base model; pass --base MODEL")
    try:
        ref = resolve_model(base)
    except MinillmError as exc:
        raise MinillmError(f"base model of the adapter: {exc}; pass --base MODEL") from exc
    dtype = dtype_name(dtype)
    out = prepare_out(out, ref, overwrite)
    model = load_model(ref, "fp32")
    with quiet_peft():
        adapted = PeftModel.from_pretrained(model, str(adapter_dir))
    adapted.eval()
    reference = probe_logits(adapted)
    merged = adapted.merge_and_unload()
    merged_logits = probe_logits(merged)
    diff = compare_logits(reference, merged_logits)
    tolerance = MERGE_RTOL * max(1.0, reference.abs().max().item())
    if not diff <= tolerance:
        raise MinillmError(
            f"merging changed the probe logits by {diff:.3g} (tolerance {tolerance:.3g}); '{out}' was not written"
        )
    tokenizer = load_source_tokenizer(ref)
    if tokenizer is None and (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with torch.no_grad():
        report = save_and_verify("merge-lora", ref, merged, tokenizer, out, dtype, started, overwrite=overwrite)
    report.notes.append(f"adapter {adapter_dir} merged (probe logits vs the adapted model: max |Δ| {diff:.3g})")
    return report
