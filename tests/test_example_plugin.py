"""The example third-party plugins under plugins/: each its own package, installed by pip, loaded through its
``minillm`` entry point only, listed by ``minillm plugins``, and passing its own tests.

The plugins' own tests (plugins/*/tests) run ``minillm distill --objective abdiv`` and ``minillm eval --suite
lengthstats`` on tiny models and load a tiny Phi-3 model through the phi3 family; here they run against the
pip-installed copies (the ``example_plugins`` fixture in conftest.py installs them once per session).
"""

import json
import re
import subprocess
import sys

import pytest
from conftest import EXAMPLE_PLUGINS, REPO

# distribution -> (entry point name, module, hooks it implements, what it registers: (registry, name))
EXPECTED = {
    "minillm-phi3": ("phi3", "minillm_phi3", ["register_model_families"], ("model_families", "phi3")),
    "minillm-abdiv": ("abdiv", "minillm_abdiv", ["register_objectives"], ("objectives", "abdiv")),
    "minillm-lengthstats": ("lengthstats", "minillm_lengthstats", ["register_evaluators"], ("evaluators", "lengthstats")),
}


def test_every_example_is_a_package_of_its_own_registered_through_the_entry_point_only():
    tomllib = pytest.importorskip("tomllib")     # Python ≥ 3.11
    names = set()
    for project in EXAMPLE_PLUGINS:
        meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        names.add(meta["name"])
        entry_point, module, _, _ = EXPECTED[meta["name"]]
        assert meta["entry-points"]["minillm"] == {entry_point: module}
        assert "minillm" in meta["dependencies"]
        assert (project / f"{module}.py").is_file() and (project / "README.md").is_file()
        assert list((project / "tests").glob("test_*.py")), f"{project.name} has no tests"
    assert names == set(EXPECTED)
    # minillm itself never names them: they come in through the entry-point group alone.
    source = "\n".join(p.read_text() for p in (REPO / "minillm_cli").rglob("*.py"))
    for _, module, _, _ in EXPECTED.values():
        assert module not in source


def test_installed_examples_are_listed_with_their_versions_and_hooks(example_plugins):
    script = (
        "from minillm_cli.cli import main\n"
        "for args in (['plugins', '--json'], ['plugins']):\n"
        "    try:\n        main(args)\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
        "    print('\\f')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=example_plugins.env,
                            cwd=example_plugins.site.parent, timeout=180)
    assert result.returncode == 0, result.stderr
    as_json, table, _ = result.stdout.split("\f")
    listing = json.loads(as_json)
    rows = {row["name"]: row for row in listing["plugins"]}
    for entry_point, _, hooks, (registry, name) in EXPECTED.values():
        assert rows[entry_point] == {"name": entry_point, "version": "0.1.0", "hooks": hooks}
        assert name in listing[registry]
        assert entry_point in table and name in table


def test_examples_pass_their_own_tests_when_installed(example_plugins):
    """Each example's tests/ run as its author would run them (``pytest`` with minillm's pytest plugin providing
    the fixtures), against the installed copy: a test that needs the installation skips without it, so none
    may skip here."""
    tests = [str(project / "tests") for project in example_plugins.projects]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--import-mode=importlib", *tests],
        capture_output=True, text=True, env=example_plugins.env, cwd=example_plugins.site.parent, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in summary and re.search(r"\d+ passed", summary), summary
