"""Recipes: loading, precedence, validation (every problem at once, with locations), dumping, the CLI."""

import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from minillm_cli import MinillmError, hookimpl, plugins
from minillm_cli.cli import recipes_cmd
from minillm_cli.config.schema import DistillConfig
from minillm_cli.objective import NoOptions, Objective, option
from minillm_cli.config.library import RECIPES_DIR, copy_recipe, list_recipes, recipe_path
from minillm_cli.config.recipes import config_to_dict, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
BUILTIN_OBJECTIVES = "minillm_cli.builtin.objectives"

# --- fake objectives: the option names the shipped recipes use ------------------------------------------------


def _unit(name, value):
    return [] if 0 <= value <= 1 else [f"{name} must be in [0, 1], got {value}"]


@dataclass
class KDOptions:
    ratio: float = option(0.5, "KD weight.")

    def validate(self):
        return _unit("ratio", self.ratio)


@dataclass
class CEOptions:
    ce_weight: float = option(0.0, "Cross-entropy weight.")


@dataclass
class GKDOptions:
    beta: float = option(0.5, "JSD beta.")
    lmbda: float = option(0.5, "On-policy fraction.")
    seq_kd: bool = option(False, "Teacher samples off-policy.")

    def validate(self):
        return _unit("beta", self.beta) + _unit("lmbda", self.lmbda)


@dataclass
class DistiLLMOptions:
    loss_type: str = option("srkl", "srkl or skl.")
    alpha: float = option(0.1, "Skew.")
    replay_capacity: int = option(1000, "Replay buffer.")


def _objective(name, options=NoOptions):
    return type(f"Fake_{name}", (Objective,), {"name": name, "help": f"fake {name}", "Options": options})


FAKES = [
    _objective("sft"),
    _objective("kd", KDOptions),
    _objective("seqkd", KDOptions),
    _objective("rkl", CEOptions),
    _objective("tvd", CEOptions),
    _objective("gkd", GKDOptions),
    _objective("distillm", DistiLLMOptions),
]
KNOWN = "distillm, gkd, kd, rkl, seqkd, sft, tvd"


@pytest.fixture
def fake_objectives(register_plugin):
    """Exactly the fake objectives above, whatever the builtin ones are (they are put back afterwards)."""
    plugins.load_plugins()              # first, or loading later would bring the builtins back
    builtin = plugins.pm.get_plugin(BUILTIN_OBJECTIVES)
    if builtin is not None:
        plugins.pm.unregister(builtin)

    @hookimpl
    def register_objectives(register):
        for objective in FAKES:
            register(objective)

    register_plugin(types.SimpleNamespace(register_objectives=register_objectives), "fake-objectives")
    yield {o.name: o for o in FAKES}
    if builtin is not None:
        plugins.pm.register(builtin, name=BUILTIN_OBJECTIVES)


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(**kwargs) -> str:
    with pytest.raises(MinillmError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading and precedence --------------------------------------------------------------------------------------


def test_defaults_are_the_schema(fake_objectives):
    config, options = load_config()
    expected = DistillConfig()
    assert config.teacher == expected.teacher and config.student is None
    assert config.train.steps is None and config.train.lr == 5e-4 and config.train.betas == [0.9, 0.95]
    assert config.data == expected.data and config.eval == expected.eval
    assert config.objective == {"name": "kd", "ratio": 0.5}
    assert options == KDOptions()


def test_precedence_defaults_recipe_options_overrides(tmp_path, fake_objectives):
    recipe = write(tmp_path, """
        teacher: recipe-teacher
        student: recipe-student
        objective: {name: kd, ratio: 0.7}
        train:
          steps: 50
          lr: 1.0e-3
          batch_size: 4
    """)
    config, options = load_config(
        recipe,
        overrides=["train.lr=1e-4", "objective.ratio=0.3", "train.betas=[0.9,0.99]", "student=null"],
        options={"teacher": "gpt2-xl", "train.steps": 10, "train.lr": 2e-3, "data.limit": None, "output_dir": tmp_path},
    )
    assert config.teacher == "gpt2-xl"                  # option over recipe
    assert config.train.steps == 10                     # option over recipe
    assert config.train.lr == 1e-4                      # override over option over recipe
    assert config.train.batch_size == 4                 # recipe over default
    assert config.train.grad_accum == 1                 # default
    assert config.train.betas == [0.9, 0.99]
    assert config.student is None                       # override null over recipe
    assert config.data.limit is None                    # None options are ignored
    assert config.output_dir == str(tmp_path)           # paths from flags become strings
    assert options == KDOptions(ratio=0.3) and config.objective == {"name": "kd", "ratio": 0.3}


def test_changing_the_objective_drops_the_previous_objectives_options(tmp_path, fake_objectives):
    recipe = write(tmp_path, "objective: {name: kd, ratio: 0.7}\n")
    config, options = load_config(recipe, options={"objective": "sft"})
    assert config.objective == {"name": "sft"} and options == NoOptions()
    config, options = load_config(recipe, overrides=["objective.name=gkd", "objective.beta=0.9"])
    assert options == GKDOptions(beta=0.9)
    # the same name keeps the recipe's options
    assert load_config(recipe, overrides=["objective.name=kd"])[1] == KDOptions(ratio=0.7)


def test_numbers_are_read_as_numbers(tmp_path, fake_objectives):
    recipe = write(tmp_path, "train:\n  lr: 1e-4\n  steps: 1e3\n  epochs: 2\n")
    config, _ = load_config(recipe)
    assert config.train.lr == 1e-4                     # YAML 1.1 would read '1e-4' as a string
    assert config.train.steps == 1000 and isinstance(config.train.steps, int)
    assert config.train.epochs == 2.0 and isinstance(config.train.epochs, float)


# --- shipped recipes ---------------------------------------------------------------------------------------------

SHIPPED = [row[0] for row in list_recipes()]
BASELINES = {"KD": "kd", "SFT": "sft", "RKL": "rkl", "GKD": "gkd", "DistiLLM": "distillm", "TVD": "tvd", "SeqKD": "seqkd"}
OBJECTIVE_OF = {**BASELINES, "MiniLLM": "minillm", "heal": "text_kd"}
# The laptop-scale baseline recipes; the paper's recipes are checked in test_paper_recipes.py.
BASELINE_RECIPES = sorted({f"smollm2/135M_to_6L_{suffix}" for suffix in BASELINES} | {"gpt2/xl_to_base_KD"})


def test_the_shipped_recipes_are_there():
    assert RECIPES_DIR == REPO / "recipes"
    assert set(BASELINE_RECIPES) <= set(SHIPPED)


@pytest.mark.parametrize("name", BASELINE_RECIPES)
def test_every_shipped_recipe_loads(name, fake_objectives):
    command, description = next((c, d) for n, c, d in list_recipes() if n == name)
    assert command == f"minillm distill --recipe {name}"
    assert description
    config, options = load_config(name)
    assert config.objective["name"] == OBJECTIVE_OF[name.rsplit("_", 1)[1]]
    assert isinstance(options, fake_objectives[config.objective["name"]].Options)
    assert config.output_dir.endswith(name.split("/")[1]) or name.startswith("gpt2")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_with_the_registered_objectives(name):
    """Against the real objectives, once they are registered: the recipes' option names must be theirs."""
    objective = OBJECTIVE_OF[name.rsplit("/", 1)[1].rsplit("_", 1)[-1]]   # 135M_to_6L_KD, dolly/KD, dolly/teacher_SFT
    if objective not in plugins.objectives():
        pytest.skip(f"objective '{objective}' is not registered")
    config, options = load_config(name)
    assert config.objective["name"] == objective
    assert isinstance(options, plugins.get_objective(objective).Options)


def test_the_kd_recipe_is_the_embedded_default_made_explicit(fake_objectives):
    config, options = load_config("smollm2/135M_to_6L_KD")
    assert (config.teacher, config.student, config.student_layers) == ("smollm2-135m-instruct", None, 6)
    assert options == KDOptions(ratio=0.5) and config.data.train == "default"
    t = config.train
    assert (t.steps, t.batch_size, t.lr, t.schedule, t.warmup_steps) == (120, 8, 5e-4, "cosine", 10)
    assert (config.eval.every, config.checkpoint.every) == (40, 60)
    assert config.output_dir == "runs/smollm2-135M_to_6L_KD"
    assert load_config("smollm2/135M_to_6L_KD.yaml")[0] == config
    assert load_config(recipe_path("smollm2/135M_to_6L_KD"))[0] == config
    gkd = load_config("smollm2/135M_to_6L_GKD")[1]
    assert (gkd.beta, gkd.lmbda) == (0.5, 0.5)
    distillm = load_config("smollm2/135M_to_6L_DistiLLM")[1]
    assert (distillm.loss_type, distillm.alpha) == ("srkl", 0.1)


def test_the_gpt2_recipe_is_the_papers_setting(fake_objectives):
    config, options = load_config("gpt2/xl_to_base_KD")
    assert (config.teacher, config.student) == ("gpt2-xl", "gpt2-base")
    assert config.data.train == "data/dolly" and config.data.prompt_format == "alpaca"
    assert (config.train.lr, config.train.epochs, config.train.steps, config.train.min_lr) == (5e-4, 20, None, 1e-7)
    assert options.ratio == 0.5


def test_unknown_recipe_names_list_the_shipped_ones():
    message = problems(recipe="smollm2/135M_to_6L_K")
    assert "neither a file nor a shipped recipe" in message
    assert "gpt2/xl_to_base_KD" in message and "did you mean 'smollm2/135M_to_6L_KD'?" in message
    with pytest.raises(MinillmError, match=r"unknown recipe 'nope'; known: .*gpt2/xl_to_base_KD, .*smollm2/"):
        recipe_path("nope")
    with pytest.raises(MinillmError, match="unknown recipe"):
        recipe_path("../pyproject.toml")


# --- validation: every problem at once, located ---------------------------------------------------------------


def test_all_problems_at_once_with_line_numbers(tmp_path, fake_objectives):
    recipe = write(tmp_path, """
        teacher: smollm2-135m-instruct
        train:
          lr: fast
          batch_size: 8
          learning_rate: 1.0e-4
        objective:
          name: kd
          ratio: 2
    """)
    message = problems(recipe=recipe)
    assert message.startswith(f"3 problems in {recipe}: ")
    assert f"{recipe}:3: train.lr: expected a number, got 'fast'" in message
    assert f"{recipe}:5: unknown key 'train.learning_rate' (did you mean 'train.lr'?); known keys in train: steps" in message
    assert f"{recipe}:8: objective 'kd': ratio must be in [0, 1], got 2.0" in message
    # in the file's order
    assert message.index(":3:") < message.index(":5:") < message.index(":8:")


def test_problems_in_file_and_command_line_together(tmp_path, fake_objectives):
    recipe = write(tmp_path, "train:\n  steps: 0\n")
    message = problems(recipe=recipe, overrides=["eval.select_by=rouge"])
    assert message.startswith(f"2 problems in {recipe} and the command line: ")
    assert f"{recipe}:2: train.steps: must be > 0, got 0" in message
    assert "override 'eval.select_by=rouge': expected one of rougeL, loss, got 'rouge' (did you mean 'rougeL'?)" in message


def test_unknown_keys_suggest_the_right_one(tmp_path, fake_objectives):
    recipe = write(tmp_path, "teacher: x\nlr: 1.0e-4\ngeneraton:\n  top_p: 0.9\ntrain:\n  max_steps: 3\n")
    message = problems(recipe=recipe)
    assert message.startswith(f"3 problems in {recipe}: ")
    assert f"{recipe}:2: unknown key 'lr' (did you mean 'train.lr'?); known keys at the top level: teacher," in message
    assert f"{recipe}:3: unknown key 'generaton' (did you mean 'generation'?)" in message
    assert f"{recipe}:6: unknown key 'train.max_steps' (did you mean 'train.steps'?)" in message


def test_unknown_objective_lists_the_known_ones(tmp_path, fake_objectives):
    message = problems(overrides=["objective.name=kdd"])
    assert message == (
        f"1 problem in the command line: override 'objective.name=kdd': unknown objective 'kdd'; known: {KNOWN} "
        "(did you mean 'kd'?)"
    )
    recipe = write(tmp_path, "objective:\n  name: minillm\n")
    assert f"{recipe}:2: objective.name: unknown objective 'minillm'; known: {KNOWN}" in problems(recipe=recipe)


def test_bad_objective_options(tmp_path, fake_objectives):
    message = problems(overrides=["objective.ratoi=0.3", "objective.ratio=high"])
    assert "override 'objective.ratoi=0.3': unknown option 'objective.ratoi' (did you mean 'objective.ratio'?); " \
           "known options of objective 'kd': ratio" in message
    assert "override 'objective.ratio=high': expected a number, got 'high'" in message
    recipe = write(tmp_path, "objective:\n  name: gkd\n  beta: 1.5\n  lmbda: -1\n  seq_kd: maybe\n")
    message = problems(recipe=recipe)
    assert message.startswith(f"3 problems in {recipe}: ")
    assert f"{recipe}:3: objective 'gkd': beta must be in [0, 1], got 1.5" in message
    assert f"{recipe}:4: objective 'gkd': lmbda must be in [0, 1], got -1.0" in message
    assert f"{recipe}:5: objective.seq_kd: expected true or false, got 'maybe'" in message
    assert "known options of objective 'sft': (none)" in problems(overrides=["objective=sft", "objective.ratio=1"])


def test_override_parsing_errors(fake_objectives):
    message = problems(overrides=["train.lr", "train.lrr=1", "=3", "train.lr=[1", "train..lr=1"])
    assert message.startswith("5 problems in the command line: ")
    assert "override 'train.lr': expected key=value, e.g. train.lr=1e-4" in message
    assert "override 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)" in message
    assert "override '=3': bad key ''" in message
    assert "override 'train.lr=[1': cannot parse the value as YAML" in message
    assert "override 'train..lr=1': bad key 'train..lr'" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.steps=1.5", "expected an integer or null, got 1.5"),
        ("train.batch_size=0", "must be > 0, got 0"),
        ("train.grad_accum=-1", "must be > 0, got -1"),
        ("trim_vocab=maybe", "expected true or false, got 'maybe'"),
        ("train.lr=true", "expected a number, got true"),
        ("generation.top_p=0", "must be in (0, 1], got 0"),
        ("generation.top_p=1.5", "must be in (0, 1], got 1.5"),
        ("train.precision=fp8", "expected one of fp32, bf16, fp16, got 'fp8'"),
        ("train.teacher_dtype=bf32", "expected one of fp32, bf16, fp16, got 'bf32'"),
        ("train.schedule=cosin", "expected one of constant, constant_with_warmup, linear, cosine, got 'cosin' (did you mean 'cosine'?)"),
        ("data.prompt_format=chatml", "expected one of alpaca, chat or null, got 'chatml' (did you mean 'chat'?)"),
        ("teacher=null", "expected a string, got null"),
        ("student=[a]", "expected a string or null, got ['a']"),
        ("train.betas=0.9", "expected a list, got 0.9"),
        ("train.betas=[0.9, 1.5]", "must be two numbers in [0, 1)"),
        ("train=fast", "expected a mapping of train keys (steps, epochs,"),
        ("objective=[kd]", "expected a mapping such as {name: kd, ratio: 0.5} or an objective name"),
    ],
)
def test_type_and_value_errors(override, expected, fake_objectives):
    message = problems(overrides=[override])
    assert message.startswith(f"1 problem in the command line: override '{override}': {expected}")


def test_option_errors_name_the_option(fake_objectives):
    assert problems(options={"train.steps": "ten"}) == (
        "1 problem in the command line: option 'train.steps': expected an integer or null, got 'ten'"
    )


def test_valid_values_pass(fake_objectives):
    config, _ = load_config(overrides=[
        "train.schedule=constant_with_warmup", "train.precision=bf16", "data.prompt_format=alpaca",
        "data.prompt_format=null", "generation.top_p=1", "eval.select_by=loss", "train.lr=1", "train.steps=null",
    ])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.data.prompt_format is None and config.eval.select_by == "loss"


def test_invalid_yaml_is_one_line_with_its_line(tmp_path, fake_objectives):
    recipe = write(tmp_path, "teacher: x\ntrain:\n  lr: [1e-4\n  steps: 3\n")
    message = problems(recipe=recipe)
    assert message.startswith(f"{recipe}:") and "invalid YAML" in message
    line = int(message[len(str(recipe)) + 1:].split(":")[0])
    assert line in (3, 4, 5)
    recipe = write(tmp_path, "teacher: x\n  student: y\n", name="indent.yaml")
    assert problems(recipe=recipe).startswith(f"{recipe}:2: invalid YAML")


def test_top_level_must_be_a_mapping(tmp_path, fake_objectives):
    recipe = write(tmp_path, "- teacher\n- student\n")
    assert problems(recipe=recipe).startswith(f"{recipe}:1: a recipe must be a mapping of keys")
    empty = write(tmp_path, "# nothing but a comment\n", name="empty.yaml")
    assert load_config(empty)[0] == load_config()[0]


