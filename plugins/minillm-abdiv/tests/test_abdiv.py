"""Tests of the abdiv objective: known answers, then a real `minillm distill` on tiny models.

They use the fixtures minillm ships to plugin authors (minillm_cli/pytest_plugin.py): no conftest.py needed.
"""

import importlib.metadata
import json

import minillm_abdiv
import pytest
import torch
from minillm_abdiv import ab_divergence

from minillm_cli.divergences import rows_divergence
from minillm_cli.pytest_plugin import TINY_DISTILL


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 11, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(5, 11, generator=generator, dtype=torch.float64) * 2
    return student, teacher


def test_zero_for_identical_distributions(logits):
    student, _ = logits
    for alpha, beta in [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.2, 0.7), (2.0, 1.0)]:
        assert torch.allclose(ab_divergence(student, student, alpha, beta), torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_positive_for_different_distributions(logits):
    for alpha, beta in [(0.5, 0.5), (0.2, 0.7), (1.0, 0.3)]:
        assert (ab_divergence(*logits, alpha, beta) > 0).all()


def test_limits_are_forward_and_reverse_kl(logits):
    student, teacher = logits
    assert torch.allclose(ab_divergence(student, teacher, 1.0, 0.0), rows_divergence("fkl", student, teacher))
    assert torch.allclose(ab_divergence(student, teacher, 0.0, 1.0), rows_divergence("rkl", student, teacher))
    # ... and the general formula approaches them continuously
    assert torch.allclose(ab_divergence(student, teacher, 1.0, 1e-6), rows_divergence("fkl", student, teacher), atol=1e-4)
    assert torch.allclose(ab_divergence(student, teacher, 1e-6, 1.0), rows_divergence("rkl", student, teacher), atol=1e-4)


def test_half_half_is_four_times_squared_hellinger(logits):
    student, teacher = logits
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = 2 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)
    assert torch.allclose(ab_divergence(student, teacher, 0.5, 0.5), expected)


def test_options_are_validated(minillm_run, minillm_plugin, minillm_teacher_student, tmp_path):
    minillm_plugin(minillm_abdiv)
    result = minillm_run("distill", "--teacher", minillm_teacher_student.teacher, "--objective", "abdiv",
                         "objective.alpha=0", "objective.beta=-1", "--output-dir", tmp_path / "run", "--print-config")
    assert result.exit_code == 2
    assert "beta must be >= 0" in result.stderr and "alpha + beta must be > 0" in result.stderr


def test_listed_with_help_and_options(minillm_run, minillm_plugin):
    minillm_plugin(minillm_abdiv)
    result = minillm_run("plugins", "--show", "abdiv", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "objective" and "forward KL" in info["help"]
    assert [row["name"] for row in info["options"]] == ["alpha", "beta", "ce_weight"]


def test_distill_with_abdiv_on_tiny_models(minillm_run, minillm_plugin, minillm_teacher_student, minillm_tiny_data,
                                           minillm_home, tmp_path):
    minillm_plugin(minillm_abdiv)
    teacher, student = minillm_teacher_student
    out = tmp_path / "run"
    result = minillm_run(
        "distill", "--teacher", teacher, "--student", student, "--objective", "abdiv", "--output-dir", out,
        "--no-progress", f"data.train={minillm_tiny_data}", "objective.alpha=0.2", "objective.beta=0.7",
        "objective.ce_weight=0.5", "train.chunk_tokens=3", *TINY_DISTILL,
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "final" / "config.json").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row for row in steps if "abdiv" in row]
    assert losses, steps
    for row in losses:
        assert row["abdiv"] > 0 and row["loss"] == pytest.approx(row["abdiv"] + 0.5 * row["ce"], rel=1e-4)


def test_chunking_changes_nothing(minillm_teacher_student):
    """The loss and its gradient are the same computed in chunks of 2 tokens or all at once."""
    from types import SimpleNamespace

    from minillm_cli.forward import Forward
    from minillm_cli.models import load_model, resolve_model

    teacher = load_model(resolve_model(str(minillm_teacher_student.teacher)))
    student = load_model(resolve_model(str(minillm_teacher_student.student)), trainable=True)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0]])
    batch = SimpleNamespace(loss_mask=mask, labels=ids)

    def forward(model):
        hidden = model.base_model(input_ids=ids).last_hidden_state
        return Forward(hidden, model.get_output_embeddings())

    results = []
    for chunk in (None, 2):
        student.zero_grad()
        ctx = SimpleNamespace(
            student_forward=lambda b: forward(student), teacher_forward=lambda b: Forward(*_no_grad(forward, teacher)),
            chunk_tokens=chunk, num_tokens=4,
        )
        output = minillm_abdiv.ABDiv(minillm_abdiv.ABDivOptions(alpha=0.3, beta=0.6)).loss(batch, ctx)
        output.loss.backward()
        results.append((output.loss.detach(), student.get_output_embeddings().weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def _no_grad(function, model):
    with torch.no_grad():
        out = function(model)
    return out.hidden, out.head


def test_installed_through_the_minillm_entry_point():
    found = importlib.metadata.entry_points(group="minillm", name="abdiv")
    if not found:
        pytest.skip("not installed: pip install -e plugins/minillm-abdiv")
    assert next(iter(found)).load() is minillm_abdiv
