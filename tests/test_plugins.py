import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from minillm_cli import MinillmError, ModelFamily, hookimpl
from minillm_cli import plugins

REPO = Path(__file__).resolve().parents[1]


def test_builtins_are_plugins_with_their_hooks():
    rows = {row["name"]: row for row in plugins.describe_plugins()}
    assert rows["minillm_cli.builtin.families"]["hooks"] == ["register_model_families"]
    assert rows["minillm_cli.builtin.commands"]["hooks"] == ["register_commands"]
    assert set(plugins.model_families()) >= {"gpt2", "opt", "llama", "mistral", "qwen2", "gemma", "smollm2"}


def test_registered_test_plugin_appears_and_leaves(register_plugin):
    class ToyObjective:
        name = "toy"

    plugin = types.ModuleType("test_plugin")

    @hookimpl
    def register_model_families(register):
        register(ModelFamily(name="toyfam", model_types=("toy",), aliases={"toy-1m": "org/toy-1m"}))

    @hookimpl
    def register_objectives(register):
        register(ToyObjective)

    class ToySuite:
        name = "toysuite"

    @hookimpl
    def register_evaluators(register):
        register(ToySuite)

    plugin.register_model_families = register_model_families
    plugin.register_objectives = register_objectives
    plugin.register_evaluators = register_evaluators
    register_plugin(plugin, "toy-plugin")
    assert plugins.get_family("toyfam").aliases == {"toy-1m": "org/toy-1m"}
    assert plugins.get_objective("toy") is ToyObjective
    assert plugins.get_evaluator("toysuite") is ToySuite
    row = next(r for r in plugins.describe_plugins() if r["name"] == "toy-plugin")
    assert row["hooks"] == ["register_evaluators", "register_model_families", "register_objectives"]


def test_plugins_unregistered_after_fixture():
    assert "toyfam" not in plugins.model_families()


def test_duplicate_registration_is_an_error(register_plugin):
    plugin = types.ModuleType("test_plugin")

    @hookimpl
    def register_model_families(register):
        register(ModelFamily(name="llama", model_types=("llama",)))

    plugin.register_model_families = register_model_families
    register_plugin(plugin, "dup")
    with pytest.raises(MinillmError, match="model family 'llama' is registered twice"):
        plugins.model_families()


def test_misspelt_hook_fails_loudly(register_plugin):
    plugin = types.ModuleType("test_plugin")

    @hookimpl
    def register_objective(register):  # missing the final "s"
        pass

    plugin.register_objective = register_objective
    register_plugin(plugin, "typo")
    with pytest.raises(MinillmError, match="register_objective.*known hooks: .*register_objectives"):
        plugins.validate()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(MinillmError) as info:
        plugins.get_family("lama")
    message = str(info.value)
    assert message.startswith("unknown model family 'lama'; known: gemma, gpt2, llama")
    assert "did you mean 'llama'?" in message
    with pytest.raises(MinillmError, match="unknown objective 'rkl2'; known: "):
        plugins.get_objective("rkl2")
    with pytest.raises(MinillmError, match="unknown evaluator 'dolly2'"):
        plugins.get_evaluator("dolly2")


def _fake_distribution(root: Path, body: str, version: str = "1.2.3") -> None:
    """An installed distribution 'minillm-hello' with a 'minillm' entry point, visible on sys.path=root."""
    (root / "minillm_hello.py").write_text(textwrap.dedent(body))
    info = root / f"minillm_hello-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: minillm-hello\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[minillm]\nhello = minillm_hello\n")


