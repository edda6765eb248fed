"""The package layout keeps its seams: small modules, no reaching into private names, no cycles, builtins as
plugins only. These hold the architecture of docs/architecture.md in place as the code grows."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minillm_cli"
MAX_ROOT_MODULES = 12
MAX_LINES = 500


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield path, ".".join(parts), is_package


def _imports(path, name, is_package):
    """(imported module, imported names, line) for every import of a minillm_cli module in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "minillm_cli":
                yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "minillm_cli":
                    yield alias.name, [], node.lineno


ALL = list(_modules())
NAMES = {name for _, name, _ in ALL}


def _resolve(target, names):
    """The modules an import statement loads: the target itself, plus any imported name that is a submodule."""
    found = [target] if target in NAMES else []
    found += [f"{target}.{n}" for n in names if f"{target}.{n}" in NAMES]
    return found


def test_the_package_root_holds_at_most_twelve_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p, _, _ in ALL if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long


def test_every_module_says_its_job_in_a_docstring():
    missing = [str(p.relative_to(PACKAGE)) for p, _, _ in ALL if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not missing


def test_no_module_imports_another_modules_private_names():
    private = []
    for path, name, is_package in ALL:
        for target, names, line in _imports(path, name, is_package):
            if target == name:
                continue
            private += [f"{path.relative_to(PACKAGE)}:{line} {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not private


def test_only_the_plugin_manager_reaches_the_builtins():
    """builtin/ holds plugins; everything else finds them through the hooks (the manager loads them by name)."""
    reaching = []
    for path, name, is_package in ALL:
        if name.startswith("minillm_cli.builtin"):
            continue
        for target, names, line in _imports(path, name, is_package):
            if any(m.startswith("minillm_cli.builtin") for m in _resolve(target, names) or [target]):
                reaching.append(f"{path.relative_to(PACKAGE)}:{line} {target}")
    assert not reaching


def test_module_imports_have_no_cycle():
    graph = {name: set() for name in NAMES}
    for path, name, is_package in ALL:
        for target, names, _ in _imports(path, name, is_package):
            for module in _resolve(target, names):
                if module != name and not name.startswith(module + "."):   # a package's own __init__ is not a cycle
                    graph[name].add(module)
    # A package __init__ that only documents itself imports nothing; importing a.b runs a/__init__ first, which is
    # not an edge of the code's own design.
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])
