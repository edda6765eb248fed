"""Token-by-token decoding for generation and rollouts: a model's KV-cached decoding state, the sampling filters,
exact draws, and the log-probabilities of a mixture of two models (docs/concepts.md, ``minillm``)."""

from __future__ import annotations

import inspect
import math

from ..errors import MinillmError
from .sampling import SamplingConfig


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


def logit_width(model) -> int:
    """Number of logits the model produces: the output embedding's rows (its full shape under ZeRO-3, whose
    partitioned weight is empty outside a forward pass)."""
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def forward_parameters(model) -> set[str]:
    """The keyword arguments ``model.forward`` takes; for a wrapper that passes ``**kwargs`` through to the model
    it wraps (a peft LoRA model), the wrapped model's too, so that its cache argument is called by its own name."""
    try:
        parameters = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()
    base = getattr(model, "get_base_model", None)
    if "kwargs" in parameters and callable(base) and base() is not model:
        parameters |= forward_parameters(base())
    return parameters


class Decoder:
    """One model's incremental decoding state: its KV cache and device."""

    def __init__(self, model, width: int):
        self.model = model
        self.width = width
        self.device = next(model.parameters()).device
        parameters = forward_parameters(model)
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.cache = KVCache(parameters)

    def step(self, input_ids, attention_mask, position_ids):
        """Feed new tokens; returns float32 log-probs of the next token, [B, width]."""
        output = self.cache.forward(self.model, self.device, input_ids, attention_mask, position_ids, **self.keep)
        return output.logits[:, -1, : self.width].float().log_softmax(dim=-1)


class KVCache:
    """A module's KV cache across incremental forward passes, passed under the argument name its forward takes."""

    def __init__(self, parameters: set[str]):
        """``parameters``: the module's forward parameters (``forward_parameters``)."""
        # transformers >= 5.x names the cache argument ``cache``; older versions ``past_key_values``.
        self.argument = "cache" if "cache" in parameters else "past_key_values"
        self.past = None

    def forward(self, module, device, input_ids, attention_mask, position_ids, **extra):
        """One pass of ``module`` over the new tokens with the cache so far; keeps the cache it returns."""
        output = module(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=True,
            **{self.argument: self.past},
            **extra,
        )
        past = getattr(output, "cache", None)
        self.past = past if past is not None else getattr(output, "past_key_values", None)
        if self.past is None:
            raise MinillmError(f"{type(module).__name__} returned no KV cache; incremental decoding needs one")
        return output


def pick(logprobs, tokens):
    """logprobs[b, tokens[b]] for each row b."""
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def check_rollout_request(alpha: float, sampling: SamplingConfig, prompts) -> None:
    """The checks every rollout sampler makes before it starts (a teacher mix in [0, 1], no empty prompt, no
    n-gram filter: rollouts' log-probs must be the models' own)."""
    if not 0.0 <= alpha <= 1.0:
        raise MinillmError(f"alpha (teacher mix) must be in [0, 1], got {alpha}")
    if any(len(p) == 0 for p in prompts):
        raise MinillmError("a prompt has no tokens; sampling needs at least one prompt token")
    if sampling.no_repeat_ngram_size:
        raise MinillmError("no_repeat_ngram_size is not supported for rollouts (their log-probs would not be q's)")


def seeded_generator(device, seed):
    """The token stream of a rollout: a torch.Generator on ``device``, seeded once with ``seed`` (None: at random)."""
    import torch

    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator
