"""Loading never runs code it was not asked to: weights through safetensors or torch.load(weights_only=True),
model code only with trust_remote_code, plugins only from installed entry points on the allow-list."""

from __future__ import annotations

import ast
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from conftest import run_cli
from minillm_cli.errors import MinillmError

PACKAGE = Path(__file__).resolve().parents[1] / "minillm_cli"


# --- torch.load / pickle audit -------------------------------------------------------------------------------------


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            yield (owner.id if isinstance(owner, ast.Name) else None), node.func.attr, node


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    loads, problems = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for owner, attr, node in _calls(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if owner == "torch" and attr == "load":
                loads += 1
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "dill", "cloudpickle", "joblib") and attr in ("load", "loads"):
                problems.append(f"{where}: {owner}.{attr}")
            if owner in ("yaml",) and attr in ("load", "load_all", "unsafe_load", "full_load"):
                loader = {k.arg: k.value for k in node.keywords}.get("Loader")
                if loader is None and len(node.args) < 2:
                    problems.append(f"{where}: yaml.{attr} without a safe Loader")
    assert problems == []
    assert loads >= 3                                   # the checkpoint's optimizer, scheduler and states


class _Boom:
    """Unpickling this runs code (writes a marker file): what weights_only must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    from minillm_cli.cli import main

    root = tmp_path_factory.mktemp("safe")
    model = tiny_models("llama", seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILLM_HOME", str(root / "home"))
        try:
            main(["distill", "--teacher", str(model), "--student", str(model), "--objective", "sft", "--no-progress",
                  "--output-dir", str(root / "run"), "train.steps=1", "train.batch_size=2", "eval.before_after=false",
                  "eval.rouge_examples=0", "data.limit=12", "data.max_prompt_tokens=512"])
        except SystemExit as exc:
            assert not exc.code
    return root / "run", model


@pytest.mark.parametrize("name", ["states.pt", "optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_holding_code_is_refused_and_the_code_never_runs(finished_run, tmp_path, capsys, monkeypatch, name):
    """Even with a manifest that matches (whoever planted the file could rewrite it), resuming refuses."""
    import torch

    from minillm_cli.training.checkpoint import write_manifest

    run, _ = finished_run
    output = tmp_path / "run"
    shutil.copytree(run, output)
    checkpoint = output / "checkpoints" / "step-000001"
    marker = tmp_path / "marker"
    torch.save({"payload": _Boom(marker)}, checkpoint / name)
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint)
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capsys, "distill", "--resume", output, "train.steps=2", "--no-progress")
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "cannot be loaded" in lines[-1] and "Traceback" not in err
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert not marker.exists()


# --- trust_remote_code ---------------------------------------------------------------------------------------------


@pytest.fixture
def custom_code_model(tiny_models, tmp_path, monkeypatch):
    """A tiny llama whose config.json points at Python files shipped beside it (auto_map); importing them leaves
    a marker file. transformers copies such code into its modules cache: a temporary one here."""
    import transformers.dynamic_module_utils as dynamic

    directory = tmp_path / "custom-model"
    shutil.copytree(tiny_models("llama", seed=1), directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="minillm-custom-tiny", architectures=["CustomForCausalLM"], auto_map={
        "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "marker"
    (directory / "configuration_custom.py").write_text(
        "from pathlib import Path\nfrom transformers import LlamaConfig\n"
        f"Path({str(marker)!r}).write_text('code ran')\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'minillm-custom-tiny'\n"
    )
    (directory / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_custom import CustomConfig\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield directory, marker
    for name in [n for n in sys.modules if n.startswith("transformers_modules")]:
        del sys.modules[name]


def test_model_code_runs_only_with_trust_remote_code(custom_code_model):
    from minillm_cli.models.load import ModelRef, load_model, load_tokenizer
    from minillm_cli.plugins import get_family

    directory, marker = custom_code_model
    ref = ModelRef("custom-model", get_family("llama"), str(directory))
    with pytest.raises(MinillmError) as info:
        load_model(ref)                                               # the default: off
    message = str(info.value)
    assert "\n" not in message and "trust_remote_code=true" in message and "auto_map" in message
    load_tokenizer(ref)                                               # the plain tokenizer needs no code
    assert not marker.exists()
    model = load_model(ref, trust_remote_code=True)                   # asked for: the shipped code runs
    assert type(model).__name__ == "CustomForCausalLM" and marker.exists()


def test_trust_remote_code_is_off_by_default_and_passed_through(tiny_models, tmp_path, capsys, monkeypatch):
    from minillm_cli.models import load as models
    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.config.recipes import load_config

    assert DistillConfig().trust_remote_code is False
    assert load_config(overrides=["trust_remote_code=true"])[0].trust_remote_code is True
    seen = []
    original_model, original_tokenizer = models.load_model, models.load_tokenizer

    def spy_model(ref, *args, **kwargs):
        seen.append(("model", kwargs.get("trust_remote_code")))
        return original_model(ref, *args, **kwargs)

    def spy_tokenizer(ref, *args, **kwargs):
        seen.append(("tokenizer", kwargs.get("trust_remote_code")))
        return original_tokenizer(ref, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", spy_model)
    monkeypatch.setattr(models, "load_tokenizer", spy_tokenizer)
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    teacher, student = tiny_models("llama", layers=3, seed=2), tiny_models("llama", seed=1)
    for flag, expected in (([], False), (["trust_remote_code=true"], True)):
        seen.clear()
        code, _, err = run_cli(capsys, "distill", "--teacher", teacher, "--student", student, "--objective", "kd",
                               "--no-progress", "--output-dir", tmp_path / f"run-{expected}", "train.steps=1",
                               "train.batch_size=2", "eval.before_after=false", "eval.rouge_examples=0",
                               "data.limit=12", "data.max_prompt_tokens=512", *flag)
        assert code == 0, err
        assert {kind for kind, _ in seen} == {"model", "tokenizer"} and len(seen) == 4   # teacher and student
        assert all(value is expected for _, value in seen), seen


def test_model_loading_never_prompts(monkeypatch, custom_code_model):
    """transformers' own default (None) asks on the terminal and waits; minillm always passes a decision."""
    import builtins

    from minillm_cli.models.load import ModelRef, load_model
    from minillm_cli.plugins import get_family

    def no_input(*args, **kwargs):
        raise AssertionError("a prompt was shown")

    monkeypatch.setattr(builtins, "input", no_input)
    directory, _ = custom_code_model
    with pytest.raises(MinillmError):
        load_model(ModelRef("custom-model", get_family("llama"), str(directory)))


# --- plugins ---------------------------------------------------------------------------------------------------------


def test_plugins_off_the_allow_list_are_never_imported(monkeypatch):
    """MINILLM_LOAD_PLUGINS="" loads only the builtins: a third-party entry point is not even imported (importing
    a module runs its code). Only entry points are ever loaded; there is no path or module-name variable."""
    from minillm_cli import plugins

    imported = []

    def entry(name, dist):
        return types.SimpleNamespace(name=name, value=f"{name}_module", dist=types.SimpleNamespace(name=dist, version="1"),
                                     load=lambda: imported.append(name) or types.SimpleNamespace())

    found = [entry("alpha", "minillm-alpha"), entry("beta", "minillm-beta")]
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: found if group == "minillm" else [])
    registered = []
    monkeypatch.setattr(plugins.pm, "register", lambda plugin, name: registered.append(name))
    monkeypatch.setattr(plugins.pm, "get_plugin", lambda name: None)
    for allow, expected in (("", []), ("  ", []), ("minillm-beta", ["beta"]), (None, ["alpha", "beta"])):
        imported.clear()
        registered.clear()
        plugins._load_entry_points(allow)
        assert imported == expected and registered == expected, allow
