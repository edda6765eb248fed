"""Resolving model names through the families, and loading models and tokenizers.

A model is named by a family alias (``llama-7b``), a Hugging Face hub id (``org/name``), a local model
directory, or a ``.gguf`` file; every command accepts all four.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import MinillmError
from .decoding import logit_width   # noqa: F401  (re-exported: where callers look for a loaded model's facts)
from .family import ModelFamily
from .files import check_tokenizer_files, check_weights, read_config
from ..plugins import model_families

DTYPES = {
    "fp32": "float32", "float32": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its files are and which family it belongs to."""

    spec: str                    # what the user typed
    family: ModelFamily
    source: str                  # local directory or hub id
    gguf_file: Optional[str] = None   # file name inside ``source`` when the weights are GGUF
    local: bool = True

    @property
    def display(self) -> str:
        return os.path.join(self.source, self.gguf_file) if self.gguf_file else self.source

    def load_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def torch_dtype(name: str):
    import torch

    key = DTYPES.get(str(name).lower().replace("torch.", ""))
    if key is None:
        raise MinillmError(f"unknown dtype '{name}'; known: fp32, bf16, fp16")
    return getattr(torch, key)


def all_aliases() -> dict[str, ModelFamily]:
    aliases: dict[str, ModelFamily] = {}
    for family in model_families().values():
        for alias in family.aliases:
            aliases[alias.lower()] = family
    return aliases


def _gguf_metadata(path: Path) -> tuple[str, str]:
    """(architecture, name) from a GGUF header."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise MinillmError("reading .gguf files needs the 'gguf' package: pip install gguf") from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - a cut or foreign file fails inside gguf as ValueError, IndexError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MinillmError(
            f"GGUF file '{path}' is truncated or corrupt ({first}); download or convert it again"
        ) from None

    def field(key: str) -> str:
        value = reader.fields.get(key)
        return str(value.contents()) if value is not None else ""

    architecture = field("general.architecture")
    # Without these, transformers falls back to its defaults (a 7B-sized llama) and tries to build that.
    missing = [key for key in (f"{architecture}.block_count", f"{architecture}.embedding_length")
               if key not in reader.fields] if architecture else ["general.architecture"]
    if missing or not reader.tensors:
        lacking = ", ".join(missing) if missing else "tensors"
        raise MinillmError(
            f"GGUF file '{path}' has no {lacking}: it does not describe a complete model; download or convert it again"
        )
    return architecture, " ".join([field("general.name"), field("general.basename")])


def detect_family(model_type: str, names: list[str], spec: str) -> ModelFamily:
    """The family for a model_type; families with a matching name pattern win over generic ones."""
    families = model_families()
    candidates = [f for f in families.values() if model_type in f.model_types]
    if not candidates:
        known = sorted({t for f in families.values() for t in f.model_types})
        raise MinillmError(
            f"no model family handles model_type '{model_type}' (model '{spec}'); known model types: "
            f"{', '.join(known)}; install a plugin that registers one, or pass --family"
        )
    named = [f for f in candidates if any(f.matches_name(n) for n in names if n)]
    if named:
        return named[0]
    generic = [f for f in candidates if not f.name_patterns]
    return (generic or candidates)[0]


def _family_for_local(path: Path, gguf_file: Optional[str], spec: str, family: Optional[ModelFamily]):
    if family is not None:
        return family
    if gguf_file:
        architecture, name = _gguf_metadata(path / gguf_file)
        return detect_family(architecture, [name, gguf_file, str(path)], spec)
    config = read_config(path)
    names = [config.get("_name_or_path", ""), str(path.resolve())]
    return detect_family(config.get("model_type", ""), names, spec)


def resolve_model(spec: str, family: Optional[str] = None) -> ModelRef:
    """Turn what the user typed into a ModelRef, or fail with the known names."""
    from ..plugins import get_family

    forced = get_family(family) if family else None
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise MinillmError(
                    f"model file '{spec}' is not a .gguf file; pass a model directory, a .gguf file or a model name"
                )
            return ModelRef(spec, _family_for_local(path.parent, path.name, spec, forced), str(path.parent), path.name)
        if (path / "config.json").is_file():
            return ModelRef(spec, _family_for_local(path, None, spec, forced), str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(spec, _family_for_local(path, ggufs[0].name, spec, forced), str(path), ggufs[0].name)
        raise MinillmError(
            f"directory '{spec}' is not a model directory (no config.json"
            + (f"; several .gguf files: {', '.join(g.name for g in ggufs)}; name one" if ggufs else "")
            + "); pass a Hugging Face model directory or a .gguf file"
        )

    aliases = all_aliases()
    alias_family = aliases.get(spec.lower())
    if alias_family is not None:
        chosen = forced or alias_family
        if alias_family.local_source is not None:
            local = alias_family.local_source(spec.lower())
            if local:
                resolved = resolve_model(local, family=chosen.name)
                return ModelRef(spec, chosen, resolved.source, resolved.gguf_file, True)
        return ModelRef(spec, chosen, alias_family.aliases[spec.lower()], None, local=False)

    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and not path.suffix:
        return ModelRef(spec, forced or _family_for_hub(spec), spec, None, local=False)

    if path.suffix or os.sep in spec:
        raise MinillmError(f"model path '{spec}' does not exist; pass an existing directory or .gguf file")
    raise MinillmError(
        f"unknown model '{spec}'; known names: {', '.join(sorted(aliases))}; "
        "or pass a local directory, a .gguf file or a Hugging Face id (org/name)"
    )


def _family_for_hub(hub_id: str) -> ModelFamily:
    from transformers import AutoConfig

    try:
        # Detection reads the config only; code a repository ships never runs here (trust_remote_code=False).
        config = AutoConfig.from_pretrained(hub_id, trust_remote_code=False)
    except OSError as exc:
        raise hub_error(hub_id, exc) from exc
    except ValueError as exc:
        raise _remote_code_error(hub_id, exc) from exc
    return detect_family(config.model_type, [hub_id], hub_id)


def _remote_code_error(name: str, exc: Exception) -> Exception:
    """transformers' ValueError for a model that needs its own Python code, as one line; other errors unchanged."""
    if "trust_remote_code" not in str(exc):
        return exc
    return MinillmError(
        f"model '{name}' needs to run Python code shipped with it (auto_map in its config.json), which minillm "
        "does not do by default; read that code, then pass trust_remote_code=true if you trust it, or use a "
        "model transformers supports natively"
    )


