"""The MiniLLM estimator's numbers per token: rewards, returns, advantages and importance weights (docs/method.md §1).

Module-level functions, so that tests can check each against a plain reference. Every function takes the rows'
valid-token mask: padding never enters returns, advantages, weights or whitening statistics.
"""

from __future__ import annotations


def scaled_rewards(teacher_logprobs, old_logprobs, mask, scale: float = 0.5, clip: float = 100.0):
    """r_t = clip((log p − log q_old) / scale, ±clip) on valid tokens, 0 elsewhere (float32, detached)."""
    import torch

    mask = mask.bool()
    rewards = ((teacher_logprobs.float() - old_logprobs.float()) / scale).clamp(-clip, clip)
    return torch.where(mask, rewards, torch.zeros_like(rewards)).detach()


def _reverse_cumsum(x):
    return x.flip(-1).cumsum(-1).flip(-1)


def length_normalised_returns(rewards, mask, *, include_current: bool = False, normalise: bool = True):
    """The paper's R^Norm_{t+1}: per row, the mean of r_{t'} over the row's valid tokens t' > t (t' ≥ t with
    ``include_current``); 0 where there is none and on invalid positions. ``normalise=False`` gives the plain
    sum (the 'without length normalisation' ablation). Padding (mask 0) is skipped wherever it lies."""
    import torch

    mask = mask.bool()
    values = torch.where(mask, rewards, torch.zeros_like(rewards))
    weight = mask.to(values.dtype)
    total = _reverse_cumsum(values)                # Σ over valid t' ≥ t
    count = _reverse_cumsum(weight)
    if not include_current:
        total, count = total - values, count - weight
    returns = total / count.clamp(min=1) if normalise else total
    return torch.where(mask & (count > 0), returns, torch.zeros_like(returns))


def discounted_returns(rewards, mask, gamma: float, *, normalise: bool = True):
    """The reference code's returns: Σ_{k≥0} γ^k r over the row's valid tokens from t on (k counts valid tokens
    only, so discounting runs from the response's own positions), divided by the number of valid tokens
    remaining from t (``normalise``); 0 on invalid positions."""
    import torch

    mask = mask.bool()
    values = torch.where(mask, rewards, torch.zeros_like(rewards))
    running = torch.zeros_like(values[:, 0])
    out = torch.zeros_like(values)
    for t in range(values.shape[1] - 1, -1, -1):
        running = torch.where(mask[:, t], values[:, t] + gamma * running, running)
        out[:, t] = running
    if normalise:
        out = out / _reverse_cumsum(mask.to(values.dtype)).clamp(min=1)
    return torch.where(mask, out, torch.zeros_like(out))


def whitening_moments(values_list, masks, sum_over_processes=None):
    """Mean and (biased) variance of the valid tokens of every tensor in ``values_list``, summed over processes
    when ``sum_over_processes`` is given (float64 sums: count, Σx, Σx² are what crosses processes)."""
    import torch

    device = values_list[0].device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for values, mask in zip(values_list, masks):
        valid = values[mask.bool()].double()
        sums += torch.stack([valid.new_tensor(float(valid.numel())), valid.sum(), (valid * valid).sum()])
    if sum_over_processes is not None:
        sums = sum_over_processes(sums)
    count = sums[0].clamp(min=1)
    mean = sums[1] / count
    var = (sums[2] / count - mean * mean).clamp(min=0)
    return float(mean), float(var)


def whiten(values, mask, eps: float = 1e-8, moments=None):
    """(x − mean) / sqrt(var + eps) with mean and (biased) variance over the valid tokens only (or the given
    ``moments``, e.g. global ones from ``whitening_moments``); 0 elsewhere."""
    import torch

    mask = mask.bool()
    mean, var = moments if moments is not None else whitening_moments([values], [mask])
    out = (values - mean) / (var + eps) ** 0.5
    return torch.where(mask, out, torch.zeros_like(out))


def discounted_whitened_advantages(rewards, mask, gamma: float, *, normalise: bool = True):
    """The reference variant's advantages of one batch: ``discounted_returns`` whitened over its valid tokens."""
    return whiten(discounted_returns(rewards, mask, gamma, normalise=normalise), mask)


def prefix_weights(weights, mask, *, include_current: bool = True):
    """Per row, the product of the importance weights w_s over the valid tokens s ≤ t (s < t without
    ``include_current``): 1 where there is none, 0 on invalid positions. Summed as logs in float64, so that long
    responses neither overflow nor round the product away early."""
    import torch

    mask = mask.bool()
    logs = torch.where(mask, weights.double().log(), torch.zeros((), dtype=torch.float64, device=weights.device))
    if not include_current:   # shifted, not cum − log w: a weight of 0 (log −inf) would give −inf − −inf = NaN
        logs = torch.nn.functional.pad(logs[:, :-1], (1, 0))
    products = logs.cumsum(-1).exp().float()
    return torch.where(mask, products, torch.zeros_like(products))


def importance_weighted_returns(rewards, weights, mask, *, include_current: bool = False):
    """The unbiased variant's advantages: per row Σ_{t' > t} (Π_{s ≤ t'} w_s) r_{t'} over the valid tokens
    (t' ≥ t with ``include_current``), plain sums. Each future reward carries the product of the importance weights
    of the tokens it depends on (per-decision importance sampling), so that its expectation under the mixture
    p̃ equals its expectation under q_θ; the long-term term then takes weight 1 (``estimator_weights``). With the
    whole product inside the advantage the PPO clipping acts as with the paper's weight outside it (the product is
    positive), and no prefix product is ever divided by."""
    import torch

    mask = mask.bool()
    weighted = torch.where(mask, prefix_weights(weights, mask) * rewards, torch.zeros_like(rewards))
    total = _reverse_cumsum(weighted)
    if not include_current:
        total = total - weighted
    return torch.where(mask, total, torch.zeros_like(total))


def estimator_weights(variant: str, weights, mask):
    """(weights of the long-term term, weights of the single-step term) per token, [B, L] like ``weights``:
    ``paper`` w_t on both (one step's weight standing in for the product); ``reference`` 1 on both (w_t sits in
    the PPO ratio); ``unbiased`` 1 on the long-term term (its products are inside the advantages) and Π_{s < t} w_s
    on the single-step term, which depends on the prefix only (docs/method.md §1)."""
    import torch

    weights = weights.float()
    if variant == "paper":
        return weights, weights
    ones = torch.ones_like(weights)
    if variant == "unbiased":
        return ones, prefix_weights(weights, mask, include_current=False)
    return ones, ones
