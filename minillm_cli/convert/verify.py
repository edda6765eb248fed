"""What every conversion shares: the source model, the output directory, the atomic save and its check on probe logits.

Every conversion writes atomically (into ``OUT.tmp-<pid>`` beside ``OUT``, renamed into place at the end, so a
failure never leaves a half-written ``OUT``) and then verifies itself: the result is reloaded from disk and its
logits on a fixed probe batch are compared with the source's. A failed check raises ``MinillmError`` and ``OUT``
is left untouched.

Heavy libraries (torch, transformers) are imported inside the functions.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import MinillmError
from ..models.load import DTYPES, ModelRef

# Relative tolerance (times the largest |logit| of the reference, at least 1) allowed for low-precision results.
# Reloading a model saved in fp16/bf16 reproduces the in-memory cast model exactly on the same device, so the
# measured difference is 0 in practice; the tolerance only absorbs kernel non-determinism.
LOW_PRECISION_RTOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}

PROBE_LENGTH = 8
PROBE_PADDING = 3
PROBE_TEXT = "Hello world"

ModelSpec = Union[str, os.PathLike, ModelRef]


@dataclass
class ConversionReport:
    """What a conversion wrote and how its verification went."""

    kind: str                     # "gguf", "dtype", "layers", "zero", "merge-lora" or "tokenizer"
    source: str                   # the source model as displayed
    out: Path
    seconds: float
    parameters: int
    dtype: str                    # fp32, bf16 or fp16
    max_abs_diff: float           # probe logits: reloaded result vs the reference (same dtype, same layers)
    tolerance: float
    passed: bool
    max_abs_diff_fp32: Optional[float] = None   # low-precision results: vs the fp32 source
    shards: int = 1
    tokenizer: bool = True        # a tokenizer was written (and encodes the probe text like the source's)
    layers: Optional[list[int]] = None          # cut_layers: the kept teacher layers
    source_layers: Optional[int] = None         # cut_layers: the teacher's number of layers
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.max_abs_diff == 0

    def summary(self) -> str:
        """One line: 'converted A -> B in 3.2 s; 134.5M parameters; probe logits match exactly (max |Δ| 0)'."""
        verb = "cut" if self.kind == "layers" else "converted"
        parts = [f"{verb} {self.source} → {self.out} in {self.seconds:.1f} s"]
        if self.layers is not None:
            parts.append(f"kept {len(self.layers)} of {self.source_layers} layers {self.layers}")
        parts.append(f"{format_count(self.parameters)} parameters")
        parts.append(self.dtype + (f" in {self.shards} shards" if self.shards > 1 else ""))
        reference = "" if self.max_abs_diff_fp32 is None else f" of the {self.dtype}-cast source"
        if self.exact:
            check = f"probe logits{reference} match exactly (max |Δ| 0"
        else:
            check = (
                f"probe logits{reference} match within {self.tolerance:.3g} "
                f"(max |Δ| {self.max_abs_diff:.3g}"
            )
        if self.max_abs_diff_fp32 is not None:
            check += f"; vs fp32 source {self.max_abs_diff_fp32:.3g}"
        parts.append(check + ")")
        if not self.tokenizer:
            parts.append("no tokenizer")
        parts.extend(self.notes)
        return "; ".join(parts)


def format_count(count: int) -> str:
    """'134.5M' for 134_515_008: one decimal and the largest unit of B, M, K that fits."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def dtype_name(dtype: str) -> str:
    """'bf16' for any spelling of bfloat16; an unknown name fails with the known ones."""
    key = DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if key is None:
        raise MinillmError(f"unknown dtype '{dtype}'; known: fp32, bf16, fp16")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[key]


# --------------------------------------------------------------------------------------------------------------
# The source and the output directory


def resolve_source(source: ModelSpec) -> ModelRef:
    """The model a conversion reads: a ModelRef as given, anything else through resolve_model."""
    from ..models.load import resolve_model

    return source if isinstance(source, ModelRef) else resolve_model(str(source))


def _source_paths(ref: ModelRef) -> list[Path]:
    if not ref.local:
        return []
    paths = [Path(ref.source)]
    if ref.gguf_file:
        paths.append(Path(ref.source) / ref.gguf_file)
    return [p.expanduser().resolve() for p in paths]


def prepare_out(out, ref: ModelRef, overwrite: bool) -> Path:
    """Check OUT before any work: not an existing non-empty path (unless overwrite), not holding the source."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    for source in _source_paths(ref):
        if source == resolved or resolved in source.parents:
            raise MinillmError(
                f"output '{out}' holds the source model '{ref.display}'; write the result to another directory"
            )
    if out.exists() and not overwrite:
        if out.is_file():
            raise MinillmError(f"output '{out}' is an existing file; pass --overwrite to replace it")
        if any(out.iterdir()):
            raise MinillmError(f"output directory '{out}' exists and is not empty; pass --overwrite to replace it")
    return out


def load_source(ref: ModelRef, dtype: str):
    """The source model in ``dtype`` and its tokenizer as it is (see load_source_tokenizer)."""
    from ..models.load import load_model

    model = load_model(ref, dtype)
    return model, load_source_tokenizer(ref)


def load_source_tokenizer(ref: ModelRef):
    """The source's tokenizer as it is (no pad token or padding side added), or None for a local model without one."""
    from transformers import AutoTokenizer

    from ..models.load import hub_error

    try:
        return AutoTokenizer.from_pretrained(ref.source, trust_remote_code=False, **ref.load_kwargs())
    except Exception as exc:  # noqa: BLE001 - a missing tokenizer surfaces as OSError, ValueError, TypeError ...
        if ref.local:
            return None
        if isinstance(exc, OSError):
            raise hub_error(ref.spec, exc) from exc
        raise


