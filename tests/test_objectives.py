"""The builtin objectives on a tiny teacher/student pair: registration, known answers, schedules, state, training."""

import json
import random

import pytest

from conftest import HELD_OUT, TRAIN
import torch
import torch.nn.functional as F

from minillm_cli.data.batches import make_batch
from minillm_cli.models.forward import forward_hidden
from minillm_cli.models.generation import SamplingConfig, generate
from minillm_cli.models.load import logit_width
from minillm_cli.objective import Objective, StepContext

NAMES = ["sft", "kd", "seqkd", "rkl", "tvd", "gkd", "distillm"]



# --- fixtures ---------------------------------------------------------------------------------------------------


def _batch(tokenizer, pairs):
    eos = tokenizer.eos_token_id
    prompts = [tokenizer.encode(p) for p, _ in pairs]
    responses = [tokenizer.encode(r) + [eos] for _, r in pairs]
    return make_batch(prompts, responses, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return _batch(tokenizer, TRAIN)


@pytest.fixture(scope="module")
def held_out(tokenizer):
    return _batch(tokenizer, HELD_OUT)


class Counter(dict):
    def add(self, key):
        self[key] = self.get(key, 0) + 1


def make_ctx(student, teacher, tokenizer, batch, *, chunk_tokens=None, rng=None, progress=0.0, calls=None):
    """A StepContext as the engine builds it, with sampling functions that count their calls."""
    width = logit_width(student)
    calls = calls if calls is not None else Counter()
    sampling = SamplingConfig(max_new_tokens=5)

    def teacher_forward(b):
        with torch.inference_mode():
            return forward_hidden(teacher, b, width)

    def sampler(model, source):
        def sample(b):
            calls.add(source)
            results = generate(model, tokenizer, b.prompts, sampling, batch_size=len(b.prompts))
            eos = tokenizer.eos_token_id
            responses = [r.token_ids + ([eos] if r.finished else []) for r in results]
            return make_batch(b.prompts, responses, tokenizer.pad_token_id, source=source)
        return sample

    return StepContext(
        step=0, num_tokens=batch.num_tokens, student=student, teacher=teacher, vocab_width=width,
        chunk_tokens=chunk_tokens, student_forward=lambda b: forward_hidden(student, b, width),
        teacher_forward=teacher_forward, sample_student=sampler(student, "student"),
        sample_teacher=sampler(teacher, "teacher"), lm_batch=lambda: None,
        rng=rng if rng is not None else random.Random(0), training_progress=progress,
    )


def objective(name, **options):
    from minillm_cli.plugins import get_objective

    cls = get_objective(name)
    return cls(cls.Options(**options))


# --- brute force from full logits, in float64 -------------------------------------------------------------------


def _logprobs(model, batch):
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits.double()
    return F.log_softmax(logits[batch.loss_mask], dim=-1)          # [N, V] on the loss tokens


def _kl(log_a, log_b):
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def brute(name, student, teacher, batch, **params):
    """Mean over loss tokens of the divergence, straight from the definitions (docs/method.md §2, §6)."""
    log_q, log_p = _logprobs(student, batch), _logprobs(teacher, batch)
    q, p = log_q.exp(), log_p.exp()
    if name == "ce":
        values = -log_q.gather(-1, batch.labels[batch.loss_mask][:, None]).squeeze(-1)
    elif name == "fkl":
        values = _kl(log_p, log_q)
    elif name == "rkl":
        values = _kl(log_q, log_p)
    elif name == "tvd":
        values = 0.5 * (p - q).abs().sum(-1)
    elif name == "jsd":
        beta = params["beta"]
        log_m = torch.log(beta * p + (1 - beta) * q)
        values = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    elif name == "skl":
        alpha = params["alpha"]
        values = _kl(log_p, torch.log(alpha * p + (1 - alpha) * q))
    elif name == "srkl":
        alpha = params["alpha"]
        values = _kl(log_q, torch.log(alpha * q + (1 - alpha) * p))
    else:
        raise ValueError(name)
    return float(values.mean())


# --- registration and options -----------------------------------------------------------------------------------


def test_every_builtin_objective_is_registered_under_its_name():
    from minillm_cli.plugins import objectives

    found = objectives()
    for name in NAMES:
        assert name in found, name
        cls = found[name]
        assert issubclass(cls, Objective) and cls.name == name
        assert cls.help and "gold" in cls.needs
        assert cls.needs <= {"gold", "teacher", "student_samples", "teacher_samples", "mixed_samples", "lm_chunks"}
        assert getattr(cls.Options(), "validate", lambda: [])() == []   # defaults are valid


@pytest.mark.parametrize("name, options, expected", [
    ("kd", {"ratio": 1.5}, ["ratio must be in [0, 1], got 1.5"]),
    ("seqkd", {"ratio": -0.1}, ["ratio must be in [0, 1], got -0.1"]),
    ("rkl", {"ce_weight": -1.0}, ["ce_weight must be >= 0, got -1.0"]),
    ("tvd", {"ce_weight": -2.0}, ["ce_weight must be >= 0, got -2.0"]),
    ("gkd", {"beta": 1.2, "lmbda": -0.5}, ["beta must be in [0, 1], got 1.2", "lmbda must be in [0, 1], got -0.5"]),
])
def test_options_validate_reports_every_problem(name, options, expected):
    from minillm_cli.plugins import get_objective

    assert get_objective(name).Options(**options).validate() == expected


def test_distillm_options_validate():
    from minillm_cli.builtin.objectives.distillm import DistiLLMOptions

    problems = DistiLLMOptions(loss_type="fkl", alpha=2.0, replay_capacity=0, replay_ratio="sometimes").validate()
    assert len(problems) == 4
    assert any("loss_type must be one of srkl, skl" in p for p in problems)
    assert any("alpha must be in [0, 1]" in p for p in problems)
    assert any("replay_capacity must be >= 1" in p for p in problems)
    assert any("replay_ratio must be one of" in p for p in problems)


def test_needs_follow_the_options():
    from minillm_cli.builtin.objectives.gkd import GKD, GKDOptions
    from minillm_cli.builtin.objectives.seqkd import SeqKD, SeqKDOptions

    # On the class: everything the objective may need (for listings); on an instance: what its options need.
    assert GKD.needs == {"gold", "teacher", "student_samples", "teacher_samples"}
    assert GKD().needs == {"gold", "teacher", "student_samples"}
    assert GKD(GKDOptions(lmbda=0.0)).needs == {"gold", "teacher"}
    assert GKD(GKDOptions(lmbda=0.5, seq_kd=True)).needs == {"gold", "teacher", "student_samples", "teacher_samples"}
    assert SeqKD.needs == {"gold", "teacher"}
    assert SeqKD().needs == {"gold"}
    assert SeqKD(SeqKDOptions(ratio=0.5)).needs == {"gold", "teacher"}


# --- known answers ----------------------------------------------------------------------------------------------


def test_sft_is_cross_entropy_on_response_tokens(student, teacher, tokenizer, batch):
    ctx = make_ctx(student, teacher, tokenizer, batch)
    out = objective("sft").loss(batch, ctx)
    with torch.no_grad():
        logits = student(**batch.model_inputs()).logits
    expected = F.cross_entropy(logits[batch.loss_mask].double(), batch.labels[batch.loss_mask])
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert out.metrics == {"ce": pytest.approx(float(expected), rel=1e-5)}


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_kd_is_mixture_of_ce_and_forward_kl(student, teacher, tokenizer, batch, ratio):
    ctx = make_ctx(student, teacher, tokenizer, batch)
    out = objective("kd", ratio=ratio).loss(batch, ctx)
    ce, fkl = brute("ce", student, teacher, batch), brute("fkl", student, teacher, batch)
    assert fkl > 0.05   # the pair differs, so the check has something to measure
    assert float(out.loss.detach()) == pytest.approx((1 - ratio) * ce + ratio * fkl, rel=1e-5)
    assert out.metrics["ce"] == pytest.approx(ce, rel=1e-5)
    assert out.metrics["fkl"] == pytest.approx(fkl, rel=1e-5)


@pytest.mark.parametrize("name, options, divergence, params", [
    ("rkl", {}, "rkl", {}),
    ("tvd", {}, "tvd", {}),
    ("gkd", {"beta": 0.5, "lmbda": 0.0}, "jsd", {"beta": 0.5}),
    ("gkd", {"beta": 0.9, "lmbda": 0.0}, "jsd", {"beta": 0.9}),
    ("distillm", {}, "srkl", {"alpha": 0.1}),
    ("distillm", {"loss_type": "skl", "alpha": 0.2}, "skl", {"alpha": 0.2}),
])
def test_divergence_objectives_match_brute_force(student, teacher, tokenizer, batch, name, options, divergence, params):
    ctx = make_ctx(student, teacher, tokenizer, batch)
    out = objective(name, **options).loss(batch, ctx)
    expected = brute(divergence, student, teacher, batch, **params)
    assert expected > 1e-3
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert out.metrics[divergence] == pytest.approx(expected, rel=1e-5)


def test_ce_weight_adds_cross_entropy(student, teacher, tokenizer, batch):
    ctx = make_ctx(student, teacher, tokenizer, batch)
    out = objective("rkl", ce_weight=0.3).loss(batch, ctx)
    expected = brute("rkl", student, teacher, batch) + 0.3 * brute("ce", student, teacher, batch)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert set(out.metrics) == {"rkl", "ce"}


def test_micro_batches_add_up_to_the_whole_batch(student, teacher, tokenizer, batch):
    """Loss and metrics are token sums / ctx.num_tokens: split micro-batches add up to the full batch."""
    kd = objective("kd")
    whole = kd.loss(batch, make_ctx(student, teacher, tokenizer, batch))
    halves = [_batch(tokenizer, TRAIN[:1]), _batch(tokenizer, TRAIN[1:])]
    ctx = make_ctx(student, teacher, tokenizer, batch)
    ctx.num_tokens = sum(h.num_tokens for h in halves)
    parts = [kd.loss(h, ctx) for h in halves]
    assert sum(float(p.loss.detach()) for p in parts) == pytest.approx(float(whole.loss.detach()), rel=1e-5)
    for key in ("ce", "fkl"):
        assert sum(p.metrics[key] for p in parts) == pytest.approx(whole.metrics[key], rel=1e-5)


def test_a_batch_without_loss_tokens_gives_a_zero_loss_that_backpropagates(student, teacher, tokenizer):
    empty = make_batch([tokenizer.encode("Two plus two is")], [[]], tokenizer.pad_token_id)
    assert empty.num_tokens == 0
    ctx = make_ctx(student, teacher, tokenizer, empty)
    ctx.num_tokens = 5.0    # the other micro-batches of the step have the tokens
    for name in ("sft", "kd", "distillm"):
        out = objective(name).loss(empty, ctx)
        assert float(out.loss.detach()) == 0.0
        out.loss.backward()  # the engine calls backward on every micro-batch's loss


def test_chunked_and_unchunked_kd_agree_in_value_and_gradient(student, teacher, tokenizer, batch):
    kd = objective("kd")
    results = []
    for chunk_tokens in (None, 3):
        student.zero_grad(set_to_none=True)
        out = kd.loss(batch, make_ctx(student, teacher, tokenizer, batch, chunk_tokens=chunk_tokens))
        out.loss.backward()
        results.append((float(out.loss.detach()), [p.grad.clone() for p in student.parameters()]))
    (full, full_grads), (chunked, chunked_grads) = results
    assert chunked == pytest.approx(full, rel=1e-6)
    for a, b in zip(full_grads, chunked_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- GKD sampling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lmbda, seq_kd, expected", [
    (1.0, False, {"student": 6}),
    (0.0, False, {}),
    (0.0, True, {"teacher": 6}),
])
def test_gkd_on_policy_fraction(student, teacher, tokenizer, batch, lmbda, seq_kd, expected):
    calls = Counter()
    ctx = make_ctx(student, teacher, tokenizer, batch, calls=calls)
    gkd = objective("gkd", lmbda=lmbda, seq_kd=seq_kd)
    prepared = [gkd.prepare_batch(batch, ctx) for _ in range(6)]
    assert dict(calls) == expected
    sources = {b.source for b in prepared}
    assert sources == ({"student"} if lmbda == 1 else {"teacher"} if seq_kd else {"gold"})
    if lmbda == 0 and not seq_kd:
        assert all(b is batch for b in prepared)


