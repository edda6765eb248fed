"""Option values the commands share the parsing of: comma-separated integers (seeds, layer indices)."""

from __future__ import annotations

from typing import Optional


def comma_ints(text: str, *, option: str, items: str, example: str, empty: Optional[str] = None) -> list[int]:
    """The integers of a comma-separated option value, blank parts skipped; at least one.

    A part that is not an integer fails as "--keep must be comma-separated layer indices such as 0,2,4; got 'x'"
    (``option``, ``items``, ``example``); no integer at all fails with ``empty``, by default the same message.
    """
    from ..errors import MinillmError

    malformed = f"{option} must be comma-separated {items} such as {example}; got '{text}'"
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MinillmError(malformed) from None
    if not values:
        raise MinillmError(empty or malformed)
    return values


def parse_seeds(text: str) -> list[int]:
    """``--seeds 10,20,30``: the generation seeds, at least one."""
    return comma_ints(
        text, option="--seeds", items="integers", example="10,20,30",
        empty="--seeds needs at least one integer, such as --seeds 10",
    )


def parse_layer_indices(text: str) -> list[int]:
    """``--keep 0,2,4``: teacher layer indices, at least one (range and order are checked against the teacher)."""
    return comma_ints(text, option="--keep", items="layer indices", example="0,2,4")
