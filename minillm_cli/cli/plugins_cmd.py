"""``minillm plugins``: what is loaded, and what each plugin registers."""

from __future__ import annotations

import json

import typer


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    registered: bool = typer.Option(True, help="Also list the model families, objectives and evaluators."),
) -> None:
    """List the loaded plugins, their versions and the hooks they implement."""
    from .. import plugins as registry

    rows = registry.describe_plugins()
    contents = {
        "model_families": sorted(registry.model_families()),
        "objectives": sorted(registry.objectives()),
        "evaluators": sorted(registry.evaluators()),
    }
    if as_json:
        typer.echo(json.dumps({"plugins": rows, **(contents if registered else {})}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="minillm plugins")
    table.add_column("plugin")
    table.add_column("version")
    table.add_column("hooks")
    for row in rows:
        table.add_row(row["name"], row["version"] or "-", ", ".join(row["hooks"]))
    console = Console()
    console.print(table)
    if registered:
        for kind, names in contents.items():
            console.print(f"[bold]{kind.replace('_', ' ')}[/]: {', '.join(names) if names else '(none)'}")
