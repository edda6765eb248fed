"""``minillm plugins``: what is loaded, and what each plugin registers."""

from __future__ import annotations

import json

import typer


def describe(name: str) -> dict:
    """What an objective or evaluator called ``name`` is: its kind, help text and options (name, type, default,
    help); a model family: its fields. Unknown names list the known ones."""
    import dataclasses

    from .. import plugins as registry
    from ..errors import unknown_name
    from ..objective import options_help

    for kind, found in (("objective", registry.objectives()), ("evaluator", registry.evaluators())):
        if name in found:
            item = found[name]
            options = getattr(item, "Options", None)
            rows = options_help(options) if options is not None and dataclasses.is_dataclass(options) else []
            return {"name": name, "kind": kind, "help": getattr(item, "help", "") or "",
                    "options": [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in rows]}
    families = registry.model_families()
    if name in families:
        family = families[name]
        fields = {f.name: getattr(family, f.name) for f in dataclasses.fields(family)}
        return {"name": name, "kind": "model family", "help": family.description or "",
                "fields": {k: repr(v) for k, v in fields.items()}}
    known = {**registry.objectives(), **registry.evaluators(), **families}
    raise unknown_name("objective, evaluator or model family", name, known)


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    registered: bool = typer.Option(True, help="Also list the model families, objectives and evaluators."),
    show: str = typer.Option(None, "--show", metavar="NAME",
                             help="Describe one objective, evaluator or model family: help text and options."),
) -> None:
    """List the loaded plugins, their versions and the hooks they implement."""
    from .. import plugins as registry

    if show:
        _show(describe(show), as_json)
        return

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


def _show(info: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=repr))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info['name']}[/] ({info['kind']})")
    if info["help"]:
        console.print(info["help"])
    if "fields" in info:
        for key, value in info["fields"].items():
            console.print(f"  {key}: {value}")
        return
    if not info["options"]:
        console.print("no options")
        return
    table = Table(title="options")
    for column in ("option", "type", "default", "help"):
        table.add_column(column)
    for row in info["options"]:
        table.add_row(row["name"], str(row["type"]), repr(row["default"]), row["help"])
    console.print(table)
