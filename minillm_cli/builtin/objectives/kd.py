"""KD: word-level knowledge distillation on the gold responses, (1 − r)·CE + r·FKL (docs/method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import in_unit_interval, weighted_loss


@dataclass
class KDOptions:
    ratio: float = option(0.5, "Weight r of the forward-KL term: loss = (1 − r)·CE + r·FKL (reference: 0.5).")

    def validate(self) -> list[str]:
        return in_unit_interval("ratio", self.ratio)


class KD(Objective):
    name = "kd"
    help = (
        "Word-level KD on the gold responses: (1 − ratio)·cross-entropy + ratio·forward KL(teacher ‖ student) "
        "over the whole vocabulary; the reference baseline uses ratio 0.5 (docs/method.md §2)."
    )
    Options = KDOptions
    needs = frozenset({"gold", "teacher"})

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        r = self.options.ratio
        return weighted_loss(batch, ctx, ce_weight=1.0 - r, divergence="fkl", divergence_weight=r)
