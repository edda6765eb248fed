"""The shipped recipes: every one loads and validates, names itself in its header, and every MiniLLM recipe
starts from the exported best checkpoint of its SFT-initialisation recipe (docs/method.md §2)."""

from __future__ import annotations

import pytest

from minillm_cli.config.library import RECIPES_DIR, list_recipes
from minillm_cli.config.recipes import load_config

NAMES = [name for name, _, _ in list_recipes()]
MINILLM = [name for name in NAMES if name.endswith("_MiniLLM")]

PAPER_RECIPES = [
    f"{prefix}_{stage}"
    for prefix in ("gpt2/xl_to_base", "gpt2/xl_to_medium", "gpt2/xl_to_large", "opt/13b_to_1.3b",
                   "opt/13b_to_2.7b", "opt/13b_to_6.7b", "llama/13b_to_7b", "qwen2/2.5-1.5b_to_0.5b")
    for stage in ("SFT", "MiniLLM")
] + ["smollm2/135M_to_6L_MiniLLM"]


def _config(name):
    config = load_config(name)
    return config[0] if isinstance(config, tuple) else config


def test_paper_recipes_are_shipped():
    missing = [name for name in PAPER_RECIPES if name not in NAMES]
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads(name):
    config = _config(name)
    assert config.output_dir


@pytest.mark.parametrize("name", NAMES)
def test_first_line_runs_itself(name):
    first = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# minillm distill --recipe {name}"


@pytest.mark.parametrize("name", MINILLM)
def test_minillm_student_is_sft_best(name):
    config = _config(name)
    sft = _config(name.removesuffix("_MiniLLM") + "_SFT")
    assert sft.objective["name"] == "sft"
    assert config.objective["name"] == "minillm"
    assert config.student == sft.output_dir + "/best"


@pytest.mark.parametrize("name", [n for n in MINILLM if not n.startswith("smollm2/")])
def test_minillm_paper_hyperparameters(name):
    config = _config(name)
    t, o = config.train, config.objective
    assert t.batch_size * t.grad_accum == 64 and t.grad_accum == 1
    assert (t.lr, t.warmup_steps, t.weight_decay, t.eps, t.max_grad_norm) == (5e-6, 100, 1e-6, 1e-8, 1.0)
    assert list(t.betas) == [0.9, 0.95]
    assert t.schedule == ("cosine" if name.startswith("llama/") else "constant_with_warmup")
    assert (o["alpha"], o["clip_eps"], o["ppo_epochs"], o["reward_scale"], o["reward_clip"]) == (0.2, 0.2, 4, 0.5, 100.0)
    g = config.generation
    assert (g.top_k, g.top_p, g.temperature, g.max_new_tokens) == (0, 1.0, 1.0, 256)
    assert config.data.max_prompt_tokens == 256
    assert (config.eval.every, config.eval.select_by, config.checkpoint.every) == (100, "rougeL", 500)


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("_SFT") and not n.startswith("smollm2/")])
def test_sft_init_selects_by_loss(name):
    config = _config(name)
    assert config.train.epochs == 3 and config.train.steps is None
    assert config.eval.select_by == "loss"
