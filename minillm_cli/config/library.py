"""The shipped recipes: find, list and copy them, and resolve a ``--recipe`` argument to a file.

Shipped recipes live in the repository's top-level ``recipes/`` folder (the layout is fixed by the design) and are
found from this file's location, ``Path(__file__).parents[2] / "recipes"``. That works for source checkouts and
editable installs, which is how this project is installed; a wheel would not carry them (they are not package
data), so ``list_recipes`` is then empty and ``--recipe NAME`` fails with the list of shipped recipes (none).
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import MinillmError, unknown_name

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def _header(path: Path) -> tuple[str, str]:
    """(command, description) from a recipe's first two comment lines."""
    comments = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#") or len(comments) == 2:
                break
            comments.append(line.lstrip("#").strip())
    comments += ["", ""]
    return comments[0], comments[1]


def list_recipes() -> list[tuple[str, str, str]]:
    """(name, command, description) of every shipped recipe, sorted by name."""
    if not RECIPES_DIR.is_dir():
        return []
    rows = []
    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        name = path.relative_to(RECIPES_DIR).with_suffix("").as_posix()
        if name.startswith("compare/"):
            continue   # comparison plans (`minillm compare`), not distill recipes
        rows.append((name, *_header(path)))
    return rows


def _shipped(name: str) -> Optional[Path]:
    """The file of a shipped recipe, or None; names outside RECIPES_DIR (``../x``) are not shipped."""
    name = name.removesuffix(".yaml")
    if not name or not RECIPES_DIR.is_dir() or name.startswith("compare/"):
        return None
    path = (RECIPES_DIR / f"{name}.yaml").resolve()
    if path.is_file() and path.is_relative_to(RECIPES_DIR):
        return path
    return None


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe (``smollm2/135M_to_6L_KD``, ``.yaml`` optional)."""
    path = _shipped(name)
    if path is None:
        raise unknown_name("recipe", name, [row[0] for row in list_recipes()])
    return path


def resolve_recipe(recipe: str | os.PathLike) -> tuple[Path, str]:
    """(file, how messages name it) of a ``--recipe``: a YAML file, else a shipped recipe's name."""
    path = Path(recipe)
    if path.is_file():
        return path, str(recipe)
    if path.is_dir():
        raise MinillmError(f"recipe '{recipe}' is a directory; give a YAML file or a shipped recipe name")
    names = [row[0] for row in list_recipes()]
    shipped = _shipped(str(recipe))
    if shipped is not None:
        display = os.path.relpath(shipped)
        return shipped, display if not display.startswith("..") else str(shipped)
    message = f"recipe '{recipe}' is neither a file nor a shipped recipe; shipped: {', '.join(names) or '(none)'}"
    close = difflib.get_close_matches(str(recipe).removesuffix(".yaml"), names, n=1)
    if close:
        message += f" (did you mean '{close[0]}'?)"
    raise MinillmError(message + "; see `minillm recipes list`")


def copy_recipe(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Copy a shipped recipe to ``dest`` (default ``./<basename>.yaml``; a directory, or a path ending in a
    slash, gets that name inside)."""
    source = recipe_path(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir() or str(dest).endswith(("/", os.sep)):
        target = target / source.name
    if target.exists() and not force:
        raise MinillmError(f"{target} already exists; pass --force to overwrite it, or give another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
