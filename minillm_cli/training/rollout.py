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

import inspect
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ..data.batches import Batch, make_batch
from ..errors import MinillmError
from ..models.forward import inference
from ..models.generation import SamplingConfig, left_pad


@dataclass
class Rollouts:
    prompts: list[list[int]]
    responses: list[list[int]]            # sampled ids, ending with eos when finished
    old_logprobs: list[list[float]]       # log q_θold(y_t | ·): the student at sampling time
    teacher_logprobs: list[list[float]]   # log p(y_t | ·)
    mixed_logprobs: list[list[float]]     # log p̃(y_t | ·), p̃ = α p + (1−α) q
    finished: list[bool]                  # ended with eos within max_new_tokens
    alpha: float = 0.2

    def __len__(self) -> int:
        return len(self.prompts)

    def importance_weights(self) -> list[list[float]]:
        """w_t = q(y_t) / p̃(y_t) = exp(old − mixed); exactly 1 when α = 0."""
        return [[math.exp(o - m) for o, m in zip(olds, mixed)] for olds, mixed in zip(self.old_logprobs, self.mixed_logprobs)]

    def to_batch(self, pad_id: int, padding_side: str = "right", source: str = "student") -> Batch:
        """A Batch of prompt+response sequences (``batches.make_batch`` convention) whose ``extras`` hold
        [B, L] float32 tensors ``old_logprobs``, ``teacher_logprobs``, ``mixed_logprobs`` and
        ``importance_weights`` aligned with ``loss_mask`` (entry [b, t] belongs to the token ``labels[b, t]``;
        zero where the mask is 0), and ``finished`` ([B] bool)."""
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
        return batch


