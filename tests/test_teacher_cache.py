"""Offline top-k teacher logits: ``minillm generate --save-logits``, the k + 1 bucket loss and its error against
full logits, and training from the file without loading the teacher."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import run_cli
from minillm_cli.data.batches import make_batch
from minillm_cli.data.instructions import InstructionExample
from minillm_cli.data.tokenization import tokenize_examples
from minillm_cli.errors import MinillmError
from minillm_cli.models.forward import forward_hidden
from minillm_cli.losses.head import distill_loss
from minillm_cli.models.load import load_model
from minillm_cli.losses.cached import bucket_logprobs
from minillm_cli.training.teacher_cache import TeacherCache, compute_topk, logits_path, save

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Add the numbers.", "input": "two plus two", "output": "Four."},
    {"instruction": "Is this review positive or negative?", "input": "The film was wonderful.", "output": "Positive."},
    {"instruction": "List three colours.", "input": "", "output": "Red, green and blue."},
]


def tokenized(tokenizer, records=RECORDS, family=None):
    """Token ids as a training run makes them (with ``family``'s prompt format, as `minillm generate` uses)."""
    examples = [InstructionExample(r["instruction"], r["input"], [r["output"]], r) for r in records]
    style = dict(prompt_format=family.prompt_format, add_bos=family.add_bos) if family else {}
    return tokenize_examples(examples, tokenizer, max_response_tokens=None, **style).examples


def peaked_teacher(refs, scale):
    """The tiny random teacher with its output layer scaled: confident like a trained teacher, so that its top 64
    of 384 tokens hold nearly all of the mass."""
    teacher = load_model(refs[1])
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(scale)
    return teacher


def cached_batch(tmp_path, teacher, tokenizer, k=64):
    examples = tokenized(tokenizer)
    path = save(tmp_path / "t.logits.safetensors", compute_topk(teacher, examples, k, pad_id=tokenizer.pad_token_id,
                                                                batch_size=3), {"k": k})
    cache = TeacherCache.load(path)
    cache.check(examples, 384)
    batch = make_batch([e.prompt_ids for e in examples], [e.response_ids for e in examples], tokenizer.pad_token_id)
    return cache, batch


def test_bucket_logprobs_are_a_distribution_and_exact_for_the_rest():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen, dtype=torch.float64) * 3
    ids = logits.topk(7, dim=-1).indices
    buckets = bucket_logprobs(logits, ids)
    torch.testing.assert_close(buckets.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    full = torch.log_softmax(logits, -1)
    torch.testing.assert_close(buckets[:, :7], full.gather(-1, ids))
    rest = full.exp().sum(-1) - full.gather(-1, ids).exp().sum(-1)
    torch.testing.assert_close(buckets[:, 7].exp(), rest)


def test_topk_loss_error_against_full_logits_is_bounded(refs, tokenizer, tmp_path):
    """k = 64 of a 384-token vocabulary, the teacher's top 64 holding ~98% of its mass.

    Forward KL on the k + 1 buckets is below the full one by exactly p(R)·KL(p(·|R) ‖ q(·|R)), float16 storage
    aside, even for a random student. For a student near the teacher (the regime of distillation), every
    divergence is within a few per cent of its full-logit value, and so is the gradient's direction."""
    teacher = peaked_teacher(refs, 3.0)
    cache, batch = cached_batch(tmp_path, teacher, tokenizer)
    cached, mask = cache.for_batch(batch), batch.loss_mask
    with torch.inference_mode():
        full_t = forward_hidden(teacher, batch)

    def losses(student, name, **options):
        full = distill_loss(name, forward_hidden(student, batch), full_t, mask, chunk_tokens=16, **options)
        approx = distill_loss(name, forward_hidden(student, batch), cached, mask, chunk_tokens=16, **options)
        head = student.get_output_embeddings().weight
        grads = [torch.autograd.grad(v, head)[0].flatten() for v in (full, approx)]
        return float(full.detach()), float(approx.detach()), torch.nn.functional.cosine_similarity(*grads, dim=0)

    far = load_model(refs[0], trainable=True)                      # random init: far from the teacher
    with torch.no_grad():
        p = torch.log_softmax(teacher(**batch.model_inputs()).logits.double()[mask], -1).exp()
        q = torch.log_softmax(far(**batch.model_inputs()).logits.double()[mask], -1).exp()
    top = torch.zeros_like(p, dtype=torch.bool).scatter(-1, cached.topk_ids, True)
    p_rest, q_rest = p.masked_fill(top, 0).sum(-1), q.masked_fill(top, 0).sum(-1)
    assert 0.005 < p_rest.mean() < 0.05          # the top 64 hold most of the mass, but not all of it
    cond_p, cond_q = p.masked_fill(top, 0) / p_rest[:, None], q.masked_fill(top, 0) / q_rest[:, None]
    inside = torch.where(top | (cond_p == 0), 0.0, cond_p * (cond_p.log() - cond_q.log())).sum(-1)
    gap = float((p_rest * inside).mean())
    full, approx, cosine = losses(far, "fkl")
    assert full - approx > -2e-3                                     # merging buckets never increases KL
    assert gap > 1e-3 and abs(full - approx - gap) < 0.1 * gap      # the exact gap
    assert abs(approx - full) < 0.02 * full and cosine > 0.99

    near = load_model(refs[1], trainable=True)                      # the teacher at another temperature, perturbed
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = near.get_output_embeddings().weight
        weight.mul_(2.5).add_(0.2 * weight.std() * torch.randn(weight.shape, generator=gen))
    for name, options in (("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.5}), ("srkl", {"alpha": 0.1}),
                          ("tvd", {})):
        full, approx, cosine = losses(near, name, **options)
        assert abs(approx - full) <= 0.05 * full, (name, full, approx)
        assert cosine > 0.98, (name, float(cosine))


def test_generate_save_logits_writes_the_file(refs, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(capsys, "generate", "--model", str(refs[1].source), "--prompts", str(data), "--out",
                           str(out), "--save-logits", "64", "--batch-size", "3")
    assert code == 0, err
    path = logits_path(out)
    assert path.name == "out.logits.safetensors" and "top-64" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in records] == [r["output"] for r in RECORDS]   # given responses: no sampling
    with safe_open(str(path), framework="pt") as handle:
        meta, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    assert meta["k"] == "64" and meta["format"] == "minillm-topk-logits"
    rows = int(tensors["response_offsets"][-1])
    assert tensors["topk_ids"].shape == (rows, 64) and tensors["topk_ids"].dtype == torch.int32
    assert tensors["topk_logprobs"].dtype == torch.float16 and tensors["rest_logprob"].shape == (rows,)
    values = tensors["topk_logprobs"].float()
    assert (values[:, :-1] >= values[:, 1:]).all()                               # descending
    mass = torch.logsumexp(torch.cat([values, tensors["rest_logprob"].float()[:, None]], -1), -1)
    torch.testing.assert_close(mass, torch.zeros(rows), atol=5e-3, rtol=0)      # the k + 1 buckets sum to one
    assert len(tensors["prompt_offsets"]) == len(RECORDS) + 1


def test_generated_responses_are_cached_as_training_tokenizes_them(refs, tokenizer, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "gen.jsonl"
    code, _, err = run_cli(capsys, "generate", "--model", str(refs[1].source), "--prompts", str(data), "--out",
                           str(out), "--save-logits", "8", "--logits-over", "generated", "--max-new-tokens", "6",
                           "--seeds", "1,2")
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    cache = TeacherCache.load(logits_path(out))
    assert len(cache) == len(records) == 2 * len(RECORDS)
    examples = tokenized(tokenizer, [{**r, "output": r["generation"]} for r in records], refs[1].family)
    cache.check(examples, 384)                                   # every generated response is found


def test_save_logits_needs_an_output_file(refs, capsys):
    code, _, err = run_cli(capsys, "generate", "--model", str(refs[1].source), "--save-logits", "64")
    assert code != 0 and "--out" in err


def _distill(refs, data, cache_path, tmp_path, objective="kd", **options):
    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.runs.prepare import prepare

    config = DistillConfig(output_dir=str(tmp_path / "run"), device="cpu", teacher=str(refs[1].source),
                           student=str(refs[0].source), objective={"name": objective, **options})
    config.data.train, config.data.teacher_logits, config.data.valid_size = str(data), str(cache_path), 1
    config.train.batch_size, config.train.steps = 2, 2
    config.eval.before_after, config.eval.every = False, 0
    from minillm_cli.plugins import get_objective

    cls = get_objective(objective)
    return prepare(config, cls.Options(**options), progress=False)


def test_training_from_the_cache_never_loads_the_teacher(refs, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "out.jsonl"
    assert run_cli(capsys, "generate", "--model", str(refs[1].source), "--prompts", str(data), "--out", str(out),
                   "--save-logits", "64")[0] == 0
    import minillm_cli.models.load as models

    loaded = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda ref, **kw: loaded.append(str(ref.source)) or real(ref, **kw))
    for objective, options in (("kd", {}), ("rkl", {}), ("gkd", {"lmbda": 0.0}),
                               ("distillm", {"init_threshold": 0.0, "threshold_step": 0.0})):
        loaded.clear()
        prepared = _distill(refs, data, logits_path(out), tmp_path / objective, objective, **options)
        assert loaded == [str(refs[0].source)] and prepared.engine.teacher is None, objective
        record = prepared.engine.train_step()
        assert record["loss"] > 0 and torch.isfinite(torch.tensor(record["loss"])), objective

    with pytest.raises(MinillmError, match="lmbda=0"):
        _distill(refs, data, logits_path(out), tmp_path / "x", "gkd", lmbda=0.5)
    with pytest.raises(MinillmError, match="threshold_step=0"):
        _distill(refs, data, logits_path(out), tmp_path / "x", "distillm")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"instruction": "Something else.", "input": "", "output": "Yes."}) + "\n" * 1
                     + json.dumps({"instruction": "And more.", "input": "", "output": "No."}) + "\n")
    with pytest.raises(MinillmError, match="not in"):
        _distill(refs, other, logits_path(out), tmp_path / "y")
    with pytest.raises(MinillmError, match="no file"):
        _distill(refs, data, tmp_path / "missing.safetensors", tmp_path / "z")
