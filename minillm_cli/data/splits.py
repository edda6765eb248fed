"""Train / validation / test splits of instruction examples: seeded, order-keeping, and the split a run uses."""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import MinillmError
from .instructions import RUN_FIELDS_HINT, load_instructions


def _split_count(value, n: int, name: str) -> int:
    """A fraction in [0, 1) of ``n`` or an integer count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MinillmError(f"{name} must be a fraction in [0, 1) or a count, got {value!r}")
    if isinstance(value, float) and not (value.is_integer() and value >= 1):
        if not 0 <= value < 1:
            raise MinillmError(f"{name} must be a fraction in [0, 1) or a whole count, got {value!r}")
        count = int(round(value * n))
        # A small positive fraction of a small pool still gets one example: an empty validation set is
        # rarely what "valid=0.1" meant.
        return max(count, 1) if value > 0 and n > 1 else count
    count = int(value)
    if count < 0:
        raise MinillmError(f"{name} must not be negative, got {value!r}")
    return count


def split_examples(examples: Sequence, *, valid=0.1, test=0.0, seed: int = 0) -> dict:
    """Split into ``{"train", "valid", "test"}`` by a seeded random permutation.

    ``valid`` / ``test`` are fractions in [0, 1) or integer counts. The split depends only on ``seed`` and
    the number of examples (random.Random, not hash()), and each part keeps the input order.
    """
    examples = list(examples)
    n = len(examples)
    n_valid = _split_count(valid, n, "valid")
    n_test = _split_count(test, n, "test")
    if n_valid + n_test > n:
        raise MinillmError(
            f"cannot take {n_valid} validation and {n_test} test examples from {n} examples; use smaller sizes"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    valid_idx = sorted(order[:n_valid])
    test_idx = sorted(order[n_valid:n_valid + n_test])
    train_idx = sorted(order[n_valid + n_test:])
    return {
        "train": [examples[i] for i in train_idx],
        "valid": [examples[i] for i in valid_idx],
        "test": [examples[i] for i in test_idx],
    }


def train_valid_split(examples: Sequence, data_config) -> tuple:
    """(training, validation) examples of a run: the file ``data.valid``, else a split held out of ``examples``.

    The held-out split takes ``data.valid_size`` (a fraction, or a count when >= 1) with ``data.seed``; the
    ``default`` eval suite is this split of the embedded data under the default DataConfig.
    """
    if data_config.valid:
        return examples, load_instructions(data_config.valid, fields=data_config.fields, fields_hint=RUN_FIELDS_HINT)
    size = data_config.valid_size
    splits = split_examples(examples, valid=int(size) if size >= 1 else size, test=0, seed=data_config.seed)
    return splits["train"], splits["valid"]
