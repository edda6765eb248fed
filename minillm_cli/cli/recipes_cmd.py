"""``minillm recipes``: list, show and copy the shipped recipes (like ``tune ls`` / ``tune cp``)."""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True)


@app.command("list")
def list_command() -> None:
    """List the shipped recipes: name, the command that runs it, what it does."""
    from rich.console import Console
    from rich.table import Table

    from ..config.library import RECIPES_DIR, list_recipes

    rows = list_recipes()
    console = Console()
    if not rows:
        console.print(f"no shipped recipes found in {RECIPES_DIR} (they come with a source checkout)")
        return
    table = Table(title="minillm recipes")
    table.add_column("name", no_wrap=True)
    table.add_column("command", overflow="fold")
    table.add_column("description", overflow="fold")
    for name, command, description in rows:
        table.add_row(name, command, description)
    console.print(table)
    console.print("copy one to edit it: minillm recipes copy NAME [DEST]")


@app.command("show")
def show(name: str = typer.Argument(..., help="Recipe name, e.g. smollm2/135M_to_6L_KD.")) -> None:
    """Print a shipped recipe's YAML."""
    from ..config.library import recipe_path

    typer.echo(recipe_path(name).read_text(encoding="utf-8"), nl=False)


@app.command("copy")
def copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. smollm2/135M_to_6L_KD."),
    dest: Optional[str] = typer.Argument(None, help="Destination file or directory (a path ending in / is a directory); default ./<basename>.yaml."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
) -> None:
    """Copy a shipped recipe so you can edit it; run it with `minillm distill --recipe DEST`."""
    from ..config.library import copy_recipe

    target = copy_recipe(name, dest, force=force)
    typer.echo(f"copied {name} to {target}; run it with: minillm distill --recipe {target}")
