"""A teacher behind a server (``--teacher http://HOST:PORT/v1``): its top-k log-probabilities and its samples.

The served teacher stands where the offline cache stands (``training.teacher_cache``): ``for_batch`` asks the
server to score each prompt + response (``echo``, ``max_tokens`` 0, ``logprobs`` k) and returns the teacher's top
k log-probabilities per response token, with the rest of its mass as one more bucket, for the same k + 1-bucket
loss (``losses.cached``; the approximation and its error are described in ``training.teacher_cache``). Unlike the
cache, it scores any response, so objectives that train on student samples use it too; and it samples: SeqKD's
responses, GKD's ``seq_kd`` batches, and the teacher's tokens of MiniLLM's teacher-mixed rollouts
(``training.served_rollout``). Every token travels as an id (``return_tokens_as_token_ids``): nothing is tokenised
twice.

Before the first step the tokenizers are compared: through minillm's ``/v1/minillm/tokenizer`` (a fingerprint of
the id → token map), or, with a server that lacks it (vLLM), by tokenising a probe text on both sides
(vLLM's ``/tokenize``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from ..errors import MinillmError
from .client import CompletionsClient, ServedToken
from .protocol import TOKENIZER_PATH

REQUEST_PROMPTS = 16          # sequences per request: well inside a server's batch limit (minillm serve: 64)


class ServedTeacher:
    """The client of one served teacher, checked against the student's tokenizer and logit width."""

    def __init__(self, client: CompletionsClient, name: str, tokenizer, width: int, k: int, family,
                 teacher_width: Optional[int] = None):
        from ..models.load import ModelRef

        self.client, self.name, self.tokenizer, self.width, self.k = client, name, tokenizer, width, k
        self.teacher_width = teacher_width or width   # the served model's logits (the student's, when unknown)
        self.url = client.url
        # The tokenizers are the same (checked), so the student's family says how prompts are written (BOS, format).
        self.ref = ModelRef(spec=self.url, family=family, source=self.url, local=False)

    @classmethod
    def connect(cls, url: str, tokenizer, student_width: Optional[int], k: int, *, family, trim: bool = False,
                client: Optional[CompletionsClient] = None) -> "ServedTeacher":
        """Reach the server, learn its model's name, and check its tokenizer against the student's."""
        client = client or CompletionsClient(url)
        name = client.model_name()
        width, teacher_width = check_served_vocab(client, name, tokenizer, student_width, trim=trim)
        return cls(client, name, tokenizer, width, k, family, teacher_width)

    # --- scores -------------------------------------------------------------------------------------------

    def score(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], k: int) -> list[list[ServedToken]]:
        """For each prompt + response, the server's view of every response token (its log-probability and the
        teacher's top ``k``), teacher-forced."""
        result: list[list[ServedToken]] = []
        for start in range(0, len(prompts), REQUEST_PROMPTS):
            chunk = [list(p) + list(r) for p, r in zip(prompts[start:start + REQUEST_PROMPTS],
                                                       responses[start:start + REQUEST_PROMPTS])]
            choices = self.client.complete({
                "model": self.name, "prompt": chunk, "max_tokens": 0, "echo": True, "logprobs": k,
                "temperature": 1.0, "return_tokens_as_token_ids": True,
            })
            for sequence, prompt, choice in zip(chunk, prompts[start:], choices):
                positions = self.client.positions(choice)
                if [p.token_id for p in positions[:len(sequence)]] != sequence:
                    raise self.client.not_the_api("/completions", "echo did not return the prompt's token ids")
                result.append(positions[len(prompt):len(sequence)])
        return result

    def for_batch(self, batch):
        """The teacher's k + 1 buckets for a batch's loss tokens, in ``hidden[loss_mask]`` order (example by example)."""
        import torch

        from ..losses.cached import CachedTeacher

        rows = [position for example in self.score(batch.prompts, batch.responses, self.k) for position in example]
        ids, values, rests = self.buckets(rows)
        device = batch.input_ids.device
        return CachedTeacher(topk_ids=ids.to(device), topk_logprobs=values.to(device), rest_logprob=rests.to(device))

    def buckets(self, rows: Sequence[ServedToken]):
        """[N, k] ids and log-probabilities (most likely first) and [N] log p(rest) from the served top entries.

        Entries at ids the student does not have (a wider teacher under trim_vocab: padding) are left out, and the
        loss renormalises the buckets, as a local teacher's logits are trimmed to the shared vocabulary. When the
        server sent the whole distribution (k ≥ its logits) the rest is the log-sum of what was sent beyond the k
        kept, exactly (-inf when nothing is left); otherwise it is log(1 − Σ of what was sent and not in the rest)."""
        import torch

        k = min(self.k, self.width)
        ids = torch.zeros((len(rows), k), dtype=torch.long)
        values = torch.full((len(rows), k), -math.inf, dtype=torch.float32)
        rests = torch.empty(len(rows), dtype=torch.float32)
        for row, position in enumerate(rows):
            entries = sorted(((v, i) for i, v in (position.top or {}).items() if i < self.width), reverse=True)[:k]
            if len(entries) < k and len(position.top or {}) < self.k:
                raise MinillmError(
                    f"served teacher {self.url} sent {len(position.top or {})} top log-probabilities per token, not "
                    f"teacher_topk = {self.k}; lower teacher_topk or raise the server's limit (vLLM: --max-logprobs)")
            taken = {i for _, i in entries}
            unused = (i for i in range(self.width) if i not in taken)   # fill ids (log-prob -inf) keep rows distinct
            for column in range(k):
                value, index = entries[column] if column < len(entries) else (-math.inf, next(unused))
                ids[row, column], values[row, column] = index, value
            top = position.top or {}
            if len(top) >= self.teacher_width:
                rests[row] = _logsumexp([v for i, v in top.items() if i not in taken and i < self.width])
            else:
                mass = math.fsum(math.exp(v) for i, v in top.items() if i in taken or i >= self.width)
                rests[row] = math.log1p(-mass) if mass < 1.0 else -math.inf
        return ids, values, rests

    def file_tensors(self, examples: Sequence, *, batch_size: int = 8) -> dict:
        """The tensors of a ``--save-logits`` file (``training.teacher_cache``) for tokenized ``examples``, scored by
        the server: ``minillm generate --model http://…/v1 --save-logits K``."""
        from ..training.teacher_cache import file_tensors

        ids, values, rests = [], [], []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            scored = self.score([e.prompt_ids for e in chunk], [e.response_ids for e in chunk], self.k)
            rows = self.buckets([position for example in scored for position in example])
            for collected, tensor in zip((ids, values, rests), rows):
                collected.append(tensor)
        return file_tensors(examples, min(self.k, self.width), ids, values, rests)

    # --- samples ------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], sampling, *, seed: Optional[int], batch_size: int = 8):
        """One sampled response per prompt (``models.generation.Generation``), as ``models.generation.generate``."""
        from ..models.generation import Generation

        if sampling.no_repeat_ngram_size:
            raise MinillmError("generation.no_repeat_ngram_size is not part of the completions API; set it to 0 "
                               "for a served teacher")
        eos = self.tokenizer.eos_token_id
        results = []
        size = max(1, min(batch_size, REQUEST_PROMPTS))
        for number, start in enumerate(range(0, len(prompts), size)):
            body = {"model": self.name, "prompt": [list(p) for p in prompts[start:start + size]],
                    "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                    "top_p": sampling.top_p, "logprobs": 0, "return_tokens_as_token_ids": True}
            if sampling.top_k:
                body["top_k"] = sampling.top_k
            if seed is not None:
                body["seed"] = seed + number   # each request its own stream, the whole a function of the seed
            for choice in self.client.complete(body):
                tokens = [p.token_id for p in self.client.positions(choice)]
                finished = choice.get("finish_reason") == "stop"
                if tokens and tokens[-1] == eos:
                    tokens = tokens[:-1]
                    finished = True
                results.append(Generation(tokens, finished))
        return results


    def next_tokens(self, prefixes: Sequence[Sequence[int]], sampling, *, seed: Optional[int]) -> list[int]:
        """One token per prefix drawn by the server from the teacher's distribution (filtered by ``sampling``'s
        temperature, top_p and top_k): teacher-mixed sampling's c_t = 1 steps (``training.served_rollout``)."""
        from dataclasses import replace

        eos = self.tokenizer.eos_token_id
        return [g.token_ids[0] if g.token_ids else eos
                for g in self.generate(prefixes, replace(sampling, max_new_tokens=1), seed=seed, batch_size=len(prefixes))]


def _logsumexp(values) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top if top == -math.inf else top + math.log(math.fsum(math.exp(v - top) for v in values))


def check_served_vocab(client: CompletionsClient, name: str, tokenizer, student_width: Optional[int], *,
                       trim: bool) -> tuple[int, Optional[int]]:
    """(the logit width to distil over, the served model's logits or None when the server does not say), after
    comparing the served tokenizer with the student's."""
    from ..models.vocab import tokenizer_fingerprint

    info = client.get(TOKENIZER_PATH.removeprefix("/v1"), missing_ok=True)
    if info is None:
        probe_tokenizer(client, name, tokenizer)
        return (student_width or len(tokenizer)), None
    if not isinstance(info, dict) or "fingerprint" not in info or "logit_width" not in info:
        raise client.not_the_api(TOKENIZER_PATH, "no fingerprint")
    if info["fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise MinillmError(
            f"the served teacher's tokenizer ({name}: {info.get('tokens')} tokens) differs from the student's "
            f"({len(tokenizer)} tokens): token-level distillation compares the two models' distributions over the "
            "same vocabulary, so serve a teacher of the student's family (the same tokenizer)")
    teacher_width = int(info["logit_width"])
    if student_width is None or teacher_width == student_width:   # None: no student (minillm generate)
        return teacher_width, teacher_width
    if not trim:
        raise MinillmError(
            f"the served teacher has {teacher_width} logits and the student {student_width} over the same "
            f"{len(tokenizer)} tokens; pass --trim-vocab (recipe: trim_vocab: true) to distil over the shared ones")
    return min(teacher_width, student_width), teacher_width


def probe_tokenizer(client: CompletionsClient, name: str, tokenizer) -> None:
    """Without minillm's fingerprint (a vLLM server), tokenise one probe text on both sides through ``/tokenize``."""
    ids = list(range(0, len(tokenizer), max(1, len(tokenizer) // 512)))
    probe = tokenizer.decode(ids, skip_special_tokens=True)
    root = client.url.removesuffix("/v1")
    answer = client.request("POST", root + "/tokenize", {"model": name, "prompt": probe, "add_special_tokens": False},
                             missing_ok=True)
    if answer is None:
        raise MinillmError(
            f"served teacher {client.url} offers neither {TOKENIZER_PATH} (minillm serve) nor /tokenize (vLLM), so its "
            "tokenizer cannot be compared with the student's; serve it with `minillm serve` or vLLM")
    expected = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if not isinstance(answer, dict) or answer.get("tokens") != expected:
        raise MinillmError(
            f"the served teacher's tokenizer ({name}) tokenises a probe text differently from the student's: "
            "token-level distillation needs the same vocabulary; serve a teacher of the student's family")

