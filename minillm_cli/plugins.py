"""The plugin manager: builtins and third-party plugins go through the same hooks.

Environment variables:
- ``MINILLM_LOAD_PLUGINS``: comma-separated distribution names whose ``minillm`` entry points are loaded;
  unset loads all installed plugins, an empty string loads none (the builtins are always loaded).
- ``MINILLM_TRACE_PLUGINS=1``: print every hook call and its result to standard error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import MinillmError, unknown_name

ENTRY_POINT_GROUP = "minillm"

DEFAULT_PLUGINS = (
    "minillm_cli.builtin.families",
    "minillm_cli.builtin.commands",
    "minillm_cli.builtin.objectives",
    "minillm_cli.builtin.evaluators",
)

pm = pluggy.PluginManager("minillm")
pm.add_hookspecs(hookspecs)

_loaded = False
_undo_tracing: Callable[[], None] | None = None
# plugin name -> distribution version, for plugins that came from an entry point
_plugin_versions: dict[str, str] = {}


def load_plugins() -> pluggy.PluginManager:
    """Load the builtins and the installed plugins once; later calls are free."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
    _load_entry_points(os.environ.get("MINILLM_LOAD_PLUGINS"))
    validate()
    if os.environ.get("MINILLM_TRACE_PLUGINS", "").lower() not in ("", "0", "false", "no"):
        enable_tracing()
    return pm


def _load_entry_points(allow: str | None) -> None:
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if allowed:
        installed = {ep.name for ep in entry_points} | {ep.dist.name for ep in entry_points if ep.dist is not None}
        missing = sorted(allowed - installed)
        if missing:
            raise MinillmError(
                f"MINILLM_LOAD_PLUGINS names {', '.join(repr(m) for m in missing)}, which no installed plugin is; "
                f"installed: {', '.join(sorted(installed)) or '(none)'}; fix the name or pip install the plugin"
            )
    for entry_point in entry_points:
        dist = entry_point.dist
        dist_name = dist.name if dist is not None else entry_point.name
        if allowed is not None and dist_name not in allowed and entry_point.name not in allowed:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken plugin must name itself, not crash with a bare traceback
            raise MinillmError(
                f"plugin '{entry_point.name}' ({entry_point.value}) failed to import: {exc}; "
                f"fix or uninstall it, or set MINILLM_LOAD_PLUGINS to the plugins you want"
            ) from exc
        pm.register(plugin, name=entry_point.name)
        if dist is not None:
            _plugin_versions[entry_point.name] = dist.version


def validate() -> None:
    """A hookimpl whose name matches no hookspec (a typo such as ``register_objective``) fails here, loudly."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise MinillmError(f"plugin error: {exc}; known hooks: {', '.join(known_hooks())}") from exc


def enable_tracing(writer: Callable[[str], Any] | None = None) -> None:
    global _undo_tracing
    if _undo_tracing is not None:
        return
    pm.trace.root.setwriter(writer or sys.stderr.write)
    _undo_tracing = pm.enable_tracing()


def known_hooks() -> list[str]:
    """The hooks with a specification; pluggy also keeps a caller for a misspelt hook some plugin implemented
    (and keeps it after that plugin is unregistered), which is not a hook."""
    return sorted(name for name in dir(pm.hook)
                  if not name.startswith("_") and getattr(getattr(pm.hook, name), "spec", None) is not None)


def describe_plugins() -> list[dict]:
    """Name, version and implemented hooks of every loaded plugin."""
    from . import __version__

    load_plugins()
    rows = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        version = _plugin_versions.get(name) or (__version__ if name.startswith("minillm_cli.") else None)
        rows.append({"name": name, "version": version, "hooks": hooks})
    return sorted(rows, key=lambda row: (not row["name"].startswith("minillm_cli."), row["name"]))


# --- registries ---------------------------------------------------------------------------------------------


def _collect(hook_name: str, kind: str, key: Callable[[Any], str]) -> dict[str, Any]:
    load_plugins()
    found: dict[str, Any] = {}

    def register(item):
        name = key(item)
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            where = getattr(item, "__qualname__", None) or type(item).__qualname__
            raise MinillmError(f"a plugin registers {kind} {where} with the name {name!r}; give it a non-empty "
                               "name without surrounding spaces")
        if name in found:
            raise MinillmError(f"{kind} '{name}' is registered twice; rename one of the plugins' {kind}s")
        found[name] = item

    call_hook(hook_name, register=register)
    return found


def call_hook(hook_name: str, **kwargs) -> list:
    """Call a hook; an exception inside a plugin's implementation becomes one line naming the plugin and the hook."""
    hook = getattr(pm.hook, hook_name)
    try:
        return hook(**kwargs)
    except MinillmError:
        raise
    except Exception as exc:  # noqa: BLE001 - any bug in any plugin: name it instead of a pluggy traceback
        culprit = _plugin_in_traceback(hook, exc) or "(unknown)"
        raise MinillmError(
            f"plugin '{culprit}' failed in its {hook_name} hook ({type(exc).__name__}: {exc}); fix or uninstall "
            "it, or leave it out of MINILLM_LOAD_PLUGINS"
        ) from exc


def _plugin_in_traceback(hook, exc: BaseException) -> str | None:
    """The innermost hook implementation on the exception's traceback: whose code raised (or called what raised)."""
    codes = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()
             if hasattr(impl.function, "__code__")}
    name, tb = None, exc.__traceback__
    while tb is not None:
        name = codes.get(tb.tb_frame.f_code, name)
        tb = tb.tb_next
    return name


def model_families() -> dict:
    """Family name -> ModelFamily."""
    return _collect("register_model_families", "model family", lambda f: f.name)


def objectives() -> dict:
    """Objective name -> Objective class."""
    return _collect("register_objectives", "objective", lambda o: o.name)


def evaluators() -> dict:
    """Suite name -> Evaluator class."""
    return _collect("register_evaluators", "evaluator", lambda e: e.name)


def get_family(name: str):
    families = model_families()
    if name not in families:
        raise unknown_name("model family", name, families)
    return families[name]


def get_objective(name: str):
    found = objectives()
    if name not in found:
        raise unknown_name("objective", name, found)
    return found[name]


def get_evaluator(name: str):
    found = evaluators()
    if name not in found:
        raise unknown_name("evaluator", name, found)
    return found[name]
