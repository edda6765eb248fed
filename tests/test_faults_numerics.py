"""Non-finite losses and gradients: the step is skipped (no update, gradients zeroed) and counted; too many in a
row stop the run with one line naming the step, the loss term and the last good checkpoint."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from conftest import run_cli
from minillm_cli.config.schema import DistillConfig
from minillm_cli.training.engine import Engine, EngineData
from minillm_cli.hookspecs import hookimpl
from minillm_cli.losses.head import lm_loss
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
from minillm_cli.training.numerics import NonFiniteStepsError, nonfinite_term
from minillm_cli.objective import LossOutput, Objective


class InfGrad(torch.autograd.Function):
    """Zero in the forward pass, an infinite gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


class Faulty(Objective):
    """Cross-entropy, poisoned at chosen steps: a NaN 'ce' term, or a finite loss with an infinite gradient."""

    name = "test-faulty"
    needs = frozenset({"gold"})
    nan_steps: frozenset = frozenset()
    inf_grad_steps: frozenset = frozenset()

    def loss(self, batch, ctx):
        value = lm_loss(ctx.student_forward(batch), batch.labels, batch.loss_mask, num_tokens=ctx.num_tokens)
        if ctx.step in self.nan_steps:
            value = value * float("nan")
        if ctx.step in self.inf_grad_steps:
            first = next(p for p in ctx.student.parameters() if p.requires_grad)
            value = value + InfGrad.apply(first.sum())
        return LossOutput(value, {"ce": float(value.detach())})


def faulty(nan=(), inf_grad=()):
    objective = Faulty()
    objective.nan_steps, objective.inf_grad_steps = frozenset(nan), frozenset(inf_grad)
    return objective


@pytest.fixture(scope="module")
def pair(tiny_models):
    ref = resolve_model(str(tiny_models("llama", seed=1)))
    return ref, load_tokenizer(ref)


def _engine(pair, tmp_path, objective, steps=4, every=0, **train):
    ref, tokenizer = pair
    config = DistillConfig(output_dir=str(tmp_path), device="cpu")
    config.train.batch_size, config.train.steps, config.train.lr, config.train.schedule = 4, steps, 1e-2, "constant"
    for key, value in train.items():
        setattr(config.train, key, value)
    config.eval.every, config.eval.rouge_examples, config.eval.before_after = 0, 0, False
    config.checkpoint.every = every
    g = torch.Generator().manual_seed(0)
    examples = [types.SimpleNamespace(prompt_ids=torch.randint(3, 300, (4,), generator=g).tolist(),
                                      response_ids=torch.randint(3, 300, (3,), generator=g).tolist() + [0], index=i)
                for i in range(16)]
    data = EngineData(train=examples, valid=examples[:4], valid_references=[["a"]] * 4)
    return Engine(config=config, objective=objective, student=load_model(ref, trainable=True), teacher=None,
                  tokenizer=tokenizer, data=data, vocab_width=384, output_dir=tmp_path, config_yaml="x: 1\n",
                  progress=False)


def _params(engine):
    return {k: v.detach().clone() for k, v in engine.unwrapped().state_dict().items()}


def _optimizer_moments(engine):
    return [s["exp_avg"].clone() for s in engine.optimizer.state_dict()["state"].values()]


@pytest.mark.parametrize("fault,clip,term", [
    ("nan", 1.0, "ce"),                           # the objective's own term is named, not just 'loss'
    ("inf_grad", 1.0, "gradient (grad_norm)"),    # finite loss, infinite gradient, seen by clipping
    ("inf_grad", 0.0, "gradient"),                # clipping off: the gradients are checked directly
])
def test_a_non_finite_step_is_skipped_zeroed_and_counted(pair, tmp_path, fault, clip, term):
    engine = _engine(pair, tmp_path, faulty(**{fault: [1]}), max_grad_norm=clip)
    engine.train_step()                                       # step 0: fine
    before, moments = _params(engine), _optimizer_moments(engine)
    schedule = engine.scheduler.scheduler.last_epoch
    record = engine.train_step()                              # step 1: poisoned
    assert engine.scheduler.scheduler.last_epoch == schedule, "the schedule waits, as DeepSpeed's does"
    after = _params(engine)
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not move the weights"
    assert all(torch.equal(a, b) for a, b in zip(moments, _optimizer_moments(engine))), "nor the optimizer"
    assert all(p.grad is None for p in engine.student.parameters()), "its gradients are zeroed"
    assert record["skipped_steps"] == 1 and engine.state.skipped_steps == 1
    assert engine.state.bad_steps_in_row == 1 and engine.state.last_bad_term == term
    assert engine.state.step == 2                             # the step (and its data) is spent
    record = engine.train_step()                              # step 2: fine again, and it trains
    assert math.isfinite(record["loss"]) and record["skipped_steps"] == 1
    assert engine.state.bad_steps_in_row == 0
    assert any(not torch.equal(after[k], v) for k, v in _params(engine).items())


