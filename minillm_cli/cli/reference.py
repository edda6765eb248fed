"""The command-line reference, generated from the Typer app: ``python -m minillm_cli.cli.reference > docs/cli.md``.

Only the builtin commands are documented (installed plugins may add their own), so the output is the same on
every machine; ``tests/test_docs.py`` fails when docs/cli.md differs from it.
"""

from __future__ import annotations

import sys

HEADER = """# CLI reference

<!-- Generated from the Typer app by `python -m minillm_cli.cli.reference > docs/cli.md`; do not edit by hand
     (tests/test_docs.py fails when this file is stale). -->

Every command also takes `--help`. Errors are one line on standard error and exit status 2 (see
[troubleshooting](troubleshooting.md)). Plugins can add commands (the `register_commands` hook); they are not
listed here.
"""


def builtin_app():
    """A fresh ``minillm`` Typer app with only the builtin commands."""
    import typer

    from ..plugins import load_plugins
    from . import app as main_app

    app = typer.Typer(name="minillm", help=main_app.info.help, no_args_is_help=True, add_completion=False)
    # Through the plugin manager (nothing outside builtin/ imports it); that plugin alone, not installed ones.
    load_plugins().get_plugin("minillm_cli.builtin.commands").register_commands(cli=app)
    return app


def render() -> str:
    """The Markdown reference of every builtin command and subcommand, in the order ``minillm --help`` lists them."""
    import typer

    root = typer.main.get_command(builtin_app())
    lines = [HEADER, _clean(root.help or ""), ""]
    lines += ["| command | what it does |", "|---|---|"]
    commands = list(_walk(root, ["minillm"]))
    for path, command in commands:
        if not _is_group(command):
            lines.append(f"| [`{' '.join(path)}`](#{_anchor(path)}) | {_cell(_first_sentence(command.help or ''))} |")
    lines.append("")
    for path, command in commands:
        lines += _command_section(path, command)
    return "\n".join(lines).rstrip() + "\n"


def _walk(group, path):
    for name in group.commands:          # registration order, as `minillm --help` shows them
        command = group.commands[name]
        yield path + [name], command
        if _is_group(command):
            yield from _walk(command, path + [name])


def _is_group(command) -> bool:
    return hasattr(command, "commands")


def _anchor(path) -> str:
    return "-".join(path)


def _command_section(path, command) -> list:
    level = "##" if len(path) == 2 else "###"
    lines = [f'<a id="{_anchor(path)}"></a>', "", f"{level} `{' '.join(path)}`", "", _clean(command.help or ""), ""]
    if _is_group(command):
        subcommands = ", ".join(f"[`{name}`](#{_anchor(path + [name])})" for name in command.commands)
        return lines + [f"Subcommands: {subcommands}.", ""]
    arguments = [p for p in command.params if _kind(p) == "argument"]
    options = [p for p in command.params if _kind(p) == "option" and not getattr(p, "hidden", False)]
    usage = " ".join(path + ["[OPTIONS]"] + [_argument_usage(p) for p in arguments])
    lines += ["```", usage, "```", ""]
    rows = [(_argument_name(p), _type(command, p), "" if p.required else _default(p), p.help or "") for p in arguments]
    rows += [(_option_names(p), _type(command, p), _default(p), p.help or "") for p in options]
    if rows:
        lines += ["| argument or option | type | default | description |", "|---|---|---|---|"]
        for name, kind, default, text in rows:
            lines.append(f"| {name} | {_cell(kind)} | {_cell(default)} | {_cell(_clean(text))} |")
        lines.append("")
    return lines


def _kind(param) -> str:
    return getattr(param, "param_type_name", "option")


def _argument_name(param) -> str:
    name = param.name.upper() + ("…" if param.nargs == -1 else "")
    return f"`{name}`"


def _argument_usage(param) -> str:
    name = param.name.upper() + ("..." if param.nargs == -1 else "")
    return name if param.required else f"[{name}]"


def _option_names(param) -> str:
    names = " ".join(f"`{o}`" for o in param.opts)
    if param.secondary_opts:
        names += " / " + " ".join(f"`{o}`" for o in param.secondary_opts)
    return names + (" (repeatable)" if param.multiple else "")


def _type(command, param) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    text = ""
    display = getattr(param, "display_type", None)
    if callable(display):       # typer ≥ 0.20 bundles its own click, whose parameters describe their type so
        try:
            from typer._click.core import Context

            text = display(Context(command, info_name=command.name))
        except Exception:       # pragma: no cover - other typer versions
            text = ""
    if not text:
        kind = getattr(param, "type", None)
        text = getattr(kind, "name", "") or ""
    text = str(text).strip("<>")
    if text.startswith("list[") and text.endswith("]"):
        text = text[5:-1]
    return {"str": "text", "path": "path"}.get(text, text)


def _default(param) -> str:
    default = param.default
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            if default is None:
                return ""
            return param.opts[0] if default else param.secondary_opts[0]
        return "off" if not default else "on"
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d) for d in default)
    return str(default)


def _clean(text: str) -> str:
    """Typer help text: paragraphs kept, lines within a paragraph joined."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br>")


def _first_sentence(text: str) -> str:
    text = _clean(text).split("\n\n")[0]
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