def test_gkd_choices_come_from_the_engine_rng(student, teacher, tokenizer, batch):
    """The same RNG state gives the same on/off-policy choices: a resumed run continues exactly."""
    gkd = objective("gkd", lmbda=0.5)

    def choices(seed):
        ctx = make_ctx(student, teacher, tokenizer, batch, rng=random.Random(seed))
        ctx.sample_student = lambda b: "sampled"
        return ["S" if gkd.prepare_batch(batch, ctx) == "sampled" else "G" for _ in range(40)]

    first = choices(3)
    assert first == choices(3)
    assert 8 < first.count("S") < 32
    # Exactly one draw per micro-batch: the stream matches random.Random(3).random() < 0.5.
    reference = random.Random(3)
    assert first == ["S" if reference.random() < 0.5 else "G" for _ in range(40)]


# --- DistiLLM schedule ------------------------------------------------------------------------------------------


def test_distillm_threshold_rises_when_validation_loss_rises():
    from minillm_cli.plugins import get_objective

    distillm = get_objective("distillm")()
    assert distillm.threshold == 0.0
    distillm.on_validation({"valid_loss": 2.0})        # the first validation sets the reference loss
    assert (distillm.threshold, distillm.prev_loss) == (0.0, 2.0)
    distillm.on_validation({"valid_loss": 1.5})        # improved: nothing changes (not even the reference)
    distillm.on_validation({"valid_loss": 2.05})       # worse, but by less than loss_eps
    assert (distillm.threshold, distillm.prev_loss) == (0.0, 2.0)
    distillm.on_validation({"valid_loss": 2.2})        # worse by >= 0.1: φ rises, the reference moves
    assert distillm.threshold == pytest.approx(0.1) and distillm.prev_loss == 2.2
    distillm.on_validation({"valid_rougeL": 10.0})     # no loss, no change
    assert distillm.threshold == pytest.approx(0.1)
    for step in range(20):
        distillm.on_validation({"valid_loss": 3.0 + step})
    assert distillm.threshold == 1.0                   # capped


