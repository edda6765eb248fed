"""MiniLLM (Gu et al., ICLR 2024): reverse KL to the teacher, minimised by policy gradient (docs/method.md §1-2).

Per micro-batch, on a teacher-mixed rollout batch (``ctx.sample_mixed``, with the coins of ``mix_coins``: see
``rollout``; its ``extras`` hold the log-probs recorded at sampling time, aligned with ``labels``: the rewards and
importance weights below use those, and no teacher pass recomputes them):

- rewards r_t = (log p(y_t) − log q_θold(y_t)) / reward_scale (1, or 0.5 in the reference variant), clipped to
  ±reward_clip (detached: both are recorded at sampling, the teacher is frozen);
- advantages, per sequence over its own valid response tokens only (position counted from the response's start;
  padding never enters returns, advantages or whitening statistics):
  ``paper``: A_t = R^Norm_{t+1} = mean of r_{t'} over t' > t (0 at the last token), w_t multiplies both terms;
  ``reference`` (LMOps code): A_t = Σ_{k≥0} γ^k r_{t+k} / (valid tokens remaining from t), whitened over the
  batch's valid tokens, w_t inside the PPO ratio, single-step term unweighted;
  ``unbiased``: A_t = Σ_{t'>t} (Π_{s≤t'} w_s) r_{t'}, the long-term term unweighted, the single-step term × Π_{s<t} w_s
  (the exact reverse-KL gradient in expectation);
- long-term term: PPO-clipped policy gradient max(−A ρ, −A clip(ρ, 1−ε, 1+ε)), ρ = exp(log q_θ − log q_θold)
  (× w_t in the reference variant);
- single-step term: Σ_t KL(q_θ(·|y_<t) ‖ p(·|y_<t)) exactly over the vocabulary (× w_t in the paper variant);
  both terms come from one projection per chunk of tokens, their gradient in closed form (``losses.policy``).

Every per-token sum is divided by ``ctx.num_tokens`` exactly once. Rollouts are sampled per optimizer step, one
rollout batch per micro-batch (``grad_accum`` of them: the step's rollout buffer), and the buffer serves
``ppo_epochs`` consecutive optimizer steps (docs/method.md §2: several PPO epochs over stored rollouts; the old
log-probs stay those recorded at sampling, so the PPO ratio is right). Rewards and advantages are computed once
per buffer; the reference variant whitens them with the mean and variance over every valid token of the buffer
on every process (``ctx.sum_over_processes``), as the reference code's global whitening does.

Language-modelling loss L_PT (``lm_weight``, 1 as in the paper: L = L_pg + L_single + L_PT; 0 = the "no L_PT"
ablation): per micro-batch one batch of packed plain-text chunks from ``ctx.lm_batch()`` (every token counts),
term = (1 − lm_kd_ratio)·CE + lm_kd_ratio·FKL(p ‖ q_θ) on that text (lm_kd_ratio 0 = the paper's plain CE; the
LMOps code uses 0.5). L_PT is a separate mean, not part of the rollout tokens: ``prepare_step`` fetches the step's
LM batches up front and sums their tokens (and the rollout tokens) over micro-batches and processes, so L_PT is
one per-token mean over every plain-text token of the step, with weight ``lm_weight``, whatever the split into
micro-batches and processes (the same parameters after a step on 1 or 2 processes). Called without that plan
(``loss`` on a bare rollout batch), the LM batch's own mean is scaled by (rollout tokens of this micro-batch /
``ctx.num_tokens``).

``state_dict`` holds the stored rollout buffer (CPU tensors, lists, plain values) and its use counter, so a run
resumed in the middle of a buffer's PPO epochs continues with the same rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...objective import LossOutput, Objective, StepContext, option
from ._common import in_unit_interval, needs_by_options, non_negative
from .minillm_estimator import (  # noqa: F401 - the estimator's functions, importable from the objective's module
    discounted_returns,
    discounted_whitened_advantages,
    estimator_weights,
    importance_weighted_returns,
    length_normalised_returns,
    scaled_rewards,
    whiten,
    whitening_moments,
)

VARIANTS = ("paper", "reference", "unbiased")
COIN_MODES = ("step", "row", "none")     # rollout.COIN_MODES (not imported: torch-free option checks)


@dataclass
class MiniLLMOptions:
    alpha: float = option(0.2, "Teacher-mix α of the rollout distribution α·p + (1−α)·q; 0 = the 'without "
                               "teacher-mixed sampling' ablation (importance weights all 1).")
    mix_coins: str = option("step", "How rollouts sample the mixture. step: one coin c ~ Bernoulli(α) per decoding "
                                    "step for the whole batch picks teacher or student for every row; the teacher "
                                    "runs only at ≈ α of the steps (catching up its KV cache in one pass) but the "
                                    "rows' choices are correlated within a batch: a higher variance of the "
                                    "batch-mean gradient, never a bias. row: one coin per row and step: rows "
                                    "independent (lower variance), the teacher runs whenever any row needs it "
                                    "(≈ 1 − (1−α)^B of the steps). none: no coin, the teacher runs at every step "
                                    "and the token is drawn from the mixture itself (sampling filters act on the "
                                    "mixture, as in the LMOps code). Each row's tokens follow α·p + (1−α)·q "
                                    "exactly in all three.")
    clip_eps: float = option(0.2, "PPO clipping ε of the ratio.")
    ppo_epochs: int = option(4, "Each optimizer step's rollouts serve this many consecutive optimizer steps.")
    keep_teacher_hidden: bool = option(True, "Keep the teacher's final hidden states of each stored rollout batch "
                                             "(B × T × d, on the teacher's device) from its first PPO epoch for the "
                                             "single-step term of the others: the teacher is frozen and the rollouts "
                                             "fixed, so the loss is the same with one teacher pass per rollout "
                                             "batch instead of ppo_epochs; False recomputes them (saves that memory "
                                             "between steps).")
    single_step: bool = option(True, "Add the exact single-step reverse-KL term (False: the ablation; the "
                                     "returns then include step t, as in the undecomposed gradient).")
    length_norm: Optional[bool] = option(None, "Length-normalise the returns (false: the ablation, plain sums); "
                                               "unset: true, except for variant=unbiased, which needs plain sums.")
    reward_scale: Optional[float] = option(None, "Rewards are divided by this; unset: 1 (the paper's estimator), "
                                                 "0.5 for variant=reference (the LMOps scripts' 1/0.5 scaling, "
                                                 "which weights the long-term term twice against the single-step "
                                                 "term).")
    reward_clip: float = option(100.0, "Rewards are clipped to ±this after scaling.")
    variant: str = option("paper", "paper (R^Norm_{t+1}, w_t on both terms), reference (LMOps code: "
                                   "discounted, divided by remaining tokens, whitened, w_t in the ratio) or unbiased "
                                   "(the exact reverse-KL gradient in expectation, docs/method.md §1: each future "
                                   "reward weighted by the product of the importance weights up to its token, the "
                                   "single-step term by the product before t, plain sums, no length normalisation; "
                                   "higher variance).")
    gamma: float = option(0.95, "Discount of the reference variant (unused by the paper variant).")
    lm_weight: float = option(1.0, "Weight of the language-modelling loss L_PT on packed plain text "
                                   "(data.lm_corpus, default the embedded corpus); 1 as in the paper, 0 = the "
                                   "'no L_PT' ablation (no text is loaded).")
    lm_kd_ratio: float = option(0.0, "Share of word-level KD in L_PT: (1 − r)·CE + r·FKL(teacher ‖ student) on the "
                                     "text; 0 = the paper's plain CE, 0.5 = the LMOps reference code.")

    def __post_init__(self):
        # Unset options follow the variant: the paper's estimator is unscaled, the LMOps scripts scale by 1/0.5.
        if self.reward_scale is None:
            self.reward_scale = 0.5 if self.variant == "reference" else 1.0
        if self.length_norm is None:
            self.length_norm = self.variant != "unbiased"

    def validate(self) -> list[str]:
        problems = in_unit_interval("alpha", self.alpha) + in_unit_interval("gamma", self.gamma)
        if self.variant == "unbiased" and self.length_norm:
            problems.append("variant unbiased sums the future rewards: set length_norm to false or leave it out")
        if self.mix_coins not in COIN_MODES:
            problems.append(f"mix_coins must be one of {', '.join(COIN_MODES)}, got {self.mix_coins!r}")
        if not self.clip_eps > 0:
            problems.append(f"clip_eps must be > 0, got {self.clip_eps}")
        if not (isinstance(self.ppo_epochs, int) and self.ppo_epochs >= 1):
            problems.append(f"ppo_epochs must be an integer >= 1, got {self.ppo_epochs}")
        if not self.reward_scale > 0:
            problems.append(f"reward_scale must be > 0, got {self.reward_scale}")
        if not self.reward_clip > 0:
            problems.append(f"reward_clip must be > 0, got {self.reward_clip}")
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        problems += non_negative("lm_weight", self.lm_weight)
        problems += in_unit_interval("lm_kd_ratio", self.lm_kd_ratio)
        return problems


def _minillm_needs(options: MiniLLMOptions):
    needs = {"gold", "teacher", "mixed_samples"}
    if options.lm_weight > 0:
        needs.add("lm_chunks")
    return needs


_BATCH_TENSORS = ("input_ids", "attention_mask", "position_ids", "labels", "loss_mask")


def _plain(value):
    """A checkpoint-safe copy (torch.load(weights_only=True)): tensors detached on CPU, containers recursively."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def batch_state(batch) -> dict:
    """A Batch as plain tensors/lists/strings (see ``batch_from_state``)."""
    state = {name: _plain(getattr(batch, name)) for name in _BATCH_TENSORS}
    state["prompts"] = [[int(t) for t in p] for p in batch.prompts]
    state["responses"] = [[int(t) for t in r] for r in batch.responses]
    state["source"] = str(batch.source)
    state["extras"] = _plain(batch.extras)
    return state


