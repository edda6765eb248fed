"""Meta-tests: nothing a user can name goes undocumented.

Every builtin objective, model family and evaluator has help text, shows in `minillm plugins` and has its entry
in docs/; every hook has a docstring and is documented for plugin authors (tests/test_plugins.py checks that each
is exercised by a test); every fixture minillm ships to plugin authors is documented and used.
"""

import dataclasses
import json
import re

import pytest
from conftest import REPO, run_cli

from minillm_cli import hookspecs, plugins

DOCS = REPO / "docs"
BUILTIN_PREFIX = "minillm_cli."


def builtin(registry: dict, hook: str) -> dict:
    """The entries of a registry that the builtin plugins register (not a test's or an installed plugin's)."""
    found = {}
    for impl in getattr(plugins.pm.hook, hook).get_hookimpls():
        if impl.plugin_name.startswith(BUILTIN_PREFIX):
            impl.function(register=lambda item: found.__setitem__(item.name, item))
    assert set(found) <= set(registry)
    return found


@pytest.fixture(scope="module")
def listing():
    """`minillm plugins` (the table) and `minillm plugins --json` (module-scoped, so not through capsys)."""
    import contextlib
    import io

    from minillm_cli.cli import main

    outputs = {}
    for key, args in (("table", ["plugins"]), ("json", ["plugins", "--json"])):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code in (0, None)
        outputs[key] = buffer.getvalue()
    return outputs["table"], json.loads(outputs["json"])


OBJECTIVES = builtin(plugins.objectives(), "register_objectives")
EVALUATORS = builtin(plugins.evaluators(), "register_evaluators")
FAMILIES = builtin(plugins.model_families(), "register_model_families")


def test_the_builtins_are_all_here():
    assert set(OBJECTIVES) == {"sft", "kd", "seqkd", "rkl", "tvd", "gkd", "distillm", "minillm", "text_kd"}
    assert {"default", "dolly", "selfinst", "vicuna", "sinst", "uinst", "exposure", "calibration", "judge"} <= set(EVALUATORS)
    assert {"gpt2", "opt", "llama", "mistral", "qwen2", "gemma", "smollm2"} <= set(FAMILIES)


@pytest.mark.parametrize("kind,items", [("objective", OBJECTIVES), ("evaluator", EVALUATORS)])
def test_objectives_and_evaluators_have_help_and_every_option_too(kind, items):
    for name, cls in items.items():
        assert len(cls.help.strip()) >= 20, f"{kind} '{name}' has no help text"
        options = getattr(cls, "Options", None)
        assert options is not None and dataclasses.is_dataclass(options), f"{kind} '{name}': Options is not a dataclass"
        for f in dataclasses.fields(options):
            assert f.metadata.get("help", "").strip(), f"{kind} '{name}': option '{f.name}' has no help (use option())"


def test_families_have_a_description():
    for name, family in FAMILIES.items():
        assert family.description.strip(), f"model family '{name}' has no description"


def test_every_builtin_appears_in_minillm_plugins(listing):
    table, as_json = listing
    flat = " ".join(table.split())           # rich wraps long lines at the console width
    for registry, items in (("objectives", OBJECTIVES), ("evaluators", EVALUATORS), ("model_families", FAMILIES)):
        assert set(items) <= set(as_json[registry]), registry
        heading = registry.replace("_", " ") + ":"
        segment = re.split(r"(?:model families|objectives|evaluators):", flat.split(heading, 1)[1])[0]
        listed = set(re.split(r"[,\s]+", segment.strip()))
        assert set(items) <= listed, f"`minillm plugins` does not list {set(items) - listed} among {registry}"


@pytest.mark.parametrize("name", sorted(OBJECTIVES) + sorted(EVALUATORS) + sorted(FAMILIES))
def test_show_gives_the_help_text(name, capsys):
    code, out, err = run_cli(capsys, "plugins", "--show", name, "--json")
    assert code == 0, err
    assert json.loads(out)["help"].strip()


def test_every_builtin_is_in_the_docs():
    concepts = (DOCS / "concepts.md").read_text(encoding="utf-8")
    evaluation = (DOCS / "evaluation.md").read_text(encoding="utf-8")
    for name in OBJECTIVES:
        assert f"### `{name}`" in concepts, f"objective '{name}' has no section in docs/concepts.md"
    for name in FAMILIES:
        assert f"| `{name}` |" in concepts, f"model family '{name}' is not in the table of docs/concepts.md"
    for name in EVALUATORS:
        assert f"| `{name}` |" in evaluation, f"suite '{name}' is not in the table of docs/evaluation.md"


def test_every_hook_has_a_docstring_and_is_documented_for_plugin_authors():
    guide = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    hooks = sorted(name for name in dir(hookspecs) if name.startswith("register_"))
    assert hooks == plugins.known_hooks()
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"hook {name} has no docstring"
        assert f"`{name}(" in guide, f"hook {name} is not in the hook table of docs/writing-plugins.md"


def test_every_fixture_for_plugin_authors_is_documented_and_used():
    from minillm_cli import pytest_plugin

    fixtures = sorted(name for name in vars(pytest_plugin) if name.startswith("minillm_"))
    assert fixtures == ["minillm_home", "minillm_plugin", "minillm_run", "minillm_teacher_student",
                        "minillm_tiny_data", "minillm_tiny_models"]
    guide = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    tests = "\n".join(p.read_text(encoding="utf-8") for p in [*REPO.glob("tests/*.py"), *REPO.glob("plugins/*/tests/*.py")])
    for name in fixtures:
        assert f"``{name}``" in pytest_plugin.__doc__, f"fixture {name} is not described in the module docstring"
        assert f"`{name}`" in guide, f"fixture {name} is not in docs/writing-plugins.md"
        assert re.search(rf"\b{name}\b", tests), f"no test uses the fixture {name}"


def test_the_pytest_plugin_is_registered_as_an_entry_point():
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nminillm = "minillm_cli.pytest_plugin"' in text