# --------------------------------------------------------------------------------------------------------------
# Probe logits


def probe_batch(vocab_size: int):
    """A fixed batch of 2 sequences of token ids; the second is left-padded (masked)."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, max(1, vocab_size), (2, PROBE_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :PROBE_PADDING] = 0
    return input_ids, attention_mask


def probe_logits(model):
    """Float32 logits at the unmasked positions of the probe batch, run without KV cache."""
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    input_ids, attention_mask = probe_batch(vocab)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
        ).logits
    return logits[attention_mask.to(device).bool()].float().cpu()


def compare_logits(reference, result) -> float:
    """Max |reference - result|; 0 when they are bit-identical, inf for shape mismatches, nan for NaNs."""
    import torch

    if reference.shape != result.shape:
        return float("inf")
    if torch.equal(reference, result):
        return 0.0
    return (reference - result).abs().max().item()


def _tolerance(dtype: str, reference) -> float:
    rtol = LOW_PRECISION_RTOL.get(DTYPES[dtype])
    if rtol is None:
        return 0.0
    return rtol * max(1.0, reference.abs().max().item())


# --------------------------------------------------------------------------------------------------------------
# Saving and verifying


def _count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())   # parameters() lists tied weights once


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def save_and_verify(
    kind: str,
    ref: ModelRef,
    model,
    tokenizer,
    out: Path,
    dtype: str,
    started: float,
    *,
    max_shard_size: Union[str, int] = "2GB",
    overwrite: bool = False,
    cast: bool = True,
) -> ConversionReport:
    """Save ``model`` (cast to ``dtype`` when ``cast``) and the tokenizer into OUT atomically, after verifying."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..atomic import atomic_directory
    from ..models.load import quiet_transformers, torch_dtype

    quiet_transformers()
    target = torch_dtype(dtype)
    reference = probe_logits(model)
    fp32_diff_reference = None
    if cast and target != torch.float32:
        fp32_diff_reference = reference if _model_dtype(model) == torch.float32 else None
        cast_parameters(model, target)
        reference = probe_logits(model)
    parameters = _count_parameters(model)
    probe_ids = _encode(tokenizer, PROBE_TEXT) if tokenizer is not None else None

    # An existing OUT (empty, or with overwrite) is replaced only after the result has passed its check.
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _record_source_name(tmp, ref)
        del model
        _free_memory(parameters)

        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=target, trust_remote_code=False)
        reloaded.eval()
        result = probe_logits(reloaded)
        del reloaded
        _free_memory(parameters)
        diff = compare_logits(reference, result)
        tolerance = _tolerance(dtype, reference)
        passed = diff <= tolerance   # False for nan
        fp32_diff = compare_logits(fp32_diff_reference, result) if fp32_diff_reference is not None else None
        if not passed:
            raise MinillmError(
                f"verification failed: the converted model's probe logits differ from the source's by {diff:.3g} "
                f"(tolerance {tolerance:.3g}); '{out}' was not written"
            )
        if tokenizer is not None:
            saved_ids = _encode(AutoTokenizer.from_pretrained(tmp, trust_remote_code=False), PROBE_TEXT)
            if saved_ids != probe_ids:
                raise MinillmError(
                    f"verification failed: the saved tokenizer encodes '{PROBE_TEXT}' as {saved_ids}, the source's "
                    f"as {probe_ids}; '{out}' was not written"
                )
        shards = len(list(tmp.glob("*.safetensors")))
        if out.exists() and not overwrite and out.is_dir() and any(out.iterdir()):
            raise MinillmError(f"output directory '{out}' exists and is not empty; pass --overwrite to replace it")

    return ConversionReport(
        kind=kind,
        source=ref.display if ref.local else ref.spec,
        out=out,
        seconds=time.perf_counter() - started,
        parameters=parameters,
        dtype=dtype,
        max_abs_diff=diff,
        tolerance=tolerance,
        passed=passed,
        max_abs_diff_fp32=fp32_diff,
        shards=shards,
        tokenizer=tokenizer is not None,
    )


def cast_parameters(model, dtype) -> None:
    """Cast the floating-point parameters in place, as loading with ``dtype=`` does.

    ``model.to(dtype)`` would also cast buffers such as rotary ``inv_freq``, which from_pretrained keeps in
    fp32; the cast model would then not be the model that loading the saved result gives.
    """
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    model.config.dtype = dtype


def _free_memory(parameters: int) -> None:
    """Collect a dropped model's reference cycles now when it is large (a full collection takes ~0.3 s)."""
    if parameters >= 10_000_000:
        gc.collect()


def _model_dtype(model):
    return next(model.parameters()).dtype


def _record_source_name(directory: Path, ref: ModelRef) -> None:
    """Keep the source's name in config.json (``_name_or_path``), which family detection reads.

    transformers does not save ``_name_or_path``; without it a converted SmolLM2 written to a directory whose
    name lacks 'smollm' would be detected as a generic llama model.
    """
    path = directory / "config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    name = _source_name(ref)
    if name:
        config["_name_or_path"] = name
        path.write_text(json.dumps(config, indent=2) + "\n")


def _source_name(ref: ModelRef) -> str:
    if not ref.local:
        return ref.source
    if ref.gguf_file:
        return ref.display
    try:
        original = json.loads((Path(ref.source) / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        original = None
    return original or str(Path(ref.source).expanduser().resolve())
