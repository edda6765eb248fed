"""Teacher-mixed rollouts with a served teacher (``--teacher http://HOST:PORT/v1``): coin-mixed sampling over the API.

The coin sampler of ``training.rollout`` works over the completions API unchanged in its law: at each step a
coin c_t ~ Bernoulli(α) (``coin_sampling.Coins``) picks the model that draws the token. Where c_t = 0 the
student draws it here from q (``decoding.draw``, its KV cache kept locally); where c_t = 1 the server draws it
from p: one request per step for the rows that need it, each prompt + the tokens so far as token ids,
``max_tokens`` 1, the run's temperature / top_p / top_k, and a seed drawn from the rollout's generator (so a run
and its resume ask for the same tokens). Every token then has the marginal α·F(p) + (1−α)·F(q) exactly, as
with a local teacher. When the responses are complete, one ``echo`` request (``max_tokens`` 0) over prompt +
response gives log p of every sampled token, for the rewards and the importance weights log p̃ = log(α·p +
(1−α)·q). The eager sampler (``coins: none``, and greedy decoding with 0 < α < 1) needs p over the whole
vocabulary at every step, which the API does not give: it is refused.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import MinillmError
from ..models.generation import SamplingConfig, left_pad
from .coin_sampling import Coins, needs_eager_teacher
from ..models.decoding import Decoder, check_rollout_request, draw, mix_logprobs, pick, seeded_generator
from .rollout import Rollouts


def sample_served_rollouts(
    student,
    served,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    alpha: float = 0.2,
    seed: Optional[int] = None,
    batch_size: int = 8,
    vocab_width: int,
    coins: str = "step",
) -> Rollouts:
    """``rollout.sample_rollouts`` with ``served`` (a ``serving.teacher.ServedTeacher``) in the teacher's place."""
    import torch

    from ..models.forward import inference

    check_rollout_request(alpha, sampling, prompts)
    if needs_eager_teacher(coins, alpha, sampling):
        raise MinillmError(
            "a served teacher samples with coins (objective.mix_coins step or row): the eager sampler (mix_coins "
            "none, or greedy decoding with 0 < alpha < 1) needs the teacher's whole distribution at every step")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(student.parameters()).device
    generator = seeded_generator(device, seed)
    result = Rollouts([], [], [], [], [], [], alpha=alpha)
    flipper = Coins(coins, alpha, seed)
    with inference(student):
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            responses, olds, finished = _sample_chunk(student, served, chunk, sampling, flipper, generator,
                                                      vocab_width, eos, pad, device)
            teachers = [[t.logprob for t in row] for row in served.score(chunk, responses, 0)]
            mixeds = [mix_logprobs(torch.tensor(o), torch.tensor(t), alpha).tolist() if o else []
                      for o, t in zip(olds, teachers)]
            result.add(chunk, responses, olds, teachers, mixeds, finished)
    return result


def _sample_chunk(student, served, chunk, sampling, flipper, generator, width, eos, pad, device):
    """Responses (ending with eos when finished), log q of each token, and which rows finished."""
    import torch

    size = len(chunk)
    ids, mask = left_pad(chunk, pad)
    decoder = Decoder(student, width)
    logq = decoder.step(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
    responses: list[list[int]] = [[] for _ in range(size)]
    olds: list[list[float]] = [[] for _ in range(size)]
    done = [False] * size
    for step in range(sampling.max_new_tokens):
        from_teacher = flipper.flip(size).tolist()
        tokens = logq.argmax(dim=-1) if sampling.temperature == 0 else draw(logq, sampling, generator)
        asked = [row for row in range(size) if from_teacher[row] and not done[row]]
        if asked:
            request_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
            served_tokens = served.next_tokens([chunk[r] + responses[r] for r in asked], sampling, seed=request_seed)
            tokens = tokens.clone()
            tokens[asked] = torch.tensor(served_tokens, dtype=tokens.dtype, device=tokens.device)
        tokens = tokens.masked_fill(torch.tensor(done, device=tokens.device), pad)
        token_logq = pick(logq, tokens).tolist()
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                responses[row].append(token)
                olds[row].append(token_logq[row])
                done[row] = token == eos
        if all(done) or step == sampling.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((size, 1), dtype=mask.dtype)], dim=-1)
        logq = decoder.step(tokens.unsqueeze(-1).cpu(), mask, mask.sum(-1, keepdim=True) - 1)
    return responses, olds, done
