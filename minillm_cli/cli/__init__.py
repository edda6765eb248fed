"""The ``minillm`` command line. Commands come from plugins, the builtin ones included."""

from __future__ import annotations

import sys

import typer

from ..errors import MinillmError, os_error, short_path

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
        from ..plugins import call_hook, load_plugins

        load_plugins()
        call_hook("register_commands", cli=app)
        _commands_registered = True
    return app


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit; a very long word in it (a pasted file, say) is cut in the middle."""
    import re

    message = re.sub(r"\S{240,}", lambda match: short_path(match.group()), message)
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
    except OSError as exc:   # a path no check foresaw (read-only, too long, a file where a folder should be)
        fail(str(os_error(exc)))
    except KeyboardInterrupt:
        ignore_further_interrupts()
        fail("interrupted", 130)
    except SystemExit as exc:
        if exc.code == 130 or _caused_by_interrupt(exc):   # stopping for Ctrl-C: let the exit finish cleanly
            ignore_further_interrupts()
        raise


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Click turns Ctrl-C into 'Aborted!' and exit status 1: look for the KeyboardInterrupt behind it."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def ignore_further_interrupts() -> None:
    """Once the process is stopping for Ctrl-C, another Ctrl-C would only interrupt the exit handlers (a
    traceback from atexit, half-flushed logs): ignore it."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:   # not the main thread: nothing to protect
        pass
