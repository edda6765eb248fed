"""A model saved again in fp32, bf16 or fp16 and/or with other safetensors shard sizes, verified."""

from __future__ import annotations

import time
from typing import Union

from .verify import ConversionReport, ModelSpec, dtype_name, load_source, prepare_out, resolve_source, save_and_verify


def convert_dtype(
    source: ModelSpec, out, *, dtype: str, max_shard_size: Union[str, int] = "2GB", overwrite: bool = False
) -> ConversionReport:
    """Save a model (directory, .gguf file, alias or hub id) in fp32, bf16 or fp16, sharded at ``max_shard_size``."""
    started = time.perf_counter()
    dtype = dtype_name(dtype)
    ref = resolve_source(source)
    out = prepare_out(out, ref, overwrite)
    model, tokenizer = load_source(ref, "fp32")
    return save_and_verify(
        "dtype", ref, model, tokenizer, out, dtype, started, max_shard_size=max_shard_size, overwrite=overwrite
    )
