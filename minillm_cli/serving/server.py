"""The HTTP server of ``minillm serve``: routes, the API key, request size limits and JSON errors, on the standard library."""

from __future__ import annotations

import hmac
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .model import ServedModel
from .protocol import TOKENIZER_PATH, RequestError, error_body, completion_body, models_body, parse_completion_request


class CompletionsServer(ThreadingHTTPServer):
    """A threading HTTP server holding the served model, its API key (or None) and whether to log requests."""

    daemon_threads = True            # a client that hangs up mid-request never keeps the process alive
    allow_reuse_address = True

    def __init__(self, address, served: ServedModel, api_key: Optional[str] = None, log_requests: bool = False):
        super().__init__(address, CompletionsHandler)
        self.served, self.api_key, self.log_requests = served, api_key, log_requests
        self.created = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class CompletionsHandler(BaseHTTPRequestHandler):
    server: CompletionsServer
    protocol_version = "HTTP/1.1"

    # --- routes ------------------------------------------------------------------------------------------

    def do_GET(self):
        self._handle({"/health": self._health, "/v1/models": self._models, TOKENIZER_PATH: self._tokenizer}, "GET")

    def do_POST(self):
        self._handle({"/v1/completions": self._completions, "/tokenize": self._tokenize}, "POST")

    def _health(self, _body):
        return {}

    def _models(self, _body):
        served = self.server.served
        return models_body(served.name, self.server.created, served.max_model_len)

    def _tokenizer(self, _body):
        from ..models.vocab import tokenizer_fingerprint

        served = self.server.served
        tokenizer = served.tokenizer
        return {"model": served.name, "fingerprint": tokenizer_fingerprint(tokenizer), "tokens": len(tokenizer),
                "logit_width": served.width, "eos_token_id": tokenizer.eos_token_id}

    def _tokenize(self, body):
        """vLLM's ``/tokenize``: a text's token ids (a vLLM server's tokenizer is checked through it)."""
        served = self.server.served
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise RequestError(400, "'prompt' must be a text", "prompt")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise RequestError(400, "'add_special_tokens' must be true or false", "add_special_tokens")
        tokens = list(served.tokenizer(body["prompt"], add_special_tokens=special)["input_ids"])
        return {"count": len(tokens), "max_model_len": served.max_model_len, "tokens": tokens}

    def _completions(self, body):
        served = self.server.served
        request = parse_completion_request(body, vocab_size=served.width, limits=served.limits)
        if request.model is not None and request.model != served.name:
            raise RequestError(404, f"The model `{request.model}` does not exist; this server serves `{served.name}`",
                               "model")
        choices, usage = served.complete(request)
        return completion_body(f"cmpl-{uuid.uuid4().hex}", int(time.time()), served.name, choices, usage)

    # --- plumbing ----------------------------------------------------------------------------------------

    def _handle(self, routes: dict, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            route = routes.get(path)
            if route is None:
                known = {"/health", "/v1/models", TOKENIZER_PATH, "/v1/completions", "/tokenize"}
                if path in known:
                    raise RequestError(405, f"{method} is not allowed on {path}")
                raise RequestError(404, f"no route {path}; this server answers GET /v1/models and POST /v1/completions")
            if path != "/health":
                self._authorize()
            body = self._read_json() if method == "POST" else None
            self._send(200, route(body))
        except RequestError as exc:
            self._send(exc.status, error_body(exc.status, exc.message, exc.param))
        except Exception as exc:  # noqa: BLE001 - the server must answer, and keep serving, whatever a request does
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._send(500, error_body(500, f"{type(exc).__name__}: {first}"[:500]))

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'")

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(400, "a POST needs a Content-Length header")
        limit = self.server.served.limits.max_body_bytes
        if int(length) > limit:
            self.close_connection = True   # an unread body must not be taken for the next request
            if int(length) <= 16 * limit:  # read it away, so that the client hears the answer instead of a reset
                remaining = int(length)
                while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 16))):
                    remaining -= len(chunk)
            raise RequestError(413, f"request body of {length} bytes; this server takes at most {limit}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the request body is not JSON ({exc})") from None

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):   # noqa: A002 - the base class's name
        if self.server.log_requests:   # the request line and status only: never the headers (the API key)
            sys.stderr.write(f"{self.address_string()} {format % args}\n")
