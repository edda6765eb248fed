"""``eval.suites``: evaluator plugins at the engine's periodic validation, beside its own numbers."""

import json
import types

import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.config.schema import DistillConfig
from minillm_cli.evaluation.validation import SuiteValidation
from minillm_cli.training.engine import Engine, EngineData
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
from minillm_cli.objective import Objective


class CEObjective(Objective):
    name = "test-ce"

    def loss(self, batch, ctx):  # pragma: no cover - validation only
        raise AssertionError("not trained here")


def _example(prompt, response, index):
    return types.SimpleNamespace(prompt_ids=prompt, response_ids=response, index=index)


@pytest.fixture(scope="module")
def dirs(tiny_models):
    return tiny_models("llama", seed=1), tiny_models("llama", layers=3, seed=2)


def _engine(dirs, tmp_path, **eval_options):
    student_dir, teacher_dir = dirs
    tokenizer = load_tokenizer(resolve_model(str(student_dir)))
    config = DistillConfig(output_dir=str(tmp_path), device="cpu", teacher=str(teacher_dir), student=str(student_dir))
    config.train.batch_size = 4
    config.eval.rouge_examples, config.eval.max_new_tokens, config.eval.before_after = 2, 4, False
    for key, value in eval_options.items():
        setattr(config.eval, key, value)
    examples = [_example([5 + i, 6, 7], [20 + i, 21, tokenizer.eos_token_id], i) for i in range(8)]
    data = EngineData(train=examples, valid=examples[:4], valid_references=[["a b c"]] * 4)
    family = resolve_model(str(student_dir)).family
    suites = SuiteValidation(config, tokenizer=tokenizer, prompt_format=family.prompt_format, add_bos=family.add_bos,
                             vocab_width=384) if config.eval.suites else None
    return Engine(
        config=config, objective=CEObjective(), student=load_model(resolve_model(str(student_dir)), trainable=True),
        teacher=load_model(resolve_model(str(teacher_dir))), tokenizer=tokenizer, data=data, vocab_width=384,
        output_dir=tmp_path, config_yaml="", progress=False, suite_validation=suites,
    )


def test_default_validation_is_unchanged(dirs, tmp_path):
    results = _engine(dirs, tmp_path).validate()
    assert set(results) == {"valid_loss", "valid_fkl", "valid_rougeL"}


def test_extra_suites_run_through_the_evaluators(dirs, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": w}) + "\n" for w in ("yes", "no", "maybe")))
    engine = _engine(dirs, tmp_path, suites=["default", str(data)], suite_examples=2, suite_seeds=[10, 20])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    results = engine.validate()
    # Training's random stream is untouched by the seeded sampling of the suites.
    assert torch.equal(torch.get_rng_state(), before)
    assert {"valid_loss", "valid_fkl", "valid_rougeL"} <= set(results)
    for key in ("valid_default_rougeL", "valid_default_exact_match", "valid_default_dist4", "valid_default_test_loss"):
        assert key in results
    # A file suite is logged under its path, made a metric name: valid_<path with _ for punctuation>_rougeL.
    assert any(k.startswith("valid_") and k.endswith("mine_jsonl_rougeL") for k in results)
    assert not any(k.endswith("_std") for k in results)
    # The same numbers as `minillm eval` on the same settings.
    from minillm_cli.evaluation.base import EvalContext, paper_sampling
    from minillm_cli.evaluation.suites import DefaultSuite

    family = resolve_model(str(dirs[0])).family
    ctx = EvalContext(model_name="m", model=engine.unwrapped(), tokenizer=engine.tokenizer, seeds=[10, 20],
                      sampling=paper_sampling(4), batch_size=4, limit=2, prompt_format=family.prompt_format,
                      add_bos=family.add_bos)
    direct = DefaultSuite().evaluate(ctx)
    assert results["valid_default_rougeL"] == pytest.approx(direct.metrics["rougeL"])
    assert results["valid_default_test_loss"] == pytest.approx(direct.metrics["test_loss"])


def test_unknown_validation_suite_is_a_clear_error(dirs, tmp_path):
    with pytest.raises(MinillmError, match="unknown evaluator 'selfinstt'.*did you mean 'selfinst'"):
        _engine(dirs, tmp_path, suites=["selfinstt"]).validate()
