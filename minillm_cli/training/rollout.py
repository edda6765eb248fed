"""Teacher-mixed rollouts for MiniLLM (REFERENCE.md §1): responses sampled token by token from
p̃ = α·p + (1−α)·q_θ, with the log-probabilities the policy-gradient objective needs.

Both models decode incrementally, each with its own KV cache: the prompts (left-padded) are run once, then
every step feeds one new token per row, grows the attention mask by one column and passes explicit position
ids (attention-mask cumsum − 1), so the logits equal those of an unpadded, uncached forward pass.

At each step, over the shared vocabulary (trimmed to ``vocab_width`` when given), in float32:

- log q = log_softmax(student logits)            -> ``old_logprobs``   (q_θold: the student at sampling time)
- log p = log_softmax(teacher logits)            -> ``teacher_logprobs``
- log p̃ = logsumexp(log α + log p, log(1−α) + log q)  -> ``mixed_logprobs``
  (α = 0 gives log p̃ = log q exactly, α = 1 gives log p exactly)

The next token is drawn from p̃ (from q when α = 0: the "without teacher-mixed sampling" ablation). The
``SamplingConfig`` filters act on the mixture, as in the reference code, in the order transformers applies
them: the sampling logits are ``log p̃ / temperature``, then top-k keeps the k largest (``top_k`` 0 = off),
then top-p keeps the smallest set of highest-probability tokens whose mass reaches ``top_p``, and the draw is
a multinomial over the softmax of what is left. ``temperature`` 0 means greedy: the argmax of p̃. With the
paper's defaults (temperature 1, top_k 0, top_p 1) nothing is changed and the draw is exactly from p̃.
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
) -> Rollouts:
    """Sample one response per prompt from the teacher-mixed distribution (see the module docstring).

    ``vocab_width`` trims both models' logits to the shared vocabulary (``vocab.check_vocab``); without it
    both models must have the same number of logits. With a seed the result is a function of
    (seed, prompts, batch_size): one torch.Generator, seeded once, makes every draw.
    """
    import torch

    if not 0.0 <= alpha <= 1.0:
        raise MinillmError(f"alpha (teacher mix) must be in [0, 1], got {alpha}")
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
    with inference(student, teacher):
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            _sample_chunk(student, teacher, chunk, sampling, alpha, generator, vocab_width, eos, pad, device, result)
    return result


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
