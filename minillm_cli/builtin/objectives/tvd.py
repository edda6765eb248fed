"""Total variation distance ½ Σ_v |p − q| on the gold responses (docs/method.md §6), optionally plus CE."""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import non_negative, weighted_loss


@dataclass
class TVDOptions:
    ce_weight: float = option(0.0, "Weight of an added cross-entropy term on the gold responses.")

    def validate(self) -> list[str]:
        return non_negative("ce_weight", self.ce_weight)


class TVD(Objective):
    name = "tvd"
    help = (
        "Token-level total variation distance ½ Σ_v |p − q| between teacher and student on the gold responses "
        "(a baseline in GKD and DistiLLM; docs/method.md §6), plus ce_weight·CE."
    )
    Options = TVDOptions
    needs = frozenset({"gold", "teacher"})

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        return weighted_loss(batch, ctx, ce_weight=self.options.ce_weight, divergence="tvd", divergence_weight=1.0)
