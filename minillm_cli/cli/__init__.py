"""The ``minillm`` command line. Commands come from plugins, the builtin ones included."""

from __future__ import annotations

import sys

import typer

from ..errors import MinillmError

app = typer.Typer(
    name="minillm",
    help="Distill large language models into small ones: MiniLLM (reverse KL by policy gradient) and the "
    "baselines (SFT, KD, SeqKD, GKD, DistiLLM) on one engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_commands_registered = False


def build_app() -> typer.Typer:
    """Load the plugins and let each add its commands."""
    global _commands_registered
    if not _commands_registered:
        from ..plugins import load_plugins

        load_plugins().hook.register_commands(cli=app)
        _commands_registered = True
    return app


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors are Typer's; a MinillmError becomes one line on stderr and exit status 2."""
    from ..training.distributed import quiet_deepspeed
    from ..runs.launch import report_to_launcher, strip_local_rank

    quiet_deepspeed()
    try:
        build_app()
        app(args=strip_local_rank(sys.argv[1:] if argv is None else argv), prog_name="minillm")
    except MinillmError as exc:
        if report_to_launcher(str(exc)):   # one of several processes: the launching command prints it once
            raise SystemExit(2) from None
        fail(str(exc))
