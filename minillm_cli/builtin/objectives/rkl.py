"""Token-level reverse KL on the gold responses (off-policy), optionally plus cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import non_negative, weighted_loss


@dataclass
class RKLOptions:
    ce_weight: float = option(0.0, "Weight of an added cross-entropy term on the gold responses.")

    def validate(self) -> list[str]:
        return non_negative("ce_weight", self.ce_weight)


class RKL(Objective):
    name = "rkl"
    help = (
        "Token-level reverse KL(student ‖ teacher) over the vocabulary on the gold responses (off-policy; the "
        "on-policy sequence-level version is the 'minillm' objective, docs/method.md §1), plus ce_weight·CE."
    )
    Options = RKLOptions
    needs = frozenset({"gold", "teacher"})

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        return weighted_loss(batch, ctx, ce_weight=self.options.ce_weight, divergence="rkl", divergence_weight=1.0)
