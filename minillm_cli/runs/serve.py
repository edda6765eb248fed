"""``minillm serve`` step by step: read the API key from the environment, load the model, answer until stopped."""

from __future__ import annotations

import os
from typing import Optional

from ..errors import MinillmError


def api_key_from_env(variable: Optional[str], option: str = "--api-key-env") -> Optional[str]:
    """The key held by the environment variable ``variable`` (None when no variable is named); never printed."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise MinillmError(f"{option} {variable}: the environment variable {variable} is unset or empty; "
                           f"export {variable}=... first")
    return key


def make_server(model: str, *, host: str = "127.0.0.1", port: int = 8000, dtype: str = "fp32",
                device: Optional[str] = None, family: Optional[str] = None, api_key: Optional[str] = None,
                served_model_name: Optional[str] = None, limits=None, log_requests: bool = False,
                trust_remote_code: bool = False):
    """A bound ``serving.server.CompletionsServer`` for ``model`` (not yet serving: call ``serve_forever``)."""
    from ..models.device import pick_device
    from ..models.load import load_model, load_tokenizer, resolve_model
    from ..serving.model import ServedModel
    from ..serving.protocol import Limits
    from ..serving.server import CompletionsServer

    ref = resolve_model(model, family)
    tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    loaded = load_model(ref, dtype=dtype, device=pick_device(device), trust_remote_code=trust_remote_code)
    served = ServedModel(loaded, tokenizer, served_model_name or model, limits or Limits())
    try:
        return CompletionsServer((host, port), served, api_key=api_key, log_requests=log_requests)
    except OSError as exc:
        raise MinillmError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                           "stop the process that holds it") from None


def run_serve(model: str, *, console=None, **options) -> None:
    """Serve until interrupted (Ctrl-C), then close the socket."""
    from rich.console import Console

    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    server = make_server(model, **options)
    host = server.server_address[0]
    if options.get("api_key") is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"warning: serving on {host} without an API key: anyone who reaches this port can use the model "
                      "(pass --api-key-env VAR)")
    console.print(f"serving {server.served.name} at {server.url} (OpenAI-compatible completions; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
