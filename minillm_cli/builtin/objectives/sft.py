"""SFT: cross-entropy on the gold responses, the "SFT w/o KD" baseline (docs/method.md §2, §5)."""

from __future__ import annotations

from ...objective import LossOutput, Objective, StepContext
from ._common import weighted_loss


class SFT(Objective):
    name = "sft"
    help = (
        "Supervised fine-tuning: cross-entropy on the gold responses, no teacher (the paper's 'SFT w/o KD' "
        "baseline and the students' initialisation step; docs/method.md §2)."
    )
    needs = frozenset({"gold"})

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        return weighted_loss(batch, ctx, ce_weight=1.0)
