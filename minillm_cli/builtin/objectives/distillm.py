"""DistiLLM (Ko et al., ICML 2024): skew KL with the adaptive off-policy use of student-generated outputs.

The schedule follows the authors' reference code (github.com/jongwooko/distillm, ``finetune.py``'s training
loop with ``--type adaptive-s{f,r}kl``, and ``distillm/buffer.py``), defaults from ``arguments.py`` and the
GPT-2/OPT ``scripts/*/distillm/*.sh`` (``--init-threshold 0.0 --loss-eps 0.1 --capacity 1000``):

- a threshold φ starts at ``init_threshold`` (0: pure off-policy KD on gold responses at first);
- each micro-batch draws r ~ U[0, 1) and computes the generation threshold from φ and training progress
  (``replay_ratio``: "decreasing" = φ·(1 − progress), the reference default; "constant" = φ/2;
  "increasing" = φ·progress). Then:
    r < generation threshold, or r < φ while the replay buffer is not yet full
        → sample fresh responses from the student, append them to the buffer, train on them;
    otherwise r < φ → train on responses drawn from the replay buffer (off-policy reuse);
    otherwise       → train on the gold responses;
- after each validation, if the validation loss rose by at least ``loss_eps`` over the reference loss, φ rises
  by 0.1 (capped at 1) and the reference loss becomes the current one. The reference code compares against
  the loss at which φ last rose (first: the loss before training), not against the best loss, so a slow
  drift upwards still triggers it; we do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...objective import LossOutput, Objective, StepContext, option
from ._common import in_unit_interval, needs_by_options, non_negative, pad_id_of, weighted_loss

LOSS_TYPES = ("srkl", "skl")
REPLAY_RATIOS = ("decreasing", "constant", "increasing")


@dataclass
class DistiLLMOptions:
    loss_type: str = option("srkl", "Skew divergence: 'srkl' = KL(q ‖ αq + (1−α)p) or 'skl' = KL(p ‖ αp + (1−α)q).")
    alpha: float = option(0.1, "Skew α of SKL/SRKL (reference: 0.1).")
    ce_weight: float = option(0.0, "Weight of an added cross-entropy term (the reference scripts use none: kd_ratio 1).")
    init_threshold: float = option(0.0, "Initial threshold φ: probability of using student-generated outputs.")
    threshold_step: float = option(0.1, "Amount φ rises when the validation loss rises by loss_eps.")
    loss_eps: float = option(0.1, "Validation-loss increase that raises φ (reference: 0.1).")
    replay_capacity: int = option(1000, "Student samples kept in the replay buffer (reference: 1000).")
    replay_ratio: str = option("decreasing", "Fresh-sample share of φ over training: decreasing, constant or increasing.")

    def validate(self) -> list[str]:
        problems = []
        if self.loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got '{self.loss_type}'")
        if self.replay_ratio not in REPLAY_RATIOS:
            problems.append(f"replay_ratio must be one of {', '.join(REPLAY_RATIOS)}, got '{self.replay_ratio}'")
        problems += in_unit_interval("alpha", self.alpha)
        problems += in_unit_interval("init_threshold", self.init_threshold)
        problems += in_unit_interval("threshold_step", self.threshold_step)
        problems += non_negative("ce_weight", self.ce_weight)
        problems += non_negative("loss_eps", self.loss_eps)
        if self.replay_capacity < 1:
            problems.append(f"replay_capacity must be >= 1, got {self.replay_capacity}")
        return problems


class DistiLLM(Objective):
    name = "distillm"
    help = (
        "DistiLLM (Ko et al., ICML 2024): skew reverse KL (or skew KL) with alpha 0.1, plus the adaptive "
        "off-policy schedule: student-generated outputs are used with a probability that rises when the "
        "validation loss rises, and reused from a replay buffer (docs/method.md §6; reference code "
        "github.com/jongwooko/distillm)."
    )
    Options = DistiLLMOptions
    # Student samples only when the schedule can ever use them (φ starts above 0 or can rise).
    needs = needs_by_options(
        {"gold", "teacher", "student_samples"},
        lambda o: {"gold", "teacher"} | ({"student_samples"} if o.init_threshold > 0 or o.threshold_step > 0 else set()),
    )

    def __init__(self, options=None):
        super().__init__(options)
        self.threshold: float = float(self.options.init_threshold)
        self.prev_loss: float | None = None        # the reference's prev_avg_loss
        self.replay: list[list[list[int]]] = []    # [prompt ids, response ids] pairs, oldest first

    # --- the schedule -------------------------------------------------------------------------------------

    def generation_threshold(self, progress: float) -> float:
        """The part of φ spent on fresh student samples at this point of training (reference: samp_threshold)."""
        if self.options.replay_ratio == "constant":
            return self.threshold * 0.5
        if self.options.replay_ratio == "increasing":
            return self.threshold * progress
        return self.threshold * (1.0 - progress)

    def prepare_batch(self, batch, ctx: StepContext):
        # One draw per micro-batch from the engine's RNG (saved in checkpoints), as the reference draws one
        # np.random.uniform per micro-batch.
        draw = ctx.rng.random()
        size = len(batch.prompts)
        buffer_full = len(self.replay) >= self.options.replay_capacity
        if draw < self.generation_threshold(ctx.training_progress) or (draw < self.threshold and not buffer_full):
            sampled = ctx.sample_student(batch)
            self._remember(sampled)
            return sampled
        if draw < self.threshold:
            return self._replayed(batch, min(size, len(self.replay)), ctx)
        return batch

    def _remember(self, sampled) -> None:
        for prompt, response in zip(sampled.prompts, sampled.responses):
            self.replay.append([list(prompt), list(response)])
        # A FIFO of bounded length, like the reference's deque(maxlen=capacity).
        overflow = len(self.replay) - self.options.replay_capacity
        if overflow > 0:
            del self.replay[:overflow]

    def _replayed(self, batch, size: int, ctx: StepContext):
        from ...data.batches import make_batch

        entries = ctx.rng.sample(self.replay, size)
        replayed = make_batch(
            [e[0] for e in entries], [e[1] for e in entries], pad_id_of(batch), source="student"
        )
        replayed.extras["replayed"] = True
        return replayed.to(batch.input_ids.device)

    def on_validation(self, metrics: dict[str, float]) -> None:
        loss = metrics.get("valid_loss")
        if loss is None:
            return
        if self.prev_loss is None:
            # The reference evaluates before the first step and compares every later validation with that.
            self.prev_loss = float(loss)
            return
        if loss >= self.prev_loss + self.options.loss_eps:
            self.threshold = min(self.threshold + self.options.threshold_step, 1.0)
            self.prev_loss = float(loss)

    # --- the loss -----------------------------------------------------------------------------------------

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        output = weighted_loss(
            batch, ctx, ce_weight=self.options.ce_weight, divergence=self.options.loss_type,
            divergence_weight=1.0, alpha=self.options.alpha,
        )
        # Weighted by this micro-batch's share of the step's tokens, so the engine's sum over micro-batches
        # reports φ itself.
        output.metrics["threshold"] = self.threshold * batch.num_tokens / max(float(ctx.num_tokens), 1e-9)
        return output

    # --- checkpoints --------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        # Plain floats and lists: saved as they are by torch.save (weights_only loading) and by json.
        return {
            "threshold": self.threshold,
            "prev_loss": self.prev_loss,
            "replay": [[list(p), list(r)] for p, r in self.replay],
        }

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state.get("threshold", self.options.init_threshold))
        prev = state.get("prev_loss")
        self.prev_loss = None if prev is None else float(prev)
        self.replay = [[list(map(int, p)), list(map(int, r))] for p, r in state.get("replay", [])]