def _cli(args, root: Path, **env):
    full_env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}", **env}
    return subprocess.run(
        [sys.executable, "-m", "minillm_cli", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


HELLO_PLUGIN = """
    from minillm_cli import ModelFamily, hookimpl

    @hookimpl
    def register_model_families(register):
        register(ModelFamily(name="hello", model_types=("hello",), aliases={"hello-1m": "org/hello-1m"}))

    @hookimpl
    def register_commands(cli):
        @cli.command()
        def hello():
            "Say hello."
            print("hello from a plugin")
"""


def test_entry_point_plugin_is_loaded_listed_and_adds_a_command(tmp_path):
    _fake_distribution(tmp_path, HELLO_PLUGIN)
    result = _cli(["plugins", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    row = next(r for r in listing["plugins"] if r["name"] == "hello")
    assert row == {"name": "hello", "version": "1.2.3", "hooks": ["register_commands", "register_model_families"]}
    assert "hello" in listing["model_families"]
    assert _cli(["hello"], tmp_path).stdout.strip() == "hello from a plugin"
    table = _cli(["plugins"], tmp_path)
    assert "hello" in table.stdout and "1.2.3" in table.stdout


def test_allow_list_environment_variable(tmp_path):
    _fake_distribution(tmp_path, HELLO_PLUGIN)
    names = lambda r: {p["name"] for p in json.loads(r.stdout)["plugins"]}  # noqa: E731
    assert "hello" not in names(_cli(["plugins", "--json"], tmp_path, MINILLM_LOAD_PLUGINS=""))
    assert "hello" in names(_cli(["plugins", "--json"], tmp_path, MINILLM_LOAD_PLUGINS="minillm-hello"))
    unknown = _cli(["plugins", "--json"], tmp_path, MINILLM_LOAD_PLUGINS="other")   # a typo is not silence
    assert unknown.returncode == 2 and "MINILLM_LOAD_PLUGINS names 'other'" in unknown.stderr
    assert "minillm-hello" in unknown.stderr and "Traceback" not in unknown.stderr


def test_tracing_switch_prints_hook_calls(tmp_path):
    result = _cli(["plugins", "--json"], tmp_path, MINILLM_TRACE_PLUGINS="1")
    assert result.returncode == 0
    assert "register_model_families" in result.stderr


def test_broken_plugin_is_one_line_error(tmp_path):
    _fake_distribution(tmp_path, "raise ImportError('needs frobnicate')\n")
    result = _cli(["plugins"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "plugin 'hello'" in lines[0] and "needs frobnicate" in lines[0] and "MINILLM_LOAD_PLUGINS" in lines[0]


def test_help_does_not_import_torch(tmp_path):
    code = (
        "import sys; from minillm_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported at start-up'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "convert" in result.stdout and "plugins" in result.stdout


def test_every_hook_is_documented_and_tested():
    """A hook without a docstring, a README entry or a test here is a hook nobody can rely on."""
    from minillm_cli import hookspecs

    readme = (REPO / "README.md").read_text()
    this_file = Path(__file__).read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks == ["register_commands", "register_evaluators", "register_model_families", "register_objectives"]
    for name in hooks:
        assert getattr(hookspecs, name).__doc__.strip(), f"hook {name} has no docstring"
        assert f"`{name}(" in readme, f"hook {name} is not documented in README.md"
        assert this_file.count(name) >= 2, f"hook {name} is not exercised by a test"


def test_show_describes_an_objective_with_its_options(capsys):
    from conftest import run_cli

    code, out, err = run_cli(capsys, "plugins", "--show", "minillm", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "objective" and "reverse KL" in info["help"]
    options = {row["name"]: row for row in info["options"]}
    assert options["alpha"]["default"] == 0.2 and options["alpha"]["help"]
    assert {"ppo_epochs", "single_step", "length_norm", "lm_weight", "variant"} <= set(options)


@pytest.mark.parametrize("name", ["sft", "kd", "gkd", "minillm", "llama"])
def test_show_table_for_builtins(capsys, name):
    from conftest import run_cli

    code, out, err = run_cli(capsys, "plugins", "--show", name)
    assert code == 0, err
    assert name in out


def test_show_unknown_name_suggests(capsys):
    from conftest import run_cli

    code, out, err = run_cli(capsys, "plugins", "--show", "minilm")
    assert code != 0
    assert "did you mean 'minillm'" in err and len(err.strip().splitlines()) == 1