def test_duplicate_keys_are_reported(tmp_path, fake_objectives):
    recipe = write(tmp_path, "train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")
    assert f"{recipe}:3: duplicate key 'train.lr'" in problems(recipe=recipe)


def test_merge_keys_are_not_duplicates(tmp_path, fake_objectives):
    recipe = write(tmp_path, "train:\n  <<: {lr: 1.0e-4, steps: 5}\n  lr: 2.0e-4\n", name="merge.yaml")
    config, _ = load_config(recipe)
    assert (config.train.lr, config.train.steps) == (2e-4, 5)


# --- dumping ------------------------------------------------------------------------------------------------------


def test_dump_and_load_round_trip(tmp_path, fake_objectives):
    config, options = load_config(
        "smollm2/135M_to_6L_GKD",
        overrides=["teacher='1e5'", "train.lr=3e-5", "data.fields=instruction=q,output=a", "train.betas=[0.8,0.9]"],
    )
    text = dump_config(config, options, header="minillm distill --recipe config.yaml")
    assert text.startswith("# minillm distill --recipe config.yaml\nteacher: '1e5'\n")
    data = config_to_dict(config, options)
    assert list(data) == [f for f in DistillConfig.__dataclass_fields__]
    assert data["objective"] == {"name": "gkd", "beta": 0.5, "lmbda": 0.5, "seq_kd": False}
    assert "betas: [0.8, 0.9]" in text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    again, again_options = load_config(path)
    assert again == config and again_options == options
    default, default_options = load_config()
    path.write_text(dump_config(default, default_options))
    assert load_config(path) == (default, default_options)


