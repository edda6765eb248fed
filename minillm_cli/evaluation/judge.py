"""LLM-as-judge: the paper's GPT-4 feedback (docs/method.md §4; MiniLLM, Gu et al. 2023, which follows the
Vicuna judging protocol of Chiang et al. 2023 / Zheng et al. 2023).

For each item the judge model sees the instruction (and input), the evaluated model's response as
"Assistant 1" and the gold response as "Assistant 2", and is asked for two overall scores from 1 to 10 on the
first line of its reply ("x y"), followed by an explanation. The reported number is

    ratio = sum of the model's scores / sum of the gold responses' scores

over the items whose reply could be parsed. Items whose reply still cannot be parsed after the retries (or
whose request kept failing) are excluded from *both* totals, so the ratio compares the same items, and are
counted in ``failures``. The order is fixed (model first, gold second) as in the paper, so the results are
comparable between models; position bias affects every model alike.

Any OpenAI-compatible chat-completions endpoint works (OpenAI, Azure-style proxies, vLLM, llama.cpp's server,
Ollama): ``url`` is the API base (``https://api.openai.com/v1``; ``/chat/completions`` is appended) or the full
endpoint. The API key is read from an environment variable (``MINILLM_JUDGE_API_KEY`` by default) at each
request and sent only as an ``Authorization: Bearer`` header: it is never stored on the client, never part of
a repr, an error message or a result (any text that came back from the server is scrubbed of it too, in case
the server echoes it). Without the variable no Authorization header is sent (local servers need none).

Only the standard library (urllib) is used.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Callable, Optional, Sequence

from ..errors import MinillmError

__all__ = ["JudgeClient", "JudgeError", "build_prompt", "judge", "parse_scores"]

SCORE_MIN, SCORE_MAX = 1.0, 10.0

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."

_REQUEST = (
    "We would like your feedback on the performance of two AI assistants responding to the user instruction "
    "shown above. Rate the helpfulness, relevance, accuracy and level of detail of each response. Give each "
    "assistant an overall score from 1 to 10, where a higher score means better overall performance.\n"
    "On the first line, output only the two scores, for Assistant 1 and Assistant 2 in that order, separated "
    "by a space. On the following lines, explain your evaluation, avoiding any bias, and make sure the order "
    "in which the responses were presented does not affect your judgement."
)


def build_prompt(instruction: str, input_text: str, response: str, reference: str) -> str:
    """The judge's user message for one item: the task, the two responses (model = Assistant 1, gold =
    Assistant 2) and the request for "x y" on the first line."""
    task = f"[Instruction]\n{instruction}\n\n"
    if input_text:
        task += f"[Input]\n{input_text}\n\n"
    return (
        f"{task}"
        f"[The Start of Assistant 1's Answer]\n{response}\n[The End of Assistant 1's Answer]\n\n"
        f"[The Start of Assistant 2's Answer]\n{reference}\n[The End of Assistant 2's Answer]\n\n"
        f"[System]\n{_REQUEST}\n"
    )


# A score: an integer or decimal, optionally written out of ten ("8/10"). Signs are kept so that "-1" is read
# as an out-of-range score rather than as 1.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_OUT_OF_TEN = re.compile(r"\s*/\s*10(?![\d.])")
_LABEL = re.compile(r"(?i)\b(?:assistant|response|answer|model|gold)\s*(?:#\s*)?[12]?\s*[:=]")


def parse_scores(text: str) -> Optional[tuple]:
    """(model score, gold score) from the first non-empty line of a judge reply, or None.

    Accepted: "8 7", "8, 7", "8.5 7", "8/10 7/10", "**8 7**", "Scores: 8 7", "Assistant 1: 8 Assistant 2: 7".
    Rejected (None): anything without exactly two numbers on that line, or with a score outside 1..10. Only the
    first line is read, as the prompt asks: the explanation after it is full of other numbers.
    """
    if not isinstance(text, str):
        return None
    line = next((l for l in text.splitlines() if l.strip()), "")
    line = line.replace("*", " ").replace("`", " ").replace("#", " ")
    line = _OUT_OF_TEN.sub(" ", line)
    line = _LABEL.sub(" ", line)
    numbers = _NUMBER.findall(line)
    if len(numbers) != 2:
        return None
    scores = tuple(float(n) for n in numbers)
    if not all(SCORE_MIN <= s <= SCORE_MAX for s in scores):
        return None
    return scores


class JudgeError(MinillmError):
    """The judge endpoint refused every attempt in a way retrying cannot fix (wrong URL, model or key)."""


class _Transient(Exception):
    """A failed attempt that another attempt may fix (5xx, 429, timeout, connection error, bad body)."""


class JudgeClient:
    """An OpenAI-compatible chat-completions endpoint used as the judge.

    ``url``: the API base or the full ``.../chat/completions`` URL. ``model``: the judge model's name.
    ``api_key_env``: the environment variable holding the API key (read at each request, never stored).
    ``timeout``: seconds per request. ``retries``: further attempts after a failed or unparsable reply.
    ``backoff``: seconds before the first retry, doubled each time. ``temperature`` and ``max_tokens`` go into
    every request (temperature 0: the same reply for the same item, as far as the server allows); None leaves
    either out of the request.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = "MINILLM_JUDGE_API_KEY",
        timeout: float = 60,
        retries: int = 2,
        *,
        backoff: float = 1.0,
        temperature: float | None = 0.0,
        max_tokens: int | None = 512,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise MinillmError(f"judge URL must start with http:// or https://, got {url!r}")
        if not model:
            raise MinillmError("name the judge model (e.g. gpt-4)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise MinillmError(f"retries must be a non-negative integer, got {retries!r}")
        if not timeout or timeout <= 0:
            raise MinillmError(f"timeout must be a positive number of seconds, got {timeout!r}")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.temperature = temperature
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"JudgeClient(endpoint={self.endpoint!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ***, for anything that came back from the server."""
        key = self._key()
        return text.replace(key, "***") if key else text

    def complete(self, messages: list) -> str:
        """One chat-completion request; the reply's text. Raises _Transient or JudgeError."""
        payload = {"model": self.model, "messages": messages}
        # None leaves a setting out: some models accept only their default temperature, or name the limit
        # differently, and answer HTTP 400 to the field.
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self.scrub(_snippet(exc))
            if exc.code in (408, 409, 425, 429) or exc.code >= 500:
                raise _Transient(f"HTTP {exc.code} {detail}".strip()) from None
            hint = {
                401: f"check the API key in ${self.api_key_env}",
                403: f"check the API key in ${self.api_key_env} and its access to model {self.model!r}",
                404: "check the URL (an OpenAI-compatible API base, e.g. https://host/v1) and the model name",
            }.get(exc.code, "check the URL and the model name")
            status = f"HTTP {exc.code} {detail}".strip()
            raise JudgeError(f"judge endpoint {self.endpoint} answered {status}; {hint}") from None
        except TimeoutError:   # socket.timeout is an alias of it since Python 3.10
            raise _Transient(f"no reply within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _Transient(f"no reply within {self.timeout:g} s") from None
            raise _Transient(self.scrub(f"cannot reach {self.endpoint} ({reason})")) from None
        except (OSError, http.client.HTTPException) as exc:   # connection reset or body cut mid-read
            raise _Transient(self.scrub(f"connection error ({exc})")) from None
        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise _Transient(self.scrub("reply is not a chat completion: " + _short(raw))) from None
        if not isinstance(content, str):
            raise _Transient("reply has no text content")
        return content

    def score(self, instruction: str, input_text: str, response: str, reference: str) -> tuple:
        """(scores or None, last error or None) for one item, with up to ``retries`` further attempts."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": build_prompt(instruction, input_text, response, reference)},
        ]
        error = None
        for attempt in range(self.retries + 1):
            if attempt and self.backoff > 0:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self.complete(messages)
            except _Transient as exc:
                error = str(exc)
                continue
            scores = parse_scores(reply)
            if scores is not None:
                return scores, None
            error = self.scrub("unparsable reply: " + _short(reply.encode("utf-8")))
        return None, error


def _short(raw: bytes, limit: int = 120) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _snippet(exc: "urllib.error.HTTPError") -> str:
    """A short, one-line piece of an HTTP error's body (the server's own explanation)."""
    try:
        body = exc.read()
    except Exception:   # the body may be gone; the status code alone still says enough
        return ""
    if not body:
        return ""
    try:
        message = json.loads(body).get("error", {})
        message = message.get("message") if isinstance(message, dict) else message
        if isinstance(message, str) and message:
            return "(" + " ".join(message.split())[:160] + ")"
    except (ValueError, AttributeError):
        pass
    return "(" + _short(body, 160)[1:-1] + ")"


_FIELDS = ("instruction", "output", "reference")


def judge(
    client: JudgeClient,
    items: list[dict],
    *,
    on_item: Optional[Callable[[int, Optional[tuple]], None]] = None,
) -> dict:
    """Score every item (``instruction``, optional ``input``, ``output`` = the model's response, ``reference``
    = the gold response) and total the scores (see the module docstring).

    Returns ``ratio`` (None when nothing was scored), ``model_total``, ``gold_total``, ``scores`` (per item
    ``{"model": x, "gold": y}`` or None), ``failures`` (items left out of both totals), ``scored`` and
    ``errors`` (per failed item ``{"item": index, "error": last error}``). ``on_item(index, scores)`` reports
    progress. Errors that no retry can fix (HTTP 400/401/403/404) stop the run with a one-line MinillmError.
    """
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise MinillmError("judge items must be a list of dicts with instruction, input, output, reference")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise MinillmError(f"judge item {index}: expected a dict, got {type(item).__name__}")
        for key in _FIELDS:
            if not isinstance(item.get(key), str):
                problem = "missing" if item.get(key) is None else f"not a string ({type(item[key]).__name__})"
                raise MinillmError(f"judge item {index}: field '{key}' is {problem}")
    scores: list = []
    errors: list = []
    model_total = gold_total = 0.0
    for index, item in enumerate(items):
        pair, error = client.score(item["instruction"], item.get("input") or "", item["output"], item["reference"])
        if pair is None:
            scores.append(None)
            errors.append({"item": index, "error": error})
        else:
            scores.append({"model": pair[0], "gold": pair[1]})
            model_total += pair[0]
            gold_total += pair[1]
        if on_item is not None:
            on_item(index, pair)
    scored = len(items) - len(errors)
    return {
        "ratio": model_total / gold_total if gold_total > 0 else None,
        "model_total": model_total,
        "gold_total": gold_total,
        "scores": scores,
        "failures": len(errors),
        "scored": scored,
        "errors": errors,
    }
