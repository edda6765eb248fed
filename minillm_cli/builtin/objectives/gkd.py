"""GKD (Agarwal et al., ICLR 2024): generalised JSD(β) on a mix of gold and student-sampled responses.

Follows TRL's GKDTrainer, whose option names we keep: with probability ``lmbda`` a batch's responses are
replaced by student samples (on-policy, no gradient through sampling); otherwise the gold responses are used,
or, with ``seq_kd``, teacher samples (TRL samples the teacher for every off-policy batch then).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import in_unit_interval, needs_by_options, weighted_loss


@dataclass
class GKDOptions:
    beta: float = option(0.5, "β of the generalised JSD: 0 behaves as forward KL, 1 as reverse KL (docs/method.md §6).")
    lmbda: float = option(0.5, "On-policy fraction λ: probability that a batch's responses are student samples.")
    seq_kd: bool = option(False, "Off-policy batches use teacher samples instead of the gold responses (TRL's seq_kd).")

    def validate(self) -> list[str]:
        return in_unit_interval("beta", self.beta) + in_unit_interval("lmbda", self.lmbda)


def _gkd_needs(options: GKDOptions):
    needs = {"gold", "teacher"}
    if options.lmbda > 0:
        needs.add("student_samples")
    if options.seq_kd and options.lmbda < 1:
        needs.add("teacher_samples")
    return needs


class GKD(Objective):
    name = "gkd"
    help = (
        "Generalised KD (Agarwal et al., ICLR 2024): token-level generalised JSD(beta) between teacher and "
        "student; with probability lmbda the responses are sampled from the student (on-policy), otherwise "
        "gold (or teacher samples with seq_kd), as in TRL's GKDTrainer (docs/method.md §6)."
    )
    Options = GKDOptions
    needs = needs_by_options({"gold", "teacher", "student_samples", "teacher_samples"}, _gkd_needs)

    def prepare_batch(self, batch, ctx: StepContext):
        # Exactly one draw from the engine's RNG per micro-batch, whatever the options, so that a resumed run
        # (whose checkpoint holds that RNG's state) makes the same on/off-policy choices.
        draw = ctx.rng.random()
        if draw < self.options.lmbda:      # '<': lmbda = 0 never samples, lmbda = 1 always does
            return ctx.sample_student(batch)
        if self.options.seq_kd:
            return ctx.sample_teacher(batch)
        return batch

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        return weighted_loss(batch, ctx, divergence="jsd", divergence_weight=1.0, beta=self.options.beta)
