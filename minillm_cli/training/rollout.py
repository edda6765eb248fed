"""Teacher-mixed rollouts for MiniLLM (Gu et al. 2023, §2.2 "teacher-mixed sampling"; docs/concepts.md,
``minillm``): responses sampled token by token from p̃ = α·p + (1−α)·q_θ, with the log-probabilities the
policy-gradient objective needs.

By default the mixture is sampled with a coin (``coins``): at each step c_t ~ Bernoulli(α), and the token is
drawn from the teacher p if c_t = 1, else from the student q. c_t is independent of the prefix, so every row's
token at every step has the marginal α·p + (1−α)·q exactly, while the teacher's distribution is needed only
where a coin came up 1 (≈ α of the steps). ``coins="step"`` draws one coin per step for the whole batch (the
teacher runs at ≈ α of the steps, but the rows' choices are correlated within a batch: a higher variance of
the batch-mean gradient, never a bias); ``coins="row"`` one per row and step (rows independent, the teacher
runs whenever any unfinished row needs it, so more often). The coins come from a generator of their own, so the
token stream is that of the eager sampler below: with α = 0 the tokens are exactly those it gives.

The teacher is lazy: when its distribution is needed it catches its KV cache up over every token sampled since
its previous pass (on its first pass, the prompt too) in ONE forward pass of k new tokens, and that pass also
gives log p of each of those tokens; one last catch-up after the final step completes log p for every sampled
token. So the recorded log p, log q and log p̃ below are exact for every token, as with the eager sampler.
With α = 0 the teacher runs once per batch, after sampling (the rewards need log p).

``coins="none"`` is the eager sampler: the teacher runs at every step (whatever α) and the token is drawn
from the mixture p̃ itself. It is what greedy decoding (temperature 0, the argmax of p̃) needs for 0 < α < 1
(used then whatever ``coins`` says), the only sampler under which the ``SamplingConfig`` filters act on the
mixture (as in the LMOps code) rather than on the chosen model's distribution, and what lock-step decoding of
a ZeRO-3-partitioned teacher needs (the engine picks it there).

Both models decode incrementally, each with its own KV cache: the prompts (left-padded) are run once, then
each pass feeds the new tokens of every row (the student one a step, the lazy teacher k at once), with the
attention mask grown by as many columns and explicit position ids (attention-mask cumsum − 1), so the logits
equal those of an unpadded, uncached forward pass. Rows that have finished are fed padding, whose outputs are
never recorded.

For every sampled token, over the shared vocabulary (trimmed to ``vocab_width`` when given), in float32:

- log q = log_softmax(student logits)            -> ``old_logprobs``   (q_θold: the student at sampling time)
- log p = log_softmax(teacher logits)            -> ``teacher_logprobs``
- log p̃ = logsumexp(log α + log p, log(1−α) + log q)  -> ``mixed_logprobs``
  (α = 0 gives log p̃ = log q exactly, α = 1 gives log p exactly)

The next token is drawn from p̃ (from q when α = 0: the "without teacher-mixed sampling" ablation). The
``SamplingConfig`` filters act, in the order transformers applies them, on the distribution drawn from: the
chosen model's (with coins: the sampling distribution is α·F(p) + (1−α)·F(q)) or the mixture's (``coins=
"none"``, as in the reference code: F(p̃)). The sampling logits are ``log-probs / temperature``, then top-k
keeps the k largest (``top_k`` 0 = off), then top-p keeps the smallest set of highest-probability tokens whose
mass reaches ``top_p``, and the draw is a multinomial over the softmax of what is left. ``temperature`` 0 means
greedy: the argmax of p̃ (the eager sampler when 0 < α < 1). With the paper's defaults (temperature 1, top_k 0,
top_p 1) nothing is changed and the draw is exactly from p̃ with either sampler.
The three recorded log-probs are always those of the *unfiltered* distributions, so the importance weight
``w_t = q(y_t)/p̃(y_t)`` is the paper's; with non-default filters the actual sampling distribution differs
from p̃ and w_t is only the paper's approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..data.batches import Batch, make_batch
from ..errors import MinillmError
from ..models.forward import inference
from ..models.generation import SamplingConfig, left_pad
from .coin_sampling import COIN_MODES, Coins, needs_eager_teacher, sample_chunk_with_coins
from ..models.decoding import Decoder, check_rollout_request, draw, logit_width, mix_logprobs, seeded_generator


@dataclass
class Rollouts:
    prompts: list[list[int]]
    responses: list[list[int]]            # sampled ids, ending with eos when finished
    old_logprobs: list[list[float]]       # log q_θold(y_t | ·): the student at sampling time
    teacher_logprobs: list[list[float]]   # log p(y_t | ·)
    mixed_logprobs: list[list[float]]     # log p̃(y_t | ·), p̃ = α p + (1−α) q
    finished: list[bool]                  # ended with eos within max_new_tokens
    alpha: float = 0.2
    # The teacher's final hidden states at each response position ([T, H] per row), when the sampler's teacher
    # passes made them (the coin-mixed sampler's lazy teacher does; the eager one does not): None otherwise.
    teacher_hidden: Optional[list] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def add(self, prompts, responses, old_logprobs, teacher_logprobs, mixed_logprobs, finished,
            teacher_hidden=None) -> None:
        """Append one sampled batch (row-aligned lists, as each sampler produces them); ``teacher_hidden`` is
        the teacher's [T, H] hidden states per row, or None when the sampler did not make them (then the whole
        buffer has none: an objective needing them runs the teacher instead)."""
        if teacher_hidden is None or self.teacher_hidden is None:
            self.teacher_hidden = None
        else:
            self.teacher_hidden.extend(teacher_hidden)
        self.prompts.extend(prompts)
        self.responses.extend(responses)
        self.old_logprobs.extend(old_logprobs)
        self.teacher_logprobs.extend(teacher_logprobs)
        self.mixed_logprobs.extend(mixed_logprobs)
        self.finished.extend(bool(f) for f in finished)

    def slice(self, start: int, end: int) -> "Rollouts":
        """Rows ``start`` … ``end − 1`` as Rollouts of their own."""
        hidden = None if self.teacher_hidden is None else self.teacher_hidden[start:end]
        return Rollouts(self.prompts[start:end], self.responses[start:end], self.old_logprobs[start:end],
                        self.teacher_logprobs[start:end], self.mixed_logprobs[start:end], self.finished[start:end],
                        alpha=self.alpha, teacher_hidden=hidden)

    def importance_weights(self) -> list[list[float]]:
        """w_t = q(y_t) / p̃(y_t) = exp(old − mixed); exactly 1 when α = 0."""
        return [[math.exp(o - m) for o, m in zip(olds, mixed)] for olds, mixed in zip(self.old_logprobs, self.mixed_logprobs)]

    def to_batch(self, pad_id: int, padding_side: str = "right", source: str = "student") -> Batch:
        """A Batch of prompt+response sequences (``batches.make_batch`` convention) whose ``extras`` hold
        [B, L] float32 tensors ``old_logprobs``, ``teacher_logprobs``, ``mixed_logprobs`` and
        ``importance_weights`` aligned with ``loss_mask`` (entry [b, t] belongs to the token ``labels[b, t]``;
        zero where the mask is 0), ``finished`` ([B] bool) and, when the sampler made them, ``teacher_hidden``
        ([B, L, H], the teacher's final hidden states aligned the same way: ``Engine.teacher_forward`` reads the
        teacher's distributions from them instead of running the teacher over the batch again)."""
        import torch

        batch = make_batch(self.prompts, self.responses, pad_id, padding_side=padding_side, source=source)
        named = {
            "old_logprobs": self.old_logprobs,
            "teacher_logprobs": self.teacher_logprobs,
            "mixed_logprobs": self.mixed_logprobs,
            "importance_weights": self.importance_weights(),
        }
        for name, rows in named.items():
            tensor = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
            for row, values in enumerate(rows):
                if values:
                    tensor[row, batch.loss_mask[row]] = torch.tensor(values, dtype=torch.float32)
            batch.extras[name] = tensor
        batch.extras["finished"] = torch.tensor(self.finished, dtype=torch.bool)
        batch.extras["alpha"] = self.alpha
        if self.teacher_hidden:
            batch.extras["teacher_hidden"] = self._hidden_tensor(batch.loss_mask)
        return batch

    def _hidden_tensor(self, loss_mask):
        """[B, L, H] with row b's response-position states where ``loss_mask[b]`` is true (each such position
        predicts the next response token, as the states do), zeros elsewhere."""
        import torch

        first = self.teacher_hidden[0]
        tensor = torch.zeros((*loss_mask.shape, first.shape[-1]), dtype=first.dtype, device=first.device)
        for row, states in enumerate(self.teacher_hidden):
            if states.shape[0]:
                tensor[row, loss_mask[row].to(first.device)] = states
        return tensor


def sample_rollouts(
    student,
    teacher,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    alpha: float = 0.2,
    seed: Optional[int] = None,
    batch_size: int = 8,
    vocab_width: Optional[int] = None,
    coins: str = "step",
) -> Rollouts:
    """Sample one response per prompt from the teacher-mixed distribution (see the module docstring).

    ``coins`` picks the sampler: ``step`` (one coin per step for the batch), ``row`` (one per row and step) or
    ``none`` (the eager sampler, the teacher at every step). ``vocab_width`` trims both models' logits to the
    shared vocabulary (``vocab.check_vocab``); without it both models must have the same number of logits.
    With a seed the result is a function of (seed, prompts, batch_size, coins): one torch.Generator, seeded
    once, draws every token, and one on the CPU, seeded from the same seed, every coin.
    """

    check_rollout_request(alpha, sampling, prompts)
    if coins not in COIN_MODES:
        raise MinillmError(f"coins must be one of {', '.join(COIN_MODES)}, got {coins!r}")
    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MinillmError("the tokenizer has no end-of-sequence token; responses cannot end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    student_width, teacher_width = logit_width(student), logit_width(teacher)
    if vocab_width is None:
        if student_width != teacher_width:
            raise MinillmError(
                f"student has {student_width} logits and teacher {teacher_width}; pass vocab_width "
                "(the shared vocabulary, see vocab.check_vocab) to sample over the shared tokens"
            )
        vocab_width = student_width
    if not 0 < vocab_width <= min(student_width, teacher_width):
        raise MinillmError(
            f"vocab_width {vocab_width} must be in 1..{min(student_width, teacher_width)} (the narrower model)"
        )

    device = next(student.parameters()).device
    generator = seeded_generator(device, seed)
    result = Rollouts([], [], [], [], [], [], alpha=alpha)
    flipper = Coins(coins, alpha, seed)
    with inference(student, teacher):
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            if needs_eager_teacher(coins, alpha, sampling):
                _sample_chunk(student, teacher, chunk, sampling, alpha, generator, vocab_width, eos, pad, device,
                              result)
            else:
                sample_chunk_with_coins(student, teacher, chunk, sampling, alpha, flipper, generator, vocab_width,
                                         eos, pad, device, result)
    return result


def _sample_chunk(student, teacher, chunk, sampling, alpha, generator, width, eos, pad, device, result):
    import torch

    size = len(chunk)
    ids, mask = left_pad(chunk, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoders = (Decoder(student, width), Decoder(teacher, width))
    logq = decoders[0].step(ids, mask, positions)
    logp = decoders[1].step(ids, mask, positions).to(device)

    responses = [[] for _ in range(size)]
    olds = [[] for _ in range(size)]
    teachers = [[] for _ in range(size)]
    mixeds = [[] for _ in range(size)]
    finished = torch.zeros(size, dtype=torch.bool, device=device)
    for step in range(sampling.max_new_tokens):
        mixed = mix_logprobs(logq, logp, alpha)
        if sampling.temperature == 0:
            tokens = mixed.argmax(dim=-1)
        else:
            tokens = draw(mixed, sampling, generator)
        tokens = tokens.masked_fill(finished, pad)
        picked = tokens.unsqueeze(-1)
        rows = (~finished).nonzero().squeeze(-1).tolist()
        values = [
            logq.gather(-1, picked).squeeze(-1).tolist(),
            logp.gather(-1, picked).squeeze(-1).tolist(),
            mixed.gather(-1, picked).squeeze(-1).tolist(),
        ]
        token_list = tokens.tolist()
        for row in rows:
            responses[row].append(token_list[row])
            olds[row].append(values[0][row])
            teachers[row].append(values[1][row])
            mixeds[row].append(values[2][row])
        finished = finished | (tokens == eos)
        if bool(finished.all()) or step == sampling.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((size, 1), dtype=mask.dtype)], dim=-1)
        position = mask.sum(-1, keepdim=True) - 1
        new = tokens.unsqueeze(-1).cpu()
        logq = decoders[0].step(new, mask, position)
        logp = decoders[1].step(new, mask, position).to(device)

    result.add(chunk, responses, olds, teachers, mixeds, finished.tolist())
