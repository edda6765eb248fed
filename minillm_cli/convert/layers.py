"""Students cut from a teacher: a subset of its transformer blocks, chosen, put in place of all of them, verified."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MinillmError
from ..models.load import ModelRef
from .verify import ConversionReport, ModelSpec, dtype_name, load_source, prepare_out, resolve_source, save_and_verify


def cut_layers(
    source: ModelSpec,
    out,
    *,
    keep: Optional[Sequence[int]] = None,
    every: Optional[int] = None,
    num_layers: Optional[int] = None,
    dtype: Optional[str] = None,
    overwrite: bool = False,
    num_layers_option: str = "--num-layers",
) -> ConversionReport:
    """A student made of a subset of the teacher's transformer blocks; embeddings, final norm and head are kept.

    Exactly one of ``keep`` (teacher layer indices, increasing), ``every`` (layers 0, k, 2k, ...) or
    ``num_layers`` (N layers spread evenly, the first and last included). The result is saved in ``dtype``
    (default: the teacher's stored dtype; fp32 for GGUF teachers). ``num_layers_option``: how the caller's user
    spells ``num_layers`` (distill's student_layers=N), for the error that names it.
    """
    started = time.perf_counter()
    ref = resolve_source(source)
    dtype = dtype_name(dtype) if dtype is not None else _stored_dtype(ref)
    out = prepare_out(out, ref, overwrite)
    model, tokenizer = load_source(ref, dtype)
    layers_path = ref.family.layers_path
    parent, attr, layers = _find_layers(model, layers_path, ref)
    indices = choose_layers(len(layers), keep=keep, every=every, num_layers=num_layers,
                            num_layers_option=num_layers_option)
    replace_layers(model, parent, attr, layers, indices)
    report = save_and_verify(
        "layers", ref, model, tokenizer, out, dtype, started, overwrite=overwrite, cast=False
    )
    report.layers = indices
    report.source_layers = len(layers)
    return report


def _stored_dtype(ref: ModelRef) -> str:
    """The dtype the teacher's config.json names; fp32 for GGUF and hub teachers, and when it names none known."""
    if ref.gguf_file or not ref.local:
        return "fp32"
    try:
        config = json.loads((Path(ref.source) / "config.json").read_text())
    except (OSError, ValueError):
        return "fp32"
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    try:
        return dtype_name(stored)
    except MinillmError:
        return "fp32"


def choose_layers(
    total: int,
    *,
    keep: Optional[Sequence[int]] = None,
    every: Optional[int] = None,
    num_layers: Optional[int] = None,
    num_layers_option: str = "--num-layers",
) -> list[int]:
    """The teacher layer indices to keep; validated, increasing, without duplicates."""
    given = [name for name, value in (("keep", keep), ("every", every), ("num_layers", num_layers)) if value is not None]
    if len(given) != 1:
        raise MinillmError(
            "choose the layers to keep with exactly one of --keep 0,2,4, --every 2 or --num-layers N"
            + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})" if given else "")
            + f"; the teacher has {total} layers (indices 0-{total - 1})"
        )
    valid = f"the teacher has {total} layers (valid indices 0-{total - 1})"
    if keep is not None:
        indices = [int(i) for i in keep]
        if not indices:
            raise MinillmError(f"--keep needs at least one layer index; {valid}")
        bad = [i for i in indices if not 0 <= i < total]
        if bad:
            raise MinillmError(f"layer index {bad[0]} is out of range; {valid}")
        duplicates = sorted({i for i in indices if indices.count(i) > 1})
        if duplicates:
            raise MinillmError(f"layer index {duplicates[0]} is given twice; {valid}")
        if indices != sorted(indices):
            raise MinillmError(
                f"layer indices must be increasing (got {','.join(map(str, indices))}, "
                f"use {','.join(map(str, sorted(indices)))}); {valid}"
            )
        return indices
    if every is not None:
        if not 1 <= int(every) <= total:
            raise MinillmError(f"--every must be between 1 and {total} (it keeps layers 0, k, 2k, ...); {valid}")
        return list(range(0, total, int(every)))
    count = int(num_layers)
    if not 1 <= count <= total:
        raise MinillmError(f"{num_layers_option} must be between 1 and {total}; {valid}")
    if count == 1:
        return [0]
    # Evenly spread, first and last included; rounding half up keeps the indices strictly increasing.
    return [(2 * i * (total - 1) + (count - 1)) // (2 * (count - 1)) for i in range(count)]


def _find_layers(model, layers_path: str, ref: ModelRef):
    import torch

    parent = model
    parts = layers_path.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part, None)
        if parent is None:
            break
    layers = getattr(parent, parts[-1], None) if parent is not None else None
    if not isinstance(layers, torch.nn.ModuleList):
        raise MinillmError(
            f"model '{ref.spec}' ({type(model).__name__}) has no ModuleList of layers at '{layers_path}', "
            f"the layers_path of family '{ref.family.name}'; pass the right family"
        )
    return parent, parts[-1], layers


def replace_layers(model, parent, attr: str, layers, indices: list[int]) -> None:
    """Keep ``layers[indices]`` in place of ``parent.attr``; update the config and the layers' ``layer_idx``."""
    import torch

    total = len(layers)
    kept = torch.nn.ModuleList([layers[i] for i in indices])
    setattr(parent, attr, kept)
    for new_index, layer in enumerate(kept):
        # Attention modules index the KV cache by layer_idx; it must follow the new numbering.
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    for name, value in list(vars(config).items()):
        # Per-layer lists (layer_types: full/sliding attention, ...) keep the entries of the kept layers.
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == total and not name.startswith("_"):
            setattr(config, name, type(value)(value[i] for i in indices))
    config.num_hidden_layers = len(indices)   # GPT-2's attribute_map maps it to n_layer
