"""Coin-mixed sampling with a lazy teacher: each step a coin c_t ~ Bernoulli(α) picks the teacher or the student to
draw the token from, and the teacher runs only where a coin came up 1, catching its KV cache up in one pass
(the sampler and its exactness are described in ``training.rollout``)."""

from __future__ import annotations

from typing import Optional

from ..models.generation import SamplingConfig, left_pad
from ..models.decoding import Decoder, KVCache, draw, forward_parameters, mix_logprobs, pick


COIN_MODES = ("step", "row", "none")


def needs_eager_teacher(coins: str, alpha: float, sampling: SamplingConfig) -> bool:
    """The eager sampler (teacher at every step) for ``coins="none"`` (whatever α: lock-step decoding of a
    partitioned teacher relies on it) and for greedy decoding with 0 < α < 1, whose argmax of p̃ needs p at every
    step (with α 0 or 1, p̃ is one model's distribution and every coin is certain)."""
    return coins == "none" or (sampling.temperature == 0 and 0.0 < alpha < 1.0)


_COIN_SEED_OFFSET = 0x9E3779B97F4A7C15   # 2^64 / golden ratio: any fixed odd offset would do


class Coins:
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


def sample_chunk_with_coins(student, teacher, chunk, sampling, alpha, flipper, generator, width, eos, pad, device,
                             result):
    """Coin-mixed sampling of one batch (module docstring): the student decodes every step, the teacher only when
    an unfinished row's coin asks for its distribution, and once more at the end for the log p still missing."""
    import torch

    size = len(chunk)
    ids, mask = left_pad(chunk, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    student_decoder = Decoder(student, width)
    lazy_teacher = LazyTeacher(teacher, width, ids, device)
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
        sampled_logq.append(pick(logq, tokens))
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
    hidden = [states[:n] for states, n in zip(lazy_teacher.hidden_states(), lengths)]

    result.add(chunk, tokens, olds, teachers, mixeds, done.tolist(), teacher_hidden=hidden)


# Positions × rows of teacher logits made at once in a catch-up pass: a pass may cover up to max_new_tokens
# positions, and its [B × k × V] float32 logits need not exist at once (only log p of the fed tokens is kept).
_HEAD_CHUNK_ROWS = 1024


class LazyTeacher:
    """The teacher's side of coin-mixed sampling: its KV cache over the prompt and the first ``fed`` sampled
    tokens, the log-prob row of the distribution that comes next (``current``, response position ``fed``) and
    log p of every sampled token before it. Each pass catches up over all tokens sampled since the previous
    one in one forward pass through the model's body, then its head (``forward.output_head``, as the losses use).

    The passes also leave the teacher's final hidden state at every response position (the state whose head
    row is the distribution of that position's token): ``hidden_states`` hands them to the rollout, so that the
    objective's single-step term reads the teacher's distributions from them instead of running the teacher
    over the rollout again (``Rollouts.teacher_hidden``)."""

    def __init__(self, model, width: int, prompt_ids, device):
        from ..models.forward import output_head

        self.body = model.base_model
        self.head = output_head(model, width)
        self.model_device = next(model.parameters()).device
        self.device = device
        self.prompt_ids = prompt_ids
        self.cache = KVCache(forward_parameters(self.body))
        self.fed = 0
        self.current = None
        self.token_logprobs = []      # [B] tensors: log p(y_j) for j < fed
        self.hidden_pieces = []       # [B, n, H] hidden states of response positions 0 … fed, in order

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
        return torch.stack(self.token_logprobs + [pick(self.current, sampled[last])], dim=1)

    def hidden_states(self):
        """[B, T, H]: the teacher's final hidden state at each response position 0 … T−1 (after ``finish``)."""
        import torch

        return torch.cat(self.hidden_pieces, dim=1)

    def _catch_up(self, step: int, sampled, mask):
        """Feed y_fed … y_{step−1} (the prompt and y_0 … y_{step−1} on the first pass) in one forward pass; its
        outputs are the distributions of response positions first … step, of which all but the last give log p
        of a token already sampled and the last becomes ``current``."""
        import torch

        if self.cache.past is not None and step == self.fed:
            return
        if self.cache.past is None:
            first = 0
            new = torch.cat([self.prompt_ids, *[t.cpu().unsqueeze(-1) for t in sampled[:step]]], dim=-1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            self.token_logprobs.append(pick(self.current, sampled[self.fed]))
            first = self.fed + 1
            new = torch.stack(sampled[self.fed:step], dim=1)
            positions = (mask.cumsum(-1) - 1)[:, -new.shape[1]:]
        hidden = self._forward(new, mask, positions)[:, -(step - first + 1):]
        self.hidden_pieces.append(hidden)
        targets = torch.stack(sampled[first:step], dim=1) if step > first else None
        self._read_rows(hidden, targets)
        self.fed = step

    def _forward(self, input_ids, mask, positions):
        return self.cache.forward(self.body, self.model_device, input_ids, mask, positions).last_hidden_state

    def _read_rows(self, hidden, targets):
        """log p of ``targets`` ([B, n], or None for n = 0) under hidden rows 0 … n−1, a few positions at a time,
        and the full log-prob row of the last hidden row (n) as ``current``. The last row goes through the head
        with the last chunk of targets: one read of the head's weights per chunk, which is what a pass of a
        few tokens costs on a CPU."""
        n = 0 if targets is None else targets.shape[1]
        per_chunk = max(1, _HEAD_CHUNK_ROWS // hidden.shape[0])
        for start in range(0, n + 1, per_chunk):
            end = min(start + per_chunk, n + 1)
            logprobs = self.head(hidden[:, start:end]).float().log_softmax(dim=-1)
            if end > n:                              # this chunk holds the last row
                self.current = logprobs[:, -1].to(self.device)
                logprobs = logprobs[:, :-1]
            if logprobs.shape[1]:
                picked = logprobs.gather(-1, targets[:, start:start + logprobs.shape[1], None].to(hidden.device))
                self.token_logprobs.extend(picked.squeeze(-1).to(self.device).unbind(dim=1))
