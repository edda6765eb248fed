"""``minillm serve``: a model behind the OpenAI-compatible completions API, as a teacher for distillation elsewhere."""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    model: str = typer.Argument(..., help="Model: alias, hub id, local directory or .gguf file."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface (set an API key)."),
    port: int = typer.Option(8000, help="Port to listen on; 0 picks a free one."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, … (default: cuda when available)."),
    family: Optional[str] = typer.Option(None, help="Model family, when it cannot be detected."),
    api_key_env: Optional[str] = typer.Option(
        None, "--api-key-env", metavar="VAR",
        help="Require 'Authorization: Bearer KEY', KEY read from the environment variable VAR (never from the command line).",
    ),
    served_model_name: Optional[str] = typer.Option(None, help="The name clients use in 'model' (default: MODEL as given)."),
    max_prompts: int = typer.Option(64, help="Most prompts in one request."),
    max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask for."),
    max_body_mb: float = typer.Option(8.0, help="Largest request body, in MiB."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Print each request line and status (never headers)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run Python code shipped with the model (auto_map); only for models you trust."),
) -> None:
    """Serve MODEL on GET /v1/models and POST /v1/completions (prompt as text or token ids, max_tokens, temperature,
    top_p, seed, logprobs, echo, return_tokens_as_token_ids), the subset of vLLM's API that `minillm distill
    --teacher http://HOST:PORT/v1` uses (docs/serving.md)."""
    from ..errors import MinillmError
    from ..runs.serve import api_key_from_env, run_serve
    from ..serving.protocol import Limits

    if max_prompts < 1 or max_tokens < 1 or max_body_mb <= 0:
        raise MinillmError("--max-prompts and --max-tokens must be >= 1 and --max-body-mb > 0")
    run_serve(
        model, host=host, port=port, dtype=dtype, device=device, family=family, api_key=api_key_from_env(api_key_env),
        served_model_name=served_model_name, log_requests=log_requests, trust_remote_code=trust_remote_code,
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_prompts=max_prompts, max_tokens=max_tokens),
    )