# --- the CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    root = typer.Typer()

    @root.callback()
    def main():
        pass

    root.add_typer(recipes_cmd.app, name="recipes")
    runner = CliRunner()
    return lambda *args: runner.invoke(root, ["recipes", *args], env={"COLUMNS": "200"})


def test_cli_list_and_show(cli):
    result = cli("list")
    assert result.exit_code == 0, result.output
    for name, command, _ in list_recipes():
        assert name in result.output and command in result.output
    result = cli("show", "smollm2/135M_to_6L_KD")
    assert result.exit_code == 0
    assert result.output == recipe_path("smollm2/135M_to_6L_KD").read_text()
    result = cli("show", "smollm2/nope")
    assert isinstance(result.exception, MinillmError) and "unknown recipe 'smollm2/nope'" in str(result.exception)


def test_cli_copy_refuses_to_overwrite_without_force(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("copy", "smollm2/135M_to_6L_KD")
    assert result.exit_code == 0, result.output
    copied = tmp_path / "135M_to_6L_KD.yaml"
    assert copied.read_text() == recipe_path("smollm2/135M_to_6L_KD").read_text()
    copied.write_text("# edited\n")
    result = cli("copy", "smollm2/135M_to_6L_KD")
    assert isinstance(result.exception, MinillmError) and "--force" in str(result.exception)
    assert copied.read_text() == "# edited\n"
    assert cli("copy", "smollm2/135M_to_6L_KD", "--force").exit_code == 0
    assert copied.read_text() != "# edited\n"
    result = cli("copy", "gpt2/xl_to_base_KD", str(tmp_path / "mine" / "kd.yaml"))
    assert result.exit_code == 0 and (tmp_path / "mine" / "kd.yaml").is_file()
    (tmp_path / "dir").mkdir()
    assert copy_recipe("smollm2/135M_to_6L_SFT", tmp_path / "dir") == tmp_path / "dir" / "135M_to_6L_SFT.yaml"


def test_importing_recipes_does_not_import_torch():
    code = (
        "import sys, minillm_cli.config.recipes; from minillm_cli.config import library as recipes; from minillm_cli.cli import recipes_cmd\n"
        "recipes.list_recipes()\n"
        "assert 'torch' not in sys.modules and 'yaml' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