def test_distillm_starts_off_policy(student, teacher, tokenizer, batch):
    calls = Counter()
    ctx = make_ctx(student, teacher, tokenizer, batch, calls=calls)
    distillm = objective("distillm")
    assert all(distillm.prepare_batch(batch, ctx) is batch for _ in range(10))
    assert calls == {} and distillm.replay == []


def test_distillm_generation_threshold_follows_replay_ratio():
    from minillm_cli.builtin.objectives.distillm import DistiLLM, DistiLLMOptions

    for ratio, expected in (("decreasing", 0.6 * 0.75), ("constant", 0.3), ("increasing", 0.6 * 0.25)):
        distillm = DistiLLM(DistiLLMOptions(init_threshold=0.6, replay_ratio=ratio))
        assert distillm.generation_threshold(0.25) == pytest.approx(expected)


def test_distillm_fills_then_replays_the_buffer(student, teacher, tokenizer, batch):
    calls = Counter()
    # φ = 1 at the end of training: the generation threshold is 0, so fresh samples are drawn only while the
    # buffer fills up (the reference's "len(replay_buffer) < capacity"), then every batch is replayed.
    ctx = make_ctx(student, teacher, tokenizer, batch, calls=calls, progress=1.0)
    distillm = objective("distillm", init_threshold=1.0, replay_capacity=6)
    first = distillm.prepare_batch(batch, ctx)
    assert calls == {"student": 1} and first.source == "student" and len(distillm.replay) == 4
    second = distillm.prepare_batch(batch, ctx)
    assert calls == {"student": 2} and len(distillm.replay) == 6     # FIFO: the oldest two were dropped
    newest = [[p, r] for p, r in zip(second.prompts, second.responses)]
    assert distillm.replay[-4:] == newest
    assert distillm.replay[:2] == [[p, r] for p, r in zip(first.prompts[2:], first.responses[2:])]
    for _ in range(5):
        replayed = distillm.prepare_batch(batch, ctx)
        assert calls == {"student": 2}                                # no more sampling
        assert replayed.source == "student" and replayed.extras["replayed"]
        pairs = [[p, r] for p, r in zip(replayed.prompts, replayed.responses)]
        assert len(pairs) == 4 and all(pair in distillm.replay for pair in pairs)
        rebuilt = make_batch(replayed.prompts, replayed.responses, tokenizer.pad_token_id)
        assert torch.equal(rebuilt.input_ids, replayed.input_ids)
        assert torch.equal(rebuilt.loss_mask, replayed.loss_mask)
        assert float(distillm.loss(replayed, make_ctx(student, teacher, tokenizer, replayed)).loss.detach()) > 0


