"""The builtin commands, registered through the same ``register_commands`` hook as any plugin's."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from ..cli import compare, convert, distill, generate, plugins_cmd, recipes_cmd, serve

    cli.command(name="distill")(distill.distill)
    cli.command(name="generate")(generate.generate)
    cli.add_typer(convert.app, name="convert")
    cli.add_typer(recipes_cmd.app, name="recipes")
    cli.command(name="plugins")(plugins_cmd.plugins)
    cli.command(name="compare")(compare.compare)
    cli.command(name="serve")(serve.serve)

    from ..cli.eval import eval_command

    cli.command(name="eval")(eval_command)