def hub_error(name: str, exc: Exception) -> MinillmError:
    """The error for a model that is neither cached nor fetchable: offline or not, and what to do instead."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched from the hub"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MinillmError(
        f"model '{name}' is not in the local Hugging Face cache and {reason} ({first_line}); "
        "download it while online, or pass a local model directory or .gguf file"
    )


def quiet_transformers() -> None:
    """minillm draws its own progress; transformers' per-load bars would interleave with it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def _quiet_gguf(ref: ModelRef):
    """transformers' GGUF dequantiser draws a bare tqdm bar that ignores its own progress-bar switch."""
    if not ref.gguf_file:
        yield
        return
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _local_directory(ref: ModelRef) -> bool:
    """A Hugging Face directory on disk (not a hub id, not a GGUF file), whose files can be checked first."""
    return not ref.gguf_file and Path(ref.source).is_dir()


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    """The tokenizer, with a pad token and the family's padding side.

    ``trust_remote_code``: run tokenizer code shipped with the model; off unless the user asks (it is arbitrary
    Python). Passed explicitly: transformers' own default (None) would prompt on the terminal and wait.
    """
    from transformers import AutoTokenizer

    if _local_directory(ref):
        check_tokenizer_files(Path(ref.source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.source, trust_remote_code=trust_remote_code, **ref.load_kwargs())
    except OSError as exc:
        raise hub_error(ref.spec, exc) from exc
    except ValueError as exc:
        raise _remote_code_error(ref.spec, exc) from exc
    if tokenizer.pad_token is None:
        # Padding positions are always masked out, so any existing token is a safe pad; EOS is conventional.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.eos_token_id is None:
        raise MinillmError(f"tokenizer of '{ref.spec}' has no end-of-sequence token; responses cannot end")
    tokenizer.padding_side = ref.family.padding_side
    return tokenizer


def load_model(
    ref: ModelRef, dtype: str = "fp32", device=None, trainable: bool = False, trust_remote_code: bool = False,
    placement: Optional[dict] = None,
):
    """The causal LM; in eval mode without gradients unless ``trainable``.

    Weights come from safetensors or, for ``.bin`` files, through transformers' torch.load(weights_only=True);
    model code shipped with the weights runs only with ``trust_remote_code`` (see ``load_tokenizer``).
    ``placement``: from_pretrained's device_map/max_memory, spreading a large model over devices as it loads
    (``training.sharding.teacher_device_map``).
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    if _local_directory(ref):
        check_weights(Path(ref.source))
    try:
        with _quiet_gguf(ref):
            model = AutoModelForCausalLM.from_pretrained(
                ref.source, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **ref.load_kwargs(),
                **(placement or {}),
            )
    except OSError as exc:
        raise hub_error(ref.spec, exc) from exc
    except ValueError as exc:
        raise _remote_code_error(ref.spec, exc) from exc
    if ref.gguf_file and getattr(model.config, "quantization_config", None) is not None:
        # The weights are dequantised on load; keeping the GGUF marker would make a saved copy unloadable.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    if device is not None:
        model.to(device)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


