"""The engine on tiny models with test objectives: accumulation, padding, resume, interrupt, exports."""

import json
import os
import signal
import types
from pathlib import Path

import pytest
import torch

from minillm_cli.data.batches import make_batch
from minillm_cli.config.schema import DistillConfig
from minillm_cli.training.engine import Engine, EngineData, ExampleStream
from minillm_cli.models.forward import forward_hidden
from minillm_cli.losses.head import distill_loss, lm_loss
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
from minillm_cli.objective import LossOutput, Objective
from minillm_cli.training.schedules import lr_multiplier


class CEObjective(Objective):
    name = "test-ce"
    needs = frozenset({"gold"})

    def loss(self, batch, ctx):
        value = lm_loss(ctx.student_forward(batch), batch.labels, batch.loss_mask, num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens)
        return LossOutput(value, {"ce": float(value.detach())})


class KLObjective(Objective):
    name = "test-fkl"
    needs = frozenset({"gold", "teacher"})

    def loss(self, batch, ctx):
        value = distill_loss("fkl", ctx.student_forward(batch), ctx.teacher_forward(batch), batch.loss_mask,
                             num_tokens=ctx.num_tokens, chunk_tokens=ctx.chunk_tokens)
        return LossOutput(value, {"fkl": float(value.detach())})


def _example(prompt, response, index=0):
    return types.SimpleNamespace(prompt_ids=prompt, response_ids=response, index=index)


@pytest.fixture(scope="module")
def pair(tiny_models):
    student_ref = resolve_model(str(tiny_models("llama", seed=1)))
    teacher_ref = resolve_model(str(tiny_models("llama", layers=3, seed=2)))
    return student_ref, teacher_ref, load_tokenizer(student_ref)


