"""The served model's side of a completion: teacher-forced log-probabilities, sampling, and the choices built from them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence

from .protocol import CompletionRequest, Limits, Position, RequestError, choice_body, logprobs_body, token_key


@dataclass
class Completion:
    """One choice before rendering: the prompt's and the completion's token ids, and why it stopped."""

    prompt_ids: list[int]
    completion_ids: list[int]      # the end-of-sequence token included when the model chose it
    finish_reason: str             # "stop" (end of sequence) or "length" (max_tokens reached)


class ServedModel:
    """A loaded causal LM and its tokenizer, answering completions one request at a time (a lock: one model)."""

    def __init__(self, model, tokenizer, name: str, limits: Limits = Limits(), chunk_tokens: int = 1024):
        from ..models.load import logit_width

        self.model, self.tokenizer, self.name, self.limits = model, tokenizer, name, limits
        self.width = logit_width(model)
        self.chunk_tokens = chunk_tokens
        positions = getattr(model.config, "max_position_embeddings", None) or limits.max_sequence_tokens
        self.max_model_len = min(int(positions), limits.max_sequence_tokens)
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()

    def tokenize(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        return list(prompt)

    def score(self, sequences: Sequence[Sequence[int]], k: int) -> list[list[Position]]:
        """Each sequence's positions, teacher-forced: the first has no log-probability; every later one has its
        token's log-probability and the top ``k`` entries of the distribution that predicted it."""
        import torch

        from ..data.batches import make_batch
        from ..models.forward import forward_hidden

        batch = make_batch([list(s[:1]) for s in sequences], [list(s[1:]) for s in sequences],
                           self.tokenizer.pad_token_id).to(self.device)
        targets = torch.tensor([t for s in sequences for t in s[1:]], dtype=torch.long, device=self.device)
        chosen, top_ids, top_values = [], [], []
        with torch.inference_mode():
            forward = forward_hidden(self.model, batch, self.width)
            rows = forward.hidden[batch.loss_mask]   # row-major: sequence by sequence, token by token
            for start in range(0, rows.shape[0], self.chunk_tokens):
                logprobs = torch.log_softmax(forward.head(rows[start:start + self.chunk_tokens]).float(), dim=-1)
                chosen.append(logprobs.gather(-1, targets[start:start + self.chunk_tokens, None]).squeeze(-1))
                top = logprobs.topk(k, dim=-1)
                top_ids.append(top.indices)
                top_values.append(top.values)
        chosen_list = torch.cat(chosen).tolist() if chosen else []
        ids_list = torch.cat(top_ids).tolist() if top_ids else []
        values_list = torch.cat(top_values).tolist() if top_values else []
        result, row = [], 0
        for sequence in sequences:
            positions = [Position(int(sequence[0]), None, None)]
            for token in sequence[1:]:
                positions.append(Position(int(token), chosen_list[row], list(zip(ids_list[row], values_list[row]))))
                row += 1
            result.append(positions)
        return result

    def sample(self, prompts: list[list[int]], request: CompletionRequest) -> list[Completion]:
        from ..models.generation import SamplingConfig, generate

        if request.max_tokens == 0:
            return [Completion(p, [], "length") for p in prompts]
        sampling = SamplingConfig(temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
                                  max_new_tokens=request.max_tokens)
        generations = generate(self.model, self.tokenizer, prompts, sampling, seed=request.seed,
                               batch_size=len(prompts))
        eos = self.tokenizer.eos_token_id
        return [Completion(p, g.token_ids + ([eos] if g.finished else []), "stop" if g.finished else "length")
                for p, g in zip(prompts, generations)]

    def complete(self, request: CompletionRequest) -> tuple[list[dict], dict]:
        """The response's choices and usage for a validated request (``RequestError`` for a too-long prompt)."""
        prompts = [self.tokenize(p) for p in request.prompts]
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise RequestError(400, f"prompt {index} has no tokens", "prompt")
            if len(prompt) + request.max_tokens > self.max_model_len:
                raise RequestError(
                    400, f"prompt {index} has {len(prompt)} tokens; with max_tokens {request.max_tokens} that exceeds "
                         f"this server's {self.max_model_len}-token limit", "max_tokens")
        with self._lock:   # one model: requests take turns (and a seed's random stream stays its own)
            completions = self.sample(prompts, request)
            scored = None
            if request.logprobs is not None:
                scored = self.score([c.prompt_ids + c.completion_ids for c in completions], request.logprobs)
        choices = [self._choice(index, completion, request, scored[index] if scored else None)
                   for index, completion in enumerate(completions)]
        prompt_tokens = sum(len(c.prompt_ids) for c in completions)
        completion_tokens = sum(len(c.completion_ids) for c in completions)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return choices, usage

    def _choice(self, index: int, completion: Completion, request: CompletionRequest,
                positions: Optional[list[Position]]) -> dict:
        decode = self.tokenizer.decode
        text = decode(completion.completion_ids, skip_special_tokens=True)
        if request.echo:
            text = decode(completion.prompt_ids) + text
        logprobs = None
        if positions is not None:
            if not request.echo:
                positions = positions[len(completion.prompt_ids):]
            def text_of(token):
                return decode([token])

            logprobs = logprobs_body(positions, token_key if request.token_ids_as_tokens else text_of,
                                     request.logprobs, text_of)
        return choice_body(index, text, logprobs, completion.finish_reason)