def batch_from_state(state: dict):
    from ...data.batches import Batch

    return Batch(
        **{name: state[name] for name in _BATCH_TENSORS},
        prompts=[list(p) for p in state["prompts"]],
        responses=[list(r) for r in state["responses"]],
        source=state.get("source", "student"),
        extras=dict(state.get("extras", {})),
    )




class MiniLLM(Objective):
    name = "minillm"
    help = (
        "MiniLLM (Gu et al., ICLR 2024): reverse KL to the teacher by policy gradient on teacher-mixed rollouts: "
        "PPO-clipped long-term term on length-normalised returns plus the exact single-step reverse KL "
        "(docs/method.md §1) plus the language-modelling loss L_PT on plain text (lm_weight 1; lm_weight=0 is the "
        "'no L_PT' ablation, lm_kd_ratio=0.5 the LMOps code's CE+FKL mix); variant=reference follows the LMOps code."
    )
    Options = MiniLLMOptions
    needs = needs_by_options({"gold", "teacher", "mixed_samples", "lm_chunks"}, _minillm_needs)

    def __init__(self, options=None):
        super().__init__(options)
        self._rollouts: list = []
        self._uses = 0
        self._lm_plan: dict = {}   # id(rollout batch) -> (its LM batch, token ratio) for this step (_plan_lm)
        self._teacher_kept: dict = {}   # id(rollout batch) -> (that batch, its teacher Forward) (_teacher_forward)

    def prepare_step(self, batches, ctx: StepContext):
        """The step's rollout buffer: fresh teacher-mixed rollouts for the incoming prompts (one per micro-batch,
        rewards and advantages attached) once the stored buffer has served ``ppo_epochs`` optimizer steps;
        otherwise the stored buffer again (the incoming gold batches are then not used)."""
        if not self._rollouts or self._uses >= self.options.ppo_epochs or len(self._rollouts) != len(batches):
            self._rollouts = [self._sample_mixed(batch, ctx) for batch in batches]
            self.attach_advantages(self._rollouts, ctx.sum_over_processes)
            self._uses = 0
            self._teacher_kept = {}
        device = batches[0].input_ids.device
        if self._rollouts[0].input_ids.device != device:      # restored from a checkpoint (CPU)
            self._rollouts = [rollout.to(device) for rollout in self._rollouts]
            self._teacher_kept = {}
        self._uses += 1
        if self.options.lm_weight <= 0:
            return list(self._rollouts)
        self._plan_lm(self._rollouts, ctx)
        return list(self._rollouts)

    def _sample_mixed(self, batch, ctx: StepContext):
        """Teacher-mixed rollouts for the batch's prompts. ``coins`` is passed only when it is not the engine's
        default, so contexts written for the two-argument ``sample_mixed(batch, alpha)`` keep working."""
        coins = {} if self.options.mix_coins == "step" else {"coins": self.options.mix_coins}
        return ctx.sample_mixed(batch, self.options.alpha, **coins)

    def _plan_lm(self, rollouts, ctx: StepContext):
        """Fetch the step's LM batches (one per micro-batch) up front and count their tokens over micro-batches and
        processes, so that L_PT is one per-token mean over every plain-text token of the step, whatever the split
        into micro-batches and processes. Each micro-batch gets (its LM batch, Σ rollout tokens / Σ LM tokens),
        kept by the batch's identity for ``loss``: with ``ctx.num_tokens`` = rollout tokens (per process share), Σ CE · that ratio / ctx.num_tokens
        summed over micro-batches and processes is Σ CE / Σ LM tokens."""
        import torch

        lm_batches = [ctx.lm_batch() for _ in rollouts]
        device = rollouts[0].input_ids.device
        counts = torch.tensor([float(sum(r.num_tokens for r in rollouts)), float(sum(b.num_tokens for b in lm_batches))],
                              dtype=torch.float64, device=device)
        rollout_tokens, lm_tokens = ctx.sum_over_processes(counts).tolist()
        ratio = max(rollout_tokens, 1.0) / max(lm_tokens, 1.0)
        self._lm_plan = {id(r): (b, ratio) for r, b in zip(rollouts, lm_batches)}

    def prepare_batch(self, batch, ctx: StepContext):
        """One micro-batch per step (grad_accum 1): ``prepare_step`` on it alone."""
        return self.prepare_step([batch], ctx)[0]

    def state_dict(self) -> dict:
        """The stored rollout buffer (plain CPU tensors and lists) and how many optimizer steps it has served."""
        return {"uses": int(self._uses), "rollouts": [batch_state(rollout) for rollout in self._rollouts]}

    def load_state_dict(self, state: dict) -> None:
        self._rollouts = [batch_from_state(rollout) for rollout in state.get("rollouts", [])]
        self._uses = int(state.get("uses", 0))
        self._teacher_kept = {}       # not checkpointed: the next epoch's pass recomputes them

    def _teacher_forward(self, batch, ctx: StepContext):
        """The teacher's forward pass over a rollout batch. For a batch of the stored buffer it is made at the
        first PPO epoch that uses the batch and kept until the last (``keep_teacher_hidden``): the teacher is
        frozen and the batch fixed, so every epoch's pass would give the same hidden states. Every process keeps
        or recomputes on the same epochs, so collective teacher passes (ZeRO-3) stay matched; a partitioned
        teacher's kept pass holds its gathered head too."""
        o = self.options
        if not o.keep_teacher_hidden or o.ppo_epochs == 1 or not any(batch is r for r in self._rollouts):
            return ctx.teacher_forward(batch)
        kept = self._teacher_kept.get(id(batch))
        if kept is None or kept[0] is not batch:
            kept = (batch, ctx.teacher_forward(batch))
            self._teacher_kept[id(batch)] = kept
        if self._uses >= o.ppo_epochs:            # the buffer's last epoch: free them now, not at the next refresh
            self._teacher_kept.pop(id(batch), None)
        return kept[1]

    def lm_term(self, ctx: StepContext, share: float, plan=None):
        """L_PT on the next LM batch: ((1 − r)·CE + r·FKL) summed over its tokens, divided by its own token count,
        times ``share`` (this rollout micro-batch's tokens / ``ctx.num_tokens``, so that the micro-batches of a step
        add up to the per-token mean). With the step's ``plan`` (``prepare_step``: the LM batch fetched up front and
        Σ rollout / Σ LM tokens of the step, over processes) the sum is divided by ``ctx.num_tokens`` / that
        ratio instead: one per-token mean over all the step's plain text. Returns (term, metrics)."""
        from ...losses.head import distill_loss, lm_loss

        o = self.options
        if plan is not None:
            lm_batch, ratio = plan
            lm_tokens, share = float(ctx.num_tokens) / ratio, 1.0
        else:
            lm_batch = ctx.lm_batch()
            lm_tokens = max(float(lm_batch.num_tokens), 1.0)
        student = ctx.student_forward(lm_batch)
        metrics = {}
        term = student.hidden.float().sum() * 0.0           # keeps a graph even when every term is skipped
        if o.lm_kd_ratio < 1:
            ce = lm_loss(student, lm_batch.labels, lm_batch.loss_mask, num_tokens=lm_tokens,
                         chunk_tokens=ctx.chunk_tokens) * share
            metrics["lm_ce"] = float(ce.detach())
            term = term + (1 - o.lm_kd_ratio) * ce
        if o.lm_kd_ratio > 0:
            fkl = distill_loss("fkl", student, ctx.teacher_forward(lm_batch), lm_batch.loss_mask,
                               num_tokens=lm_tokens, chunk_tokens=ctx.chunk_tokens) * share
            metrics["lm_fkl"] = float(fkl.detach())
            term = term + o.lm_kd_ratio * fkl
        metrics["lm"] = float(term.detach())
        return term, metrics

    def _returns(self, rewards, mask, weights):
        o = self.options
        if o.variant == "paper":
            return length_normalised_returns(rewards, mask, include_current=not o.single_step, normalise=o.length_norm)
        if o.variant == "unbiased":
            return importance_weighted_returns(rewards, weights, mask, include_current=not o.single_step)
        return discounted_returns(rewards, mask, o.gamma, normalise=o.length_norm)

    def advantages(self, batch):
        """Rewards and advantages [B, L] (detached, 0 off the loss mask) of a rollout batch: those attached by
        ``attach_advantages`` when present, else computed from this batch alone (whitened over it)."""
        if "advantages" in batch.extras:
            return batch.extras["rewards"], batch.extras["advantages"]
        o = self.options
        mask = batch.loss_mask.bool()
        rewards = scaled_rewards(batch.extras["teacher_logprobs"], batch.extras["old_logprobs"], mask,
                                 o.reward_scale, o.reward_clip)
        adv = self._returns(rewards, mask, batch.extras.get("importance_weights"))
        return rewards, (whiten(adv, mask) if o.variant == "reference" else adv)

    def attach_advantages(self, batches, sum_over_processes=None) -> None:
        """Store rewards and advantages in each rollout batch's extras, the reference variant whitened with the
        moments of the whole buffer across processes (docs/method.md §1: global mean and variance)."""
        o = self.options
        masks = [batch.loss_mask.bool() for batch in batches]
        rewards = [scaled_rewards(b.extras["teacher_logprobs"], b.extras["old_logprobs"], m, o.reward_scale, o.reward_clip)
                   for b, m in zip(batches, masks)]
        advantages = [self._returns(r, m, b.extras.get("importance_weights")) for r, m, b in zip(rewards, masks, batches)]
        if o.variant == "reference":
            moments = whitening_moments(advantages, masks, sum_over_processes)
            advantages = [whiten(a, m, moments=moments) for a, m in zip(advantages, masks)]
        for batch, r, a in zip(batches, rewards, advantages):
            batch.extras["rewards"], batch.extras["advantages"] = r, a

    def loss(self, batch, ctx: StepContext) -> LossOutput:
        from ...losses.policy import PolicyTokens, policy_loss

        o = self.options
        mask = batch.loss_mask.bool()
        student = ctx.student_forward(batch)
        teacher = self._teacher_forward(batch, ctx) if o.single_step else None

        rewards, adv = self.advantages(batch)
        rewards, adv = rewards[mask], adv[mask]
        old = batch.extras["old_logprobs"].float()[mask]
        weights = batch.extras["importance_weights"].float()
        pg_weights, single_weights = (w[mask] for w in estimator_weights(o.variant, weights, mask))
        weights = weights[mask]
        denominator = float(ctx.num_tokens)
        tokens = PolicyTokens(    # reference: w_t inside the PPO ratio; the variants' term weights: estimator_weights
            advantages=adv, old_logprobs=old, clip_eps=o.clip_eps,
            ratio_weights=weights if o.variant == "reference" else None, pg_weights=pg_weights,
            single_weights=single_weights if o.single_step else None,
        )
        sums = policy_loss(student, teacher, batch.labels, mask, tokens, chunk_tokens=ctx.chunk_tokens)
        loss = sums.loss / denominator
        metrics = {"pg": sums.pg / denominator}
        if o.single_step:
            metrics["single"] = sums.single / denominator
        if o.lm_weight > 0:
            lm, lm_metrics = self.lm_term(ctx, float(mask.sum()) / denominator, self._lm_plan.pop(id(batch), None))
            loss = loss + o.lm_weight * lm
            metrics.update(lm_metrics)
        metrics["reward"] = float(rewards.sum() / denominator)
        metrics["ratio"] = sums.ratio / denominator
        metrics["clip_frac"] = sums.clipped / denominator
        # Keeps a graph (for backward) even on a micro-batch without loss tokens.
        loss = loss + student.hidden.float().sum() * 0.0
        return LossOutput(loss, metrics)
