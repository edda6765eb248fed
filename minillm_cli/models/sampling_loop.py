"""The decoding loop behind ``generation.generate``: one batch of prompts sampled token by token with the model's
KV cache, only the last position projected onto the vocabulary, exact inverse-CDF draws (``decoding.draw``) and
the no-repeat-n-gram rule, without the per-step machinery of transformers' ``generate`` (logits-processor and
stopping-criteria objects, a multinomial draw that makes an exponential number for every vocabulary entry).
On a CPU that machinery costs as much as the forward pass of a small student at a 49k vocabulary.

The settings act in transformers' order: the n-gram ban, then temperature, top-k and top-p
(``decoding.filter_logits``); temperature 0 is greedy (the argmax after the ban)."""

from __future__ import annotations

from typing import Sequence

from .decoding import Decoder, draw, logit_width
from .sampling import SamplingConfig, left_pad


class NGramBan:
    """The no-repeat-n-gram rule of transformers' ``NoRepeatNGramLogitsProcessor`` on each row's unpadded tokens
    (prompt and sampled): a token that would complete an n-gram already in the row is banned. Each row keeps a
    table from (n−1)-gram to the tokens that followed it, updated as tokens are appended, so a step costs a
    lookup per row instead of a scan of the sequence."""

    def __init__(self, size: int, rows: Sequence[Sequence[int]]):
        self.size = size
        self.sequences: list[list[int]] = []
        self.tables: list[dict[tuple, set[int]]] = []
        for row in rows:
            self.sequences.append([])
            self.tables.append({})
            for token in row:
                self.append(len(self.sequences) - 1, token)

    def append(self, row: int, token: int) -> None:
        sequence = self.sequences[row]
        sequence.append(token)
        if len(sequence) >= self.size:
            self.tables[row].setdefault(tuple(sequence[len(sequence) - self.size:-1]), set()).add(token)

    def banned(self, row: int) -> set[int]:
        """Tokens row ``row`` may not sample next."""
        sequence = self.sequences[row]
        if len(sequence) + 1 < self.size:
            return set()
        return self.tables[row].get(tuple(sequence[len(sequence) - self.size + 1:]), set())

    def apply(self, logprobs, rows: Sequence[int]):
        """``logprobs`` ([B, V]) with each listed row's banned tokens at −inf (a copy only when something is
        banned; a ban leaves the row unnormalised, which ``decoding.draw`` allows)."""
        import torch

        pairs = [(row, token) for row in rows for token in self.banned(row) if token < logprobs.shape[-1]]
        if not pairs:
            return logprobs
        index = torch.tensor(pairs, dtype=torch.long, device=logprobs.device)
        logprobs = logprobs.clone()
        logprobs[index[:, 0], index[:, 1]] = float("-inf")
        return logprobs


def sample_batch(model, prompts: Sequence[Sequence[int]], config: SamplingConfig, eos_ids: set[int], pad: int,
                 generator) -> list[tuple[list[int], bool]]:
    """One continuation per prompt: (new tokens up to but excluding the first end-of-sequence token, whether
    one came). ``generator`` draws every token (None: torch's default stream on the model's device). The
    model is run under ``torch.inference_mode`` and must be in eval mode."""
    import torch

    size = len(prompts)
    ids, mask = left_pad(prompts, pad)
    decoder = Decoder(model, logit_width(model))
    ban = NGramBan(config.no_repeat_ngram_size, prompts) if config.no_repeat_ngram_size else None
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=decoder.device)
    outputs: list[list[int]] = [[] for _ in range(size)]
    ended = [False] * size
    with torch.inference_mode():
        logprobs = decoder.step(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        for step in range(config.max_new_tokens):
            alive = [row for row in range(size) if not ended[row]]
            if ban is not None:
                logprobs = ban.apply(logprobs, alive)
            tokens = logprobs.argmax(dim=-1) if config.temperature == 0 else draw(logprobs, config, generator)
            stops = torch.isin(tokens, eos).tolist()
            values = tokens.tolist()
            for row in alive:
                if stops[row]:
                    ended[row] = True
                else:
                    outputs[row].append(values[row])
                    if ban is not None:
                        ban.append(row, values[row])
            if all(ended) or step == config.max_new_tokens - 1:
                break
            # Finished rows are fed padding; their outputs are never read.
            fed = torch.tensor([values[row] if not ended[row] else pad for row in range(size)], dtype=torch.long)
            mask = torch.cat([mask, torch.ones((size, 1), dtype=mask.dtype)], dim=-1)
            logprobs = decoder.step(fed.unsqueeze(-1), mask, mask.sum(-1, keepdim=True) - 1)
    return [(tokens, done) for tokens, done in zip(outputs, ended)]
