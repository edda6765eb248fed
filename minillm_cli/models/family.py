"""What minillm knows about a model family: names, prompt format, padding, special tokens, layer layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

PROMPT_FORMATS = ("alpaca", "chat")


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that an installed Python package ships, which ``minillm convert`` converts offline.

    find_gguf: callable returning the GGUF file, or None when the package is not installed; it must not import
        the package (importing one may need native libraries that conversion does not).
    not_installed: the error shown when ``find_gguf`` finds nothing: what ships where and how to install it.
    """

    find_gguf: Callable[[], Optional[Path]]
    not_installed: str = ""


@dataclass(frozen=True)
class ModelFamily:
    """A model family, registered through the ``register_model_families`` hook.

    name: the family's name (``llama``).
    model_types: the ``config.model_type`` values (or GGUF ``general.architecture``) this family handles.
    aliases: short names users type (``llama-7b``) mapped to Hugging Face hub ids.
    prompt_format: ``alpaca`` (the template of docs/method.md §3) or ``chat`` (the tokenizer's chat template).
    padding_side: the side prompts are padded on when batched for generation; decoder-only models pad left.
    layers_path: dotted attribute path to the ModuleList of transformer blocks (used to cut students).
    add_bos: prepend the tokenizer's BOS token to prompts (the model was pre-trained with it).
    name_patterns: lower-case substrings of a model's name that pick this family over a generic family with
        the same model_type (SmolLM2 checkpoints are ``llama`` models).
    local_source: optional callable alias -> local path, for weights shipped by an installed package.
    description: one line shown by ``minillm plugins``.
    packaged: lower-case alias -> PackagedModel, for the GGUF models installed packages ship under that alias
        (``minillm convert gguf ALIAS`` converts them even once the alias names the converted directory).
    """

    name: str
    model_types: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    prompt_format: str = "alpaca"
    padding_side: str = "left"
    layers_path: str = "model.layers"
    add_bos: bool = True
    name_patterns: tuple[str, ...] = ()
    local_source: Optional[Callable[[str], Optional[str]]] = None
    description: str = ""
    packaged: Mapping[str, PackagedModel] = field(default_factory=dict)

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"family '{self.name}': prompt_format '{self.prompt_format}' must be one of {PROMPT_FORMATS}"
            )
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"family '{self.name}': padding_side must be 'left' or 'right'")

    def matches_name(self, text: str) -> bool:
        text = text.lower()
        return any(pattern in text for pattern in self.name_patterns)