def test_skipped_steps_are_a_metric_and_the_run_goes_on(pair, tmp_path):
    engine = _engine(pair, tmp_path, faulty(nan=[1, 3]), steps=5, max_bad_steps=2)
    result = engine.run()
    assert result.steps == 5 and not result.interrupted
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r.get("skipped_steps", 0) for r in train] == [0, 1, 1, 2, 2]
    assert [math.isfinite(r["loss"]) for r in train] == [True, False, True, False, True]
    assert engine.state.skipped_steps == 2


def test_too_many_bad_steps_in_a_row_stop_with_one_line(pair, tmp_path):
    engine = _engine(pair, tmp_path, faulty(nan=range(2, 100)), steps=10, every=1, max_bad_steps=3)
    with pytest.raises(NonFiniteStepsError) as info:
        engine.run()
    message = str(info.value)
    assert "\n" not in message
    assert "stopped at step 5" in message and "3 steps in a row" in message
    assert "non-finite ce" in message
    # Checkpoints of skipped steps hold the unchanged weights, so the newest is still good.
    assert "last good checkpoint" in message and "step-000004" in message
    assert "--resume" in message and "train.lr" in message and "max_bad_steps" in message
    assert engine.state.step == 5


def test_max_bad_steps_zero_never_stops(pair, tmp_path):
    engine = _engine(pair, tmp_path, faulty(nan=range(0, 100)), steps=4, max_bad_steps=0)
    before = _params(engine)
    with pytest.raises(NonFiniteStepsError, match="all 4 step"):   # it runs every step, then exports nothing
        engine.run()
    assert engine.state.step == 4 and engine.state.skipped_steps == 4
    assert all(torch.equal(before[k], v) for k, v in _params(engine).items())


def test_the_skip_decision_is_reduced_over_processes(pair, tmp_path, monkeypatch):
    """Another process's NaN skips this process's step too (DDP would otherwise let the ranks' weights drift)."""
    engine = _engine(pair, tmp_path, faulty())
    calls = []

    def reduce(tensor, reduction="sum"):
        calls.append((tuple(tensor.shape), reduction))
        if tensor.numel() == 1:
            return tensor + 1                 # a second process that saw a non-finite loss
        return tensor

    monkeypatch.setattr(engine.accelerator, "reduce", reduce)
    before = _params(engine)
    engine.train_step()
    assert ((1,), "sum") in calls
    assert engine.state.skipped_steps == 1 and engine.state.last_bad_term == "loss (on another process)"
    assert all(torch.equal(before[k], v) for k, v in _params(engine).items())


def test_nonfinite_term_names_the_objective_term_first():
    assert nonfinite_term({"loss": float("nan"), "fkl": float("inf"), "ce": 1.0}) == "fkl"
    assert nonfinite_term({"loss": float("nan"), "ce": 1.0}) == "loss"
    assert nonfinite_term({"loss": 1.0, "grad_norm": float("inf")}) == "gradient (grad_norm)"
    assert nonfinite_term({"loss": 1.0, "ce": 1.0, "grad_norm": 2.0}) is None


class NaNPlugin:
    class NaNFromStep2(Faulty):
        name = "test-nan"
        nan_steps = frozenset(range(2, 100))

    @hookimpl
    def register_objectives(self, register):
        register(self.NaNFromStep2)


def test_cli_stops_with_exit_2_and_one_line(tiny_models, tmp_path, capsys, register_plugin, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    register_plugin(NaNPlugin(), "test-nan-plugin")
    output = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "distill", "--teacher", tiny_models("llama", seed=1), "--student", tiny_models("llama", seed=1),
        "--objective", "test-nan", "--output-dir", output, "--no-progress", "train.steps=8", "train.batch_size=2",
        "checkpoint.every=1", "train.max_bad_steps=2", "eval.before_after=false", "eval.rouge_examples=0",
        "data.limit=20", "data.max_prompt_tokens=512",
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0]
    assert "stopped at step 4" in lines[0] and "non-finite ce" in lines[0] and "step-000003" in lines[0]
    assert not (output / "final").exists()                   # nothing exported from a broken run
