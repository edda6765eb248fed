"""The completions API's shapes as vLLM serves them: request validation, response and error bodies, token keys.

Only the subset distillation needs: ``GET /v1/models`` and ``POST /v1/completions`` with ``prompt`` (a text, a
list of texts, a list of token ids or a list of such lists), ``max_tokens`` (0 allowed with ``echo``),
``temperature``, ``top_p``, ``seed``, ``logprobs: k``, ``echo``, and vLLM's extras ``top_k`` and
``return_tokens_as_token_ids``; and vLLM's ``POST /tokenize``. Each choice's ``logprobs`` holds ``tokens``,
``token_logprobs``, ``top_logprobs`` (one {token: logprob} map per position: the k most likely tokens plus the
chosen one) and ``text_offset``; with ``echo`` the prompt's first token has no log-probability (null). With
``return_tokens_as_token_ids`` every token is written ``token_id:N``, so a client never has to tokenise strings
again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

TOKEN_ID_PREFIX = "token_id:"
TOKENIZER_PATH = "/v1/minillm/tokenizer"   # minillm's extension: the tokenizer's fingerprint for the vocab check


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_prompts: int = 64
    max_tokens: int = 1024
    max_sequence_tokens: int = 4096


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message, sent back as a JSON error body."""

    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
               405: "MethodNotAllowedError", 413: "RequestTooLargeError", 500: "InternalServerError",
               503: "ServiceUnavailableError"}


def error_body(status: int, message: str, param: Optional[str] = None) -> dict:
    """The error body vLLM's server (and OpenAI's) sends: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


@dataclass
class CompletionRequest:
    """A validated ``POST /v1/completions`` body; text prompts still need the tokenizer (``tokenize``)."""

    prompts: list                  # each a str or a list of token ids
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    logprobs: Optional[int]
    echo: bool
    token_ids_as_tokens: bool
    model: Optional[str]


def _number(body: dict, name: str, default, kind, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be finite, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise RequestError(400, f"'{name}' must be {'>' if low_open else '>='} {low}, got {value}", name)
    if high is not None and value > high:
        raise RequestError(400, f"'{name}' must be <= {high}, got {value}", name)
    return kind(value)


def _prompts(value, vocab_size: int, limits: Limits) -> list:
    """A text, texts, token ids or lists of token ids, as a list of prompts."""
    if isinstance(value, str):
        prompts = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        prompts = [value]
    elif isinstance(value, list) and value:
        prompts = value
    else:
        raise RequestError(400, "'prompt' must be a text, a list of texts, a list of token ids or a list of such lists",
                           "prompt")
    if len(prompts) > limits.max_prompts:
        raise RequestError(400, f"{len(prompts)} prompts in one request; this server takes at most {limits.max_prompts}",
                           "prompt")
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError(400, f"prompt {index} is empty", "prompt")
            continue
        if not isinstance(prompt, list) or not prompt or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            raise RequestError(400, f"prompt {index} must be a non-empty text or a non-empty list of token ids", "prompt")
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise RequestError(400, f"prompt {index} holds token id {bad}, outside the vocabulary [0, {vocab_size})",
                               "prompt")
    return prompts


def parse_completion_request(body, *, vocab_size: int, limits: Limits) -> CompletionRequest:
    """Check a request body field by field, or raise RequestError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if "prompt" not in body:
        raise RequestError(400, "'prompt' is required", "prompt")
    for name in ("n", "best_of"):
        if body.get(name, 1) not in (1, None):
            raise RequestError(400, f"'{name}' must be 1 on this server (send the prompt several times instead)", name)
    if body.get("stream"):
        raise RequestError(400, "'stream' is not supported by this server", "stream")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(400, f"'echo' must be true or false, got {echo!r}", "echo")
    as_ids = body.get("return_tokens_as_token_ids", False)
    if not isinstance(as_ids, bool):
        raise RequestError(400, f"'return_tokens_as_token_ids' must be true or false, got {as_ids!r}",
                           "return_tokens_as_token_ids")
    max_tokens = _number(body, "max_tokens", 16, int, 0, limits.max_tokens)
    if max_tokens == 0 and not echo:
        raise RequestError(400, "'max_tokens' 0 asks for nothing; it is allowed only with 'echo': true", "max_tokens")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, got {model!r}", "model")
    return CompletionRequest(
        prompts=_prompts(body["prompt"], vocab_size, limits),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, float, 0.0, 100.0),
        top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0, low_open=True),
        top_k=max(_number(body, "top_k", 0, int, -1, vocab_size), 0),   # vLLM's extra; -1 and 0 mean off
        seed=_number(body, "seed", None, int, 0, 2**63 - 1),
        logprobs=_number(body, "logprobs", None, int, 0, vocab_size),
        echo=echo,
        token_ids_as_tokens=as_ids,
        model=model,
    )


def token_key(token_id: int) -> str:
    """vLLM's rendering of a token under ``return_tokens_as_token_ids``."""
    return f"{TOKEN_ID_PREFIX}{token_id}"


def parse_token_key(key: str) -> int:
    """The id in a ``token_id:N`` token; ValueError for anything else."""
    if not isinstance(key, str) or not key.startswith(TOKEN_ID_PREFIX):
        raise ValueError(f"token {key!r} is not of the form '{TOKEN_ID_PREFIX}N' (ask with return_tokens_as_token_ids)")
    return int(key[len(TOKEN_ID_PREFIX):])


@dataclass
class Position:
    """One scored position: the token there, its log-probability (None for a sequence's first token) and the
    teacher's top entries as (token id, log-probability), most likely first."""

    token_id: int
    logprob: Optional[float]
    top: Optional[Sequence[tuple[int, float]]]


def logprobs_body(positions: Sequence[Position], render, k: int, text_of) -> dict:
    """A choice's ``logprobs`` object; ``render(id)`` writes a token (its text, or ``token_id:N``), ``text_of(id)``
    its text (for ``text_offset``, character offsets into the choice's text)."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    offset = 0
    for position in positions:
        text = render(position.token_id)
        tokens.append(text)
        token_logprobs.append(position.logprob)
        text_offset.append(offset)
        offset += len(text_of(position.token_id))
        if position.top is None:
            top_logprobs.append(None)
            continue
        entries = {render(token): value for token, value in list(position.top)[:k]}
        entries.setdefault(text, position.logprob)   # vLLM adds the chosen token to the top k
        top_logprobs.append(entries)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset}


def completion_body(request_id: str, created: int, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage}


def choice_body(index: int, text: str, logprobs: Optional[dict], finish_reason: Optional[str]) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": None,
            "prompt_logprobs": None}


def models_body(model: str, created: int, max_model_len: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "minillm",
                                        "root": model, "parent": None, "max_model_len": max_model_len}]}

