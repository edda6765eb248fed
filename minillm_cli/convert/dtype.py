"""A model saved again in fp32, bf16 or fp16 and/or with other safetensors shard sizes, verified."""

from __future__ import annotations

import time
from typing import Union

from ..errors import MinillmError
from .verify import ConversionReport, ModelSpec, dtype_name, load_source, prepare_out, resolve_source, save_and_verify


def convert_dtype(
    source: ModelSpec, out, *, dtype: str, max_shard_size: Union[str, int] = "2GB", overwrite: bool = False
) -> ConversionReport:
    """Save a model (directory, .gguf file, alias or hub id) in fp32, bf16 or fp16, sharded at ``max_shard_size``."""
    started = time.perf_counter()
    dtype = dtype_name(dtype)
    check_shard_size(max_shard_size)
    ref = resolve_source(source)
    out = prepare_out(out, ref, overwrite)
    model, tokenizer = load_source(ref, "fp32")
    return save_and_verify(
        "dtype", ref, model, tokenizer, out, dtype, started, max_shard_size=max_shard_size, overwrite=overwrite
    )


def check_shard_size(size: Union[str, int]) -> None:
    """A shard size the safetensors writer understands (bytes, or a number with KB, MB, GB, TB), else one line."""
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        if parse_size_to_int(size) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise MinillmError(
            f"--max-shard-size '{size}' is not a size; give a number with a unit, e.g. 500MB, 2GB (units: KB, MB, GB, TB)"
        ) from None