def test_distillm_fresh_samples_early_in_training(student, teacher, tokenizer, batch):
    calls = Counter()
    ctx = make_ctx(student, teacher, tokenizer, batch, calls=calls, progress=0.0)
    distillm = objective("distillm", init_threshold=1.0, replay_capacity=4)
    for _ in range(3):   # generation threshold φ·(1 − 0) = 1: always fresh, even with a full buffer
        distillm.prepare_batch(batch, ctx)
    assert calls == {"student": 3} and len(distillm.replay) == 4


def test_distillm_state_round_trip(tmp_path, student, teacher, tokenizer, batch):
    from minillm_cli.plugins import get_objective

    ctx = make_ctx(student, teacher, tokenizer, batch, progress=1.0)
    distillm = objective("distillm", init_threshold=1.0, replay_capacity=8)
    distillm.on_validation({"valid_loss": 2.5})
    distillm.prepare_batch(batch, ctx)
    distillm.prepare_batch(batch, ctx)
    state = distillm.state_dict()
    assert json.loads(json.dumps(state)) == state                     # plain lists and floats
    torch.save(state, tmp_path / "state.pt")
    loaded_state = torch.load(tmp_path / "state.pt", weights_only=True)
    restored = get_objective("distillm")(distillm.options)
    restored.load_state_dict(loaded_state)
    assert restored.state_dict() == state
    assert (restored.threshold, restored.prev_loss) == (1.0, 2.5) and len(restored.replay) == 8
    # Same RNG state + same objective state = same replayed batch.
    rng_state = ctx.rng.getstate()
    a = distillm.prepare_batch(batch, ctx)
    ctx.rng.setstate(rng_state)
    b = restored.prepare_batch(batch, ctx)
    assert a.prompts == b.prompts and a.responses == b.responses


