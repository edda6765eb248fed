"""A client for an OpenAI-compatible completions server (``minillm serve``, vLLM): timeouts, retries, one-line errors.

The API key comes from the environment (``MINILLM_TEACHER_API_KEY``) and is sent only in the Authorization
header: no message, log or record of a run holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

from ..errors import MinillmError
from .protocol import parse_token_key

API_KEY_VARIABLE = "MINILLM_TEACHER_API_KEY"
RETRIED_STATUSES = {429, 500, 502, 503, 504}


def is_served(spec: Optional[str]) -> bool:
    """Whether a teacher name is a server's address (``http(s)://HOST:PORT/v1``) rather than a model."""
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def base_url(spec: str) -> str:
    """``http(s)://HOST:PORT/v1`` without a trailing slash, or a MinillmError that shows the expected form."""
    url = spec.rstrip("/")
    if not url.endswith("/v1") or "://" not in url or not url.split("://", 1)[1].split("/", 1)[0]:
        raise MinillmError(f"teacher '{spec}': a served teacher is named by its API root, http://HOST:PORT/v1 "
                           "(as `minillm serve` prints it)")
    return url


@dataclass
class ServedToken:
    """One position of a scored or sampled sequence as the server reported it."""

    token_id: int
    logprob: Optional[float]
    top: Optional[dict]           # token id -> log-probability, or None (a sequence's first token)


class CompletionsClient:
    """Requests to one server; connection failures, timeouts and 429/5xx answers are retried with backoff."""

    def __init__(self, url: str, *, api_key: Optional[str] = None, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.5):
        self.url = base_url(url)
        self.api_key = api_key if api_key is not None else (os.environ.get(API_KEY_VARIABLE) or None)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    # --- endpoints -----------------------------------------------------------------------------------------

    def model_name(self) -> str:
        """The served model's id, from ``GET /v1/models``."""
        body = self.get("/models")
        try:
            return str(body["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise self.not_the_api("/models", "no data[0].id") from None

    def get(self, path: str, *, missing_ok: bool = False):
        return self.request("GET", self.url + path, None, missing_ok=missing_ok)

    def complete(self, body: dict) -> list[dict]:
        """``POST /v1/completions``; the choices in prompt order, one per prompt, checked for shape."""
        answer = self.request("POST", self.url + "/completions", body)
        prompts = body["prompt"]
        expected = 1 if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)) else len(prompts)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != expected:
            raise self.not_the_api("/completions", f"expected {expected} choices")
        try:
            return sorted(choices, key=lambda c: c["index"])
        except (KeyError, TypeError):
            raise self.not_the_api("/completions", "a choice without an index") from None

    def positions(self, choice: dict) -> list[ServedToken]:
        """A choice's tokens with their log-probabilities and top entries (asked with return_tokens_as_token_ids)."""
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        try:
            tokens, values, tops = logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]
            if not len(tokens) == len(values) == len(tops):
                raise ValueError("tokens, token_logprobs and top_logprobs differ in length")
            return [
                ServedToken(parse_token_key(token), None if value is None else float(value),
                            None if top is None else {parse_token_key(k): float(v) for k, v in top.items()})
                for token, value, top in zip(tokens, values, tops)
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self.not_the_api("/completions", f"logprobs: {exc}") from None

    # --- plumbing ------------------------------------------------------------------------------------------

    def not_the_api(self, path: str, what: str) -> MinillmError:
        return MinillmError(f"served teacher {self.url}: {path} answered something that is not the completions API "
                            f"({what}); is it an OpenAI-compatible server such as `minillm serve` or vLLM?")

    def request(self, method: str, url: str, body: Optional[dict], *, missing_ok: bool = False):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code == 404 and missing_ok:
                    return None
                if exc.code in RETRIED_STATUSES:
                    last = f"HTTP {exc.code}: {message}"
                    continue
                hint = "; set MINILLM_TEACHER_API_KEY to the server's key" if exc.code == 401 else ""
                raise MinillmError(f"served teacher {self.url}: {method} {url.removeprefix(self.url) or '/'} was refused "
                                   f"(HTTP {exc.code}: {message}){hint}") from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                last = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else str(reason)
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise self.not_the_api(url.removeprefix(self.url), "not JSON") from None
        raise MinillmError(f"served teacher {self.url} did not answer after {self.retries + 1} tries ({last}); "
                           "is the server running (`minillm serve MODEL --port PORT`) and reachable from here?")


def _error_message(exc) -> str:
    """The message of a JSON error body ({"error": {"message"}} or vLLM's older {"message"}), else the reason."""
    try:
        body = json.loads(exc.read())
        error = body.get("error", body)
        return str(error.get("message") if isinstance(error, dict) else error)[:300]
    except Exception:  # noqa: BLE001 - any unreadable body: fall back to the HTTP reason phrase
        return str(exc.reason)
