"""What each step trains on: deterministic epochs of examples, and the stop request of a Ctrl-C."""

from __future__ import annotations

import random
import signal

from .checkpoint import TrainerState


class ExampleStream:
    """Deterministic epochs: epoch e visits the examples in a permutation seeded by (seed, e).

    The position (epoch, index) is all a checkpoint needs to continue with the same batches. Each process
    takes its own slice of every global micro-batch, so ranks never see the same example in a step.
    """

    def __init__(self, examples: list, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.examples, self.batch_size, self.seed, self.rank, self.world = examples, batch_size, seed, rank, world
        self.global_batch = batch_size * world
        if len(examples) < self.global_batch:
            from ..errors import MinillmError

            raise MinillmError(
                f"{len(examples)} training examples are fewer than one batch ({self.global_batch}); "
                "lower train.batch_size or add data"
            )
        self._order_epoch, self._order = None, None

    def order(self, epoch: int) -> list[int]:
        if self._order_epoch != epoch:
            indices = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(indices)
            self._order_epoch, self._order = epoch, indices
        return self._order

    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.global_batch

    def next(self, state: TrainerState) -> list:
        if state.position + self.global_batch > len(self.examples):
            state.epoch, state.position = state.epoch + 1, 0   # the last partial batch of an epoch is dropped
        order = self.order(state.epoch)
        start = state.position + self.rank * self.batch_size
        chosen = [self.examples[i] for i in order[start:start + self.batch_size]]
        state.position += self.global_batch
        return chosen


class StopFlag:
    """First Ctrl-C asks the loop to stop after the current step (with a checkpoint); a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
