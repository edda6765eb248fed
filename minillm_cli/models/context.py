"""The model's context length: sequences that would not fit fail in one line (or warn, for RoPE models)."""

from __future__ import annotations

import sys
from typing import Optional

from ..errors import MinillmError

# How each command spells the two limits that decide a sequence's length.
LIMITS_HINT = ("lower the new tokens (--max-new-tokens; generation.max_new_tokens or eval.max_new_tokens in a run) "
               "or the prompt limit (--max-prompt-tokens; data.max_prompt_tokens)")
_warned: set = set()


def context_positions(config) -> tuple[Optional[int], bool]:
    """(positions, learned): how many positions the model has, and whether they are a learned table.

    A learned table (GPT-2, OPT) has no row past its end: going further is an index error. Rotary models (RoPE)
    compute positions, so they run past their trained context, only worse."""
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    rotary = any(getattr(config, key, None) is not None for key in ("rope_theta", "rope_scaling", "rope_parameters"))
    return positions, not rotary


def check_fits(model, tokens: int, what: str, how_to_fix: str = LIMITS_HINT) -> None:
    """Fail in one line when ``tokens`` positions exceed a learned position table; warn once for RoPE models."""
    positions, learned = context_positions(model.config)
    if not positions or tokens <= positions:
        return
    message = f"{what} need {tokens} positions but the model has {positions}"
    if learned:
        raise MinillmError(f"{message}; {how_to_fix}")
    if (positions, tokens) not in _warned:
        _warned.add((positions, tokens))
        sys.stderr.write(f"warning: {message} (rotary positions run past the trained context, with worse text); "
                         f"{how_to_fix}\n")