def filter_logits(logits, config: SamplingConfig):
    """Temperature, then top-k, then top-p on [B, V] logits (transformers' order and tie rules); removed
    entries become −inf. Temperature 0 (greedy) is the caller's business."""
    import torch

    if config.temperature > 0 and config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - config.top_p)
        remove[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def mix_logprobs(logq, logp, alpha: float):
    """log(α e^logp + (1−α) e^logq), exact at α = 0 and α = 1."""
    import torch

    if alpha == 0:
        return logq
    if alpha == 1:
        return logp
    return torch.logaddexp(logp + math.log(alpha), logq + math.log1p(-alpha))


def _no_filters(config: SamplingConfig) -> bool:
    return config.temperature == 1.0 and config.top_k == 0 and config.top_p >= 1.0


def draw(logprobs, config: SamplingConfig, generator):
    """One token per row from softmax(filter_logits(logprobs)), by inverse CDF: a float64 cumulative sum, one
    uniform number per row, a binary search. Exact like ``torch.multinomial`` (whose one-sample path draws an
    exponential number for every vocabulary entry, several times slower at a 49k vocabulary), one pass over
    [B, V] instead of several. With the paper's settings (temperature 1, no top-k/top-p) ``logprobs`` are already
    normalised log-probabilities and are exponentiated directly."""
    import torch

    probs = logprobs.exp() if _no_filters(config) else filter_logits(logprobs, config).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=cdf.device) * total
    # 'right': the first entry whose cumulative mass exceeds u, so an entry of zero probability is never drawn.
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def _width(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _forward_parameters(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


class _Decoder:
    """One model's incremental decoding state: its KV cache and device."""

    def __init__(self, model, width: int):
        self.model = model
        self.width = width
        self.device = next(model.parameters()).device
        parameters = _forward_parameters(model)
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        # transformers >= 5.x names the cache argument ``cache``; older versions ``past_key_values``.
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self.past = None

    def step(self, input_ids, attention_mask, position_ids):
        """Feed new tokens; returns float32 log-probs of the next token, [B, width]."""
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
            **{self.cache_arg: self.past},
            **self.keep,
        )
        past = getattr(output, "cache", None)
        self.past = past if past is not None else getattr(output, "past_key_values", None)
        if self.past is None:
            raise MinillmError(f"{type(self.model).__name__} returned no KV cache; incremental decoding needs one")
        return output.logits[:, -1, : self.width].float().log_softmax(dim=-1)


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
    import torch

    if not 0.0 <= alpha <= 1.0:
        raise MinillmError(f"alpha (teacher mix) must be in [0, 1], got {alpha}")
    if coins not in COIN_MODES:
        raise MinillmError(f"coins must be one of {', '.join(COIN_MODES)}, got {coins!r}")
    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise MinillmError("a prompt has no tokens; sampling needs at least one prompt token")
    if sampling.no_repeat_ngram_size:
        raise MinillmError("no_repeat_ngram_size is not supported for rollouts (their log-probs would not be q's)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MinillmError("the tokenizer has no end-of-sequence token; responses cannot end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    student_width, teacher_width = _width(student), _width(teacher)
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
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()

    result = Rollouts([], [], [], [], [], [], alpha=alpha)
    flipper = _Coins(coins, alpha, seed)
    with inference(student, teacher):
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            if _needs_eager_teacher(coins, alpha, sampling):
                _sample_chunk(student, teacher, chunk, sampling, alpha, generator, vocab_width, eos, pad, device,
                              result)
            else:
                _sample_chunk_with_coins(student, teacher, chunk, sampling, alpha, flipper, generator, vocab_width,
                                         eos, pad, device, result)
    return result


COIN_MODES = ("step", "row", "none")


def _needs_eager_teacher(coins: str, alpha: float, sampling: SamplingConfig) -> bool:
    """The eager sampler (teacher at every step) for ``coins="none"`` (whatever α: lock-step decoding of a
    partitioned teacher relies on it) and for greedy decoding with 0 < α < 1, whose argmax of p̃ needs p at every
    step (with α 0 or 1, p̃ is one model's distribution and every coin is certain)."""
    return coins == "none" or (sampling.temperature == 0 and 0.0 < alpha < 1.0)


_COIN_SEED_OFFSET = 0x9E3779B97F4A7C15   # 2^64 / golden ratio: any fixed odd offset would do


class _Coins:
    """The coins c ~ Bernoulli(α) of coin-mixed sampling, from a CPU generator of their own: the decision to run
    the teacher is made on the host without a device sync, and the token stream is left as the eager sampler
    draws it. ``step`` mode draws one coin per step for the batch, ``row`` mode one per row."""

    def __init__(self, mode: str, alpha: float, seed: Optional[int]):
        import torch

        self.mode, self.alpha = mode, alpha
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            # A fixed offset so that the coins are not the token generator's first numbers for the same seed.
            self.generator.manual_seed((seed + _COIN_SEED_OFFSET) % 2**64)

    def flip(self, size: int):
        """[size] bool on the CPU: which rows draw this step's token from the teacher. α = 0 or 1 needs no coin
        (and consumes none)."""
        import torch

        if self.alpha == 0.0:
            return torch.zeros(size, dtype=torch.bool)
        if self.alpha == 1.0:
            return torch.ones(size, dtype=torch.bool)
        count = 1 if self.mode == "step" else size
        # float64: P(u < α) = α up to 2^-53, whatever α is.
        heads = torch.rand(count, generator=self.generator, dtype=torch.float64) < self.alpha
        return heads.expand(size).clone() if self.mode == "step" else heads



def _sample_chunk(student, teacher, chunk, sampling, alpha, generator, width, eos, pad, device, result):
    import torch

    size = len(chunk)
    ids, mask = left_pad(chunk, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoders = (_Decoder(student, width), _Decoder(teacher, width))
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

    result.prompts.extend(chunk)
    result.responses.extend(responses)
    result.old_logprobs.extend(olds)
    result.teacher_logprobs.extend(teachers)
    result.mixed_logprobs.extend(mixeds)
    result.finished.extend(bool(f) for f in finished.tolist())


def _sample_chunk_with_coins(student, teacher, chunk, sampling, alpha, flipper, generator, width, eos, pad, device,
                             result):
    """Coin-mixed sampling of one batch (module docstring): the student decodes every step, the teacher only when
    an unfinished row's coin asks for its distribution, and once more at the end for the log p still missing."""
    import torch

    size = len(chunk)
    ids, mask = left_pad(chunk, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    student_decoder = _Decoder(student, width)
    lazy_teacher = _LazyTeacher(teacher, width, ids, device)
    logq = student_decoder.step(ids, mask, positions)

    sampled, sampled_logq, alive = [], [], []     # per step: [B] tokens, log q(token), row not finished before
    finished = torch.zeros(size, dtype=torch.bool, device=device)
    done = torch.zeros(size, dtype=torch.bool)    # ``finished`` on the host
    for step in range(sampling.max_new_tokens):
        teacher_rows = flipper.flip(size) & ~done
        logits = logq
        if bool(teacher_rows.any()):
            logp = lazy_teacher.distribution(step, sampled, mask)
            logits = logp if bool(teacher_rows.all()) else torch.where(teacher_rows.to(device)[:, None], logp, logq)
        tokens = logits.argmax(dim=-1) if sampling.temperature == 0 else draw(logits, sampling, generator)
        tokens = tokens.masked_fill(finished, pad)
        sampled.append(tokens)
        sampled_logq.append(_pick(logq, tokens))
        alive.append(~done)
        finished = finished | (tokens == eos)
        done = finished.cpu()
        if bool(done.all()) or step == sampling.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((size, 1), dtype=mask.dtype)], dim=-1)
        position = mask.sum(-1, keepdim=True) - 1
        logq = student_decoder.step(tokens.unsqueeze(-1).cpu(), mask, position)

    # ``mask`` now covers the prompt and every sampled token but the last: what the final catch-up feeds.
    token_logp = lazy_teacher.finish(sampled, mask)
    token_logq = torch.stack(sampled_logq, dim=1)
    token_mixed = mix_logprobs(token_logq, token_logp, alpha)
    lengths = torch.stack(alive, dim=1).sum(-1).tolist()
    rows = [torch.stack(sampled, dim=1), token_logq, token_logp, token_mixed]
    tokens, olds, teachers, mixeds = ([row[:n] for row, n in zip(t.tolist(), lengths)] for t in rows)

    result.prompts.extend(chunk)
    result.responses.extend(tokens)
    result.old_logprobs.extend(olds)
    result.teacher_logprobs.extend(teachers)
    result.mixed_logprobs.extend(mixeds)
    result.finished.extend(bool(f) for f in done.tolist())


# Positions × rows of teacher logits made at once in a catch-up pass: a pass may cover up to max_new_tokens
# positions, and its [B × k × V] float32 logits need not exist at once (only log p of the fed tokens is kept).
_HEAD_CHUNK_ROWS = 1024


class _LazyTeacher:
    """The teacher's side of coin-mixed sampling: its KV cache over the prompt and the first ``fed`` sampled
    tokens, the log-prob row of the distribution that comes next (``current``, response position ``fed``) and
    log p of every sampled token before it. Each pass catches up over all tokens sampled since the previous
    one in one forward pass through the model's body, then its head (``forward.output_head``, as the losses use)."""

    def __init__(self, model, width: int, prompt_ids, device):
        from .forward import output_head

        self.body = model.base_model
        self.head = output_head(model, width)
        self.model_device = next(model.parameters()).device
        self.device = device
        self.prompt_ids = prompt_ids
        # transformers >= 5.x names the cache argument ``cache``; older versions ``past_key_values``.
        self.cache_arg = "cache" if "cache" in _forward_parameters(self.body) else "past_key_values"
        self.past = None
        self.fed = 0
        self.current = None
        self.token_logprobs = []      # [B] tensors: log p(y_j) for j < fed

    def distribution(self, step: int, sampled, mask):
        """log p(· | prompt, y_<step): [B, width] float32 on the sampling device. ``sampled`` holds the step's
        previous tokens ([B] each) and ``mask`` the attention mask over the prompt and them."""
        self._catch_up(step, sampled, mask)
        return self.current

    def finish(self, sampled, mask):
        """log p(y_t) of every sampled token, [B, T] float32: a last catch-up up to the final token (``mask``
        covers the prompt and every token but it)."""
        import torch

        last = len(sampled) - 1
        self._catch_up(last, sampled, mask)
        return torch.stack(self.token_logprobs + [_pick(self.current, sampled[last])], dim=1)

    def _catch_up(self, step: int, sampled, mask):
        """Feed y_fed … y_{step−1} (the prompt and y_0 … y_{step−1} on the first pass) in one forward pass; its
        outputs are the distributions of response positions first … step, of which all but the last give log p
        of a token already sampled and the last becomes ``current``."""
        import torch

        if self.past is not None and step == self.fed:
            return
        if self.past is None:
            first = 0
            new = torch.cat([self.prompt_ids, *[t.cpu().unsqueeze(-1) for t in sampled[:step]]], dim=-1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            self.token_logprobs.append(_pick(self.current, sampled[self.fed]))
            first = self.fed + 1
            new = torch.stack(sampled[self.fed:step], dim=1)
            positions = (mask.cumsum(-1) - 1)[:, -new.shape[1]:]
        hidden = self._forward(new, mask, positions)[:, -(step - first + 1):]
        targets = torch.stack(sampled[first:step], dim=1) if step > first else None
        self._read_rows(hidden, targets)
        self.fed = step

    def _forward(self, input_ids, mask, positions):
        output = self.body(
            input_ids=input_ids.to(self.model_device),
            attention_mask=mask.to(self.model_device),
            position_ids=positions.to(self.model_device),
            use_cache=True,
            **{self.cache_arg: self.past},
        )
        past = getattr(output, "cache", None)
        self.past = past if past is not None else getattr(output, "past_key_values", None)
        if self.past is None:
            raise MinillmError(f"{type(self.body).__name__} returned no KV cache; incremental decoding needs one")
        return output.last_hidden_state

    def _read_rows(self, hidden, targets):
        """log p of ``targets`` ([B, n], or None for n = 0) under hidden rows 0 … n−1, a few positions at a time,
        and the full log-prob row of the last hidden row as ``current``."""
        if targets is not None:
            targets = targets.to(hidden.device)
            per_chunk = max(1, _HEAD_CHUNK_ROWS // hidden.shape[0])
            for start in range(0, targets.shape[1], per_chunk):
                logprobs = self.head(hidden[:, start:start + per_chunk]).float().log_softmax(dim=-1)
                picked = logprobs.gather(-1, targets[:, start:start + per_chunk, None]).squeeze(-1)
                self.token_logprobs.extend(picked.to(self.device).unbind(dim=1))
        self.current = self.head(hidden[:, -1]).float().log_softmax(dim=-1).to(self.device)


def _pick(logprobs, tokens):
    """logprobs[b, tokens[b]] for each row b."""
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