# --- SeqKD ------------------------------------------------------------------------------------------------------


def _data_context(refs, tmp_path, seed=0, **sampling):
    from minillm_cli.objective import DataContext

    return DataContext(
        teacher=refs[1].source, teacher_family=None, cache_dir=tmp_path / "cache", prompt_format="alpaca",
        max_prompt_tokens=256, generation=SamplingConfig(max_new_tokens=6, **sampling), dtype="fp32",
        device="cpu", batch_size=2, seed=seed,
    )


def _instruction_examples(tmp_path):
    from minillm_cli.data.instructions import load_instructions

    path = tmp_path / "train.jsonl"
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": "Four."},
        {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_instructions(str(path))


def test_seqkd_replaces_responses_and_caches_them(tmp_path, refs, monkeypatch):
    import minillm_cli.models.generation as generation_module

    examples = _instruction_examples(tmp_path)
    calls = Counter()
    real_generate = generation_module.generate

    def counting_generate(*args, **kwargs):
        calls.add("generate")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generation_module, "generate", counting_generate)
    seqkd = objective("seqkd")
    ctx = _data_context(refs, tmp_path)
    first = seqkd.prepare_data(examples, ctx)
    assert calls == {"generate": 1}
    assert len(first) == len(examples)
    for new, old in zip(first, examples):
        assert (new.instruction, new.input) == (old.instruction, old.input)
        assert len(new.references) == 1 and isinstance(new.references[0], str)
    assert [e.references[0] for e in first] != [e.references[0] for e in examples]
    files = list((tmp_path / "cache").glob("seqkd-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == len(examples)

    second = seqkd.prepare_data(examples, ctx)                       # same settings: the cache is hit
    assert calls == {"generate": 1}
    assert [e.references for e in second] == [e.references for e in first]

    seqkd.prepare_data(examples, _data_context(refs, tmp_path, seed=1))   # another seed: generated afresh
    assert calls == {"generate": 2}
    seqkd.prepare_data(examples, _data_context(refs, tmp_path, temperature=0.5))
    assert calls == {"generate": 3}
    seqkd.prepare_data(examples[:2], ctx)                               # other prompts: generated afresh
    assert calls == {"generate": 4}
    assert len(list((tmp_path / "cache").glob("seqkd-*.jsonl"))) == 4


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_seqkd_loss_is_kd_with_its_ratio(student, teacher, tokenizer, batch, ratio):
    out = objective("seqkd", ratio=ratio).loss(batch, make_ctx(student, teacher, tokenizer, batch))
    ce, fkl = brute("ce", student, teacher, batch), brute("fkl", student, teacher, batch)
    assert float(out.loss.detach()) == pytest.approx((1 - ratio) * ce + ratio * fkl, rel=1e-5)
    assert set(out.metrics) == ({"ce"} if ratio == 0 else {"ce", "fkl"})


# --- a tiny training loop ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, measure, factor", [
    # With the default ratio 0.5, half of KD's pull is towards the gold tokens, which this random teacher does
    # not predict: its KL falls, but only a little; pure KD (ratio 1) falls like the others.
    ("kd", {}, "fkl", 1.0),
    ("kd", {"ratio": 1.0}, "fkl", 0.8),
    ("rkl", {}, "rkl", 0.8),
    ("gkd", {"lmbda": 0.0}, "fkl", 0.8),
    ("tvd", {}, "fkl", 0.8),
    ("distillm", {}, "rkl", 0.8),
])
def test_training_brings_the_student_closer_to_the_teacher(student, teacher, tokenizer, batch, held_out, name,
                                                           options, measure, factor):
    """20 Adam steps on one fixed batch lower the student's KL to the teacher on held-out prompts."""
    obj = objective(name, **options)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    before = brute(measure, student, teacher, held_out)
    ctx = make_ctx(student, teacher, tokenizer, batch)
    for step in range(20):
        ctx.step = step
        prepared = obj.prepare_batch(batch, ctx)
        ctx.num_tokens = prepared.num_tokens
        out = obj.loss(prepared, ctx)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = brute(measure, student, teacher, held_out)
    assert after < factor * before, (before, after)