def _data(tokenizer, n=16):
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(n):
        prompt = torch.randint(3, 300, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(3, 300, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        examples.append(_example(prompt, response + [tokenizer.eos_token_id], i))
    valid = examples[:4]
    return EngineData(train=examples, valid=valid, valid_references=[["a b c"]] * len(valid))


def _engine(pair, tmp_path, objective, *, batch_size=8, grad_accum=1, steps=4, every=0, teacher=True, **train):
    student_ref, teacher_ref, tokenizer = pair
    config = DistillConfig(output_dir=str(tmp_path), device="cpu")
    config.train.batch_size, config.train.grad_accum, config.train.steps = batch_size, grad_accum, steps
    config.train.lr, config.train.schedule, config.train.chunk_tokens = 1e-2, "constant", 5
    for key, value in train.items():
        setattr(config.train, key, value)
    config.eval.every, config.eval.rouge_examples, config.eval.before_after = 0, 2, False
    config.eval.max_new_tokens = 4
    config.checkpoint.every = every
    student = load_model(student_ref, trainable=True)
    teacher_model = load_model(teacher_ref) if teacher else None
    return Engine(
        config=config, objective=objective, student=student, teacher=teacher_model, tokenizer=tokenizer,
        data=_data(tokenizer), vocab_width=384, output_dir=tmp_path, config_yaml="objective: {name: test}\n",
        progress=False,
    )


def _params(engine):
    return {k: v.detach().clone() for k, v in engine.unwrapped().state_dict().items()}


@pytest.mark.parametrize("objective", [CEObjective, KLObjective])
def test_gradient_accumulation_4x2_equals_1x8(pair, tmp_path, objective):
    one = _engine(pair, tmp_path / "a", objective(), batch_size=8, grad_accum=1, steps=1)
    four = _engine(pair, tmp_path / "b", objective(), batch_size=2, grad_accum=4, steps=1)
    # The same 8 examples in the same order: a global batch of 8 either way.
    assert one.stream.order(0)[:8] == four.stream.order(0)[:8]
    record_one, record_four = one.train_step(), four.train_step()
    assert record_one["loss"] == pytest.approx(record_four["loss"], rel=1e-5)
    # Adam's first step is lr·g/(|g|+eps): float noise in a near-zero gradient can move one element by a
    # fraction of lr, so the tolerance is 1% of lr; a wrong normalisation moves every element.
    for name, value in _params(one).items():
        torch.testing.assert_close(value, _params(four)[name], rtol=0, atol=1e-4)


def test_losses_are_padding_invariant(pair):
    student_ref, teacher_ref, tokenizer = pair
    student, teacher = load_model(student_ref), load_model(teacher_ref)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    responses = [[20, 21, 0], [22, 23, 24, 25, 0], [26, 0]]
    values = []
    for side in ("right", "left"):
        batch = make_batch(prompts, responses, pad_id=0, padding_side=side)
        s, t = forward_hidden(student, batch, 384), forward_hidden(teacher, batch, 384)
        values.append([float(lm_loss(s, batch.labels, batch.loss_mask)),
                       float(distill_loss("fkl", s, t, batch.loss_mask)),
                       float(distill_loss("rkl", s, t, batch.loss_mask))])
    # Extra padding (a longer neighbour) changes nothing either.
    batch = make_batch(prompts + [[1] * 12], responses + [[2] * 6], pad_id=0)
    batch.loss_mask[3] = False
    s, t = forward_hidden(student, batch, 384), forward_hidden(teacher, batch, 384)
    values.append([float(lm_loss(s, batch.labels, batch.loss_mask)),
                   float(distill_loss("fkl", s, t, batch.loss_mask)),
                   float(distill_loss("rkl", s, t, batch.loss_mask))])
    for other in values[1:]:
        assert other == pytest.approx(values[0], rel=1e-5)


def _losses(path: Path):
    return [r["loss"] for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_resume_after_interrupt_gives_the_same_losses_and_weights(pair, tmp_path):
    full = _engine(pair, tmp_path / "full", KLObjective(), batch_size=4, steps=6)
    full.run()

    class InterruptAtStep3(KLObjective):
        def loss(self, batch, ctx):
            if ctx.step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the engine finishes the step and saves
            return super().loss(batch, ctx)

    first = _engine(pair, tmp_path / "split", InterruptAtStep3(), batch_size=4, steps=6)
    result = first.run()
    assert result.interrupted and result.steps == 3
    checkpoint = tmp_path / "split" / "checkpoints" / "step-000003"
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (tmp_path / "split" / "final").exists()

    second = _engine(pair, tmp_path / "split", KLObjective(), batch_size=4, steps=6)
    second.resume(checkpoint)
    second.run()
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    for name, value in _params(full).items():
        torch.testing.assert_close(value, _params(second)[name])


def test_run_exports_final_and_best_and_keeps_checkpoints(pair, tmp_path):
    engine = _engine(pair, tmp_path, CEObjective(), batch_size=4, steps=6, every=2, teacher=False)
    engine.config.eval.every = 2
    engine.config.checkpoint.keep = 2
    result = engine.run()
    assert result.steps == 6 and not result.interrupted
    from transformers import AutoModelForCausalLM

    for name in ("final", "best"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert (tmp_path / name / "model.safetensors").is_file() and model.config.num_hidden_layers == 2
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-000004", "step-000006"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_loss" in r and "valid_rougeL" in r for r in records)
    assert all(r["tokens"] > 0 for r in records if "loss" in r)


def test_example_stream_is_deterministic_and_shards_without_duplicates():
    examples = [_example([1], [2], i) for i in range(10)]
    from minillm_cli.training.checkpoint import TrainerState

    single = ExampleStream(examples, 4, seed=3)
    state = TrainerState()
    seen = [e.index for _ in range(2) for e in single.next(state)]
    assert len(set(seen)) == 8 and state.epoch == 0
    single.next(state)
    assert state.epoch == 1  # the partial batch (2 left) is dropped
    ranks = [ExampleStream(examples, 2, seed=3, rank=r, world=2) for r in range(2)]
    states = [TrainerState(), TrainerState()]
    shards = [[e.index for e in ranks[r].next(states[r])] for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(seen[:4])


def test_schedules():
    assert lr_multiplier("constant_with_warmup", 0, 100, 10, 1e-3, 0) == pytest.approx(0.1)
    assert lr_multiplier("constant_with_warmup", 50, 100, 10, 1e-3, 0) == 1.0
    assert lr_multiplier("cosine", 10, 110, 10, 1e-3, 1e-7) == pytest.approx(1.0)
    assert lr_multiplier("cosine", 110, 110, 10, 1e-3, 1e-7) == pytest.approx(1e-4)
    assert lr_multiplier("cosine", 60, 110, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_multiplier("linear", 60, 110, 10, 1.0, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize("precision,teacher_dtype", [("bf16", "fp32"), ("fp32", "bf16"), ("bf16", "bf16")])
def test_lower_precision_student_and_teacher_train(pair, tmp_path, precision, teacher_dtype):
    student_ref, teacher_ref, tokenizer = pair
    engine = _engine(pair, tmp_path, KLObjective(), batch_size=4, steps=2, precision=precision, teacher_dtype=teacher_dtype)
    if teacher_dtype == "bf16":
        engine.teacher = load_model(teacher_ref, dtype="bf16")
    before = _params(engine)
    records = [engine.train_step(), engine.train_step()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert any(not torch.equal(before[k], v) for k, v in _params(engine).items())
    # Losses are computed in float32 whatever the models' precision.
    batch = make_batch([[5, 6, 7]], [[8, 9, 0]], pad_id=0)
    with engine.accelerator.autocast():
        value = distill_loss("fkl", engine.student_forward(batch), engine.teacher_forward(batch), batch.loss_mask)
    assert value.dtype == torch.float32


def test_plain_text_position_survives_resume(pair, tmp_path):
    chunks = [[1 + i, 2 + i, 3 + i, 4 + i] for i in range(10)]
    first = _engine(pair, tmp_path, CEObjective(), batch_size=4, steps=2, teacher=False)
    first.data.lm_chunks = chunks
    expected = [first.lm_batch().input_ids.tolist() for _ in range(3)]
    second = _engine(pair, tmp_path / "b", CEObjective(), batch_size=4, steps=2, teacher=False)
    second.data.lm_chunks = chunks
    second.lm_batch()
    second.train_step()
    path = second.save()
    third = _engine(pair, tmp_path / "c", CEObjective(), batch_size=4, steps=2, teacher=False)
    third.data.lm_chunks = chunks
    third.resume(path)
    assert third.lm_batch().input_ids.tolist() == expected[1]
