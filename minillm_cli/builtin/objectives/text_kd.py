"""Text KD: forward-KL distillation on plain text, to heal a student cut from its teacher before SFT.

A student made of a few of the teacher's layers starts far from any language model (docs/results.md measures a
6-of-30-layer SmolLM2 cut at 17.5 nats per response token). Fine-tuning on a thousand instructions cannot rebuild
that; the usual remedy for pruned models (Minitron, Sheared-LLaMA) is a short distillation on plain text, where
every token of every chunk carries the teacher's full distribution. The loss is (1 − r)·CE + r·KL(p ‖ q) per
token of the packed ``data.lm_corpus`` chunks (the word-level KD loss of docs/method.md §2, on text instead of
gold responses). The instruction data still drives the step count and the validation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import weighted_loss
from .kd import KDOptions


@dataclass
class TextKDOptions(KDOptions):   # KD's ratio and its check, pure distillation by default
    ratio: float = option(1.0, "Weight r of the forward-KL term on the text: loss = (1 − r)·CE + r·FKL (1: pure distillation).")


class TextKD(Objective):
    name = "text_kd"
    help = (
        "Forward-KL distillation on packed plain text (data.lm_corpus, every token counts): heals a student cut "
        "from its teacher before SFT; (1 − ratio)·CE + ratio·KL(teacher ‖ student)."
    )
    Options = TextKDOptions
    needs = frozenset({"gold", "teacher", "lm_chunks"})

    def prepare_batch(self, batch, ctx: StepContext):
        # One text batch in place of each gold micro-batch: the step's token count is the text's.
        return ctx.lm_batch()

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        r = self.options.ratio
        return weighted_loss(batch, ctx, ce_weight=1.0 - r, divergence="fkl", divergence_weight=r)