@pytest.mark.parametrize("ratio", [1.0, 0.3])
def test_text_kd_distils_on_every_token_of_the_text_batch(student, teacher, tokenizer, batch, ratio):
    """text_kd replaces the gold batch by a plain-text batch whose every token counts, then (1 − r)·CE + r·FKL."""
    texts = [tokenizer.encode("the cat sat on the mat and the dog sat too"), tokenizer.encode("a b c d e f g h i j k")]
    width = min(len(t) for t in texts)
    text_batch = make_batch([[t[0]] for t in texts], [t[1:width] for t in texts], tokenizer.pad_token_id, source="text")
    ctx = make_ctx(student, teacher, tokenizer, batch)
    ctx.lm_batch = lambda: text_batch
    obj = objective("text_kd", ratio=ratio)
    prepared = obj.prepare_batch(batch, ctx)
    assert prepared is text_batch and int(prepared.loss_mask.sum()) == 2 * (width - 1)   # every text token
    ctx.num_tokens = prepared.num_tokens
    out = obj.loss(prepared, ctx)
    ce, fkl = brute("ce", student, teacher, prepared), brute("fkl", student, teacher, prepared)
    assert fkl > 0.05
    assert float(out.loss.detach()) == pytest.approx((1 - ratio) * ce + ratio * fkl, rel=1e-5)
    assert out.metrics["fkl"] == pytest.approx(fkl, rel=1e-5)
    assert obj.needs == {"gold", "teacher", "lm_chunks"}
