"""A teacher behind `minillm serve` (--teacher http://127.0.0.1:PORT/v1): the same kd loss as a local teacher with
k = the vocabulary, training without loading the teacher, SeqKD's responses from the server, the tokenizer check,
and one-line errors when the server is down, refuses, or answers nonsense."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import TRAIN, run_cli

from minillm_cli.errors import MinillmError
from minillm_cli.serving.client import CompletionsClient
from minillm_cli.serving.teacher import ServedTeacher

RECORDS = [{"instruction": p, "input": "", "output": r} for p, r in TRAIN * 2]


def connect(url, refs, tokenizer, k, **kwargs):
    from minillm_cli.models.load import load_model, logit_width

    width = logit_width(load_model(refs[0]))
    return ServedTeacher.connect(url, tokenizer, width, k, family=refs[0].family, **kwargs)


def batch_of(tokenizer):
    from minillm_cli.data.batches import make_batch

    prompts = [tokenizer(p)["input_ids"] for p, _ in TRAIN]
    responses = [tokenizer(r)["input_ids"] + [tokenizer.eos_token_id] for _, r in TRAIN]
    return make_batch(prompts, responses, tokenizer.pad_token_id)


@pytest.mark.parametrize("divergence", ["fkl", "rkl"])
def test_served_and_local_teachers_give_the_same_loss_with_k_the_vocabulary(served_teacher, refs, tokenizer, teacher,
                                                                           student, divergence):
    from minillm_cli.losses.head import distill_loss
    from minillm_cli.models.forward import forward_hidden
    from minillm_cli.models.load import logit_width

    width = logit_width(student)
    served = connect(served_teacher.url, refs, tokenizer, k=width)
    batch = batch_of(tokenizer)
    forward = forward_hidden(student, batch, width)
    local = distill_loss(divergence, forward, forward_hidden(teacher, batch, width), batch.loss_mask)
    local_grad = torch.autograd.grad(local, forward.hidden, retain_graph=True)[0]
    remote = served.for_batch(batch).distill_loss(divergence, forward, batch.loss_mask)
    remote_grad = torch.autograd.grad(remote, forward.hidden)[0]
    assert remote.item() == pytest.approx(local.item(), rel=1e-5)
    torch.testing.assert_close(remote_grad, local_grad, rtol=1e-4, atol=1e-7)
    # With the server's default k (20 of 384 entries) the k + 1 buckets lose the divergence inside the rest bucket.
    topk = connect(served_teacher.url, refs, tokenizer, k=20).for_batch(batch)
    assert topk.topk_ids.shape == (batch.num_tokens, 20)
    if divergence == "fkl":
        assert 0 < topk.distill_loss("fkl", forward, batch.loss_mask).item() <= local.item() + 1e-6


def _distill(url, refs, tmp_path, objective="kd", teacher_topk=20, **options):
    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.plugins import get_objective
    from minillm_cli.runs.prepare import prepare

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = DistillConfig(output_dir=str(tmp_path / "run"), device="cpu", teacher=url, student=str(refs[0].source),
                           teacher_topk=teacher_topk, objective={"name": objective, **options})
    config.data.train, config.data.valid_size = str(data), 1
    config.train.batch_size, config.train.steps = 2, 2
    config.generation.max_new_tokens = 6
    config.eval.before_after, config.eval.every = False, 0
    return prepare(config, get_objective(objective).Options(**options), progress=False)


def test_token_level_objectives_train_against_the_server_without_loading_the_teacher(served_teacher, refs, tmp_path,
                                                                                     monkeypatch):
    import minillm_cli.models.load as models

    loaded = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda ref, **kw: loaded.append(str(ref.source)) or real(ref, **kw))
    # Gold responses, student samples (gkd λ 1) and teacher samples from the server (gkd seq_kd) alike.
    for number, (objective, options) in enumerate((
            ("kd", {}), ("rkl", {}), ("gkd", {"lmbda": 0.0}), ("distillm", {"init_threshold": 0.0, "threshold_step": 0.0}),
            ("gkd", {"lmbda": 1.0}), ("gkd", {"lmbda": 0.0, "seq_kd": True}))):
        loaded.clear()
        prepared = _distill(served_teacher.url, refs, tmp_path / str(number), objective, **options)
        assert loaded == [str(refs[0].source)] and prepared.engine.teacher is None, objective
        assert prepared.teacher_ref.spec == served_teacher.url
        record = prepared.engine.train_step()
        assert record["loss"] > 0 and torch.isfinite(torch.tensor(record["loss"])), objective


def test_a_served_teacher_needs_a_named_student(served_teacher, refs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "distill", "--teacher", served_teacher.url, "--output-dir", str(tmp_path / "run"))
    assert code == 2 and err.startswith(f"error: teacher {served_teacher.url} is served: name the student")


def test_distill_kd_and_seqkd_from_the_command_line(served_teacher, refs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    requests = []
    real = CompletionsClient.complete
    monkeypatch.setattr(CompletionsClient, "complete", lambda self, body: requests.append(body) or real(self, body))
    common = ["--teacher", served_teacher.url, "--student", str(refs[0].source), "--steps", "1", "--device", "cpu",
              "--no-progress", f"data.train={data}", "train.batch_size=2", "data.valid_size=1",
              "eval.before_after=false", "eval.every=0", "generation.max_new_tokens=5"]
    code, _, err = run_cli(capsys, "distill", "-o", "kd", "--output-dir", str(tmp_path / "kd"), *common)
    assert code == 0, err
    assert requests and all(r["echo"] and r["max_tokens"] == 0 and r["logprobs"] == 20 for r in requests)
    info = json.loads((tmp_path / "kd" / "run_info.json").read_text())
    assert info["models"]["teacher"] == {"source": served_teacher.url, "family": "llama", "files": None}

    requests.clear()
    code, _, err = run_cli(capsys, "distill", "-o", "seqkd", "--output-dir", str(tmp_path / "seqkd"), *common)
    assert code == 0, err
    sampled = [r for r in requests if r["max_tokens"] > 0]
    assert sampled and all(r["max_tokens"] == 5 and r["logprobs"] == 0 and "seed" in r for r in sampled)
    (cache,) = (tmp_path / "home" / "seqkd").glob("seqkd-*.jsonl")
    assert len(cache.read_text().splitlines()) == len(RECORDS) - 1      # every training prompt answered once


def test_served_generations_end_like_local_ones(served_teacher, refs, tokenizer):
    from minillm_cli.models.generation import SamplingConfig

    served = connect(served_teacher.url, refs, tokenizer, k=5)
    prompts = [tokenizer(p)["input_ids"] for p, _ in TRAIN]
    sampling = SamplingConfig(max_new_tokens=4)
    first = served.generate(prompts, sampling, seed=3, batch_size=3)
    assert [g.token_ids for g in first] == [g.token_ids for g in served.generate(prompts, sampling, seed=3, batch_size=3)]
    for generation in first:
        assert tokenizer.eos_token_id not in generation.token_ids
        assert len(generation.token_ids) == 4 or generation.finished


def test_a_different_tokenizer_is_refused_by_fingerprint_and_by_probe(served_teacher, refs, tokenizer, tmp_path,
                                                                     monkeypatch):
    from minillm_cli.testing import make_tiny_tokenizer

    other = make_tiny_tokenizer(corpus=["completely different words to learn merges from"] * 3)
    with pytest.raises(MinillmError, match="tokenizer .* differs from the student's"):
        connect(served_teacher.url, refs, other, k=5)
    # A vLLM server has no fingerprint endpoint: the client tokenises a probe text on both sides instead.
    real_get = CompletionsClient.get
    monkeypatch.setattr(CompletionsClient, "get",
                        lambda self, path, missing_ok=False: None if "minillm" in path else real_get(self, path, missing_ok=missing_ok))
    assert connect(served_teacher.url, refs, tokenizer, k=5).width == 384
    with pytest.raises(MinillmError, match="tokenises a probe text differently"):
        connect(served_teacher.url, refs, other, k=5)


class _Nonsense(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>hello</html>" if self.path == "/v1/models" else b'{"data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_down_refusing_or_nonsense_servers_are_one_line_errors(served_teacher):
    import socket

    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MinillmError) as down:
        CompletionsClient(f"http://127.0.0.1:{port}/v1", retries=2, backoff=0.01).model_name()
    assert "did not answer after 3 tries" in str(down.value) and "\n" not in str(down.value)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nonsense)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(MinillmError, match="not the completions API"):
            CompletionsClient(f"http://127.0.0.1:{server.server_address[1]}/v1").model_name()
    finally:
        server.shutdown()
        server.server_close()

    client = CompletionsClient(served_teacher.url, api_key="the-key-itself")
    with pytest.raises(MinillmError) as refused:
        client.complete({"prompt": [[1, 2]], "max_tokens": 0})
    message = str(refused.value)
    assert "HTTP 400" in message and "max_tokens" in message and "the-key-itself" not in message
    with pytest.raises(MinillmError, match="http\\(s\\)://HOST:PORT/v1|API root"):
        CompletionsClient("http://127.0.0.1:8000")


@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (1.0, 0.0)])
def test_served_rollouts_match_local_ones_where_the_draws_are_the_same(served_teacher, refs, tokenizer, teacher,
                                                                      student, alpha, temperature):
    """α = 0: the student draws every token, from the same generator; α = 1 greedy: the teacher picks every token.
    Either way the served sampler gives the local tokens, and log p from the server equals the local teacher's."""
    from minillm_cli.models.generation import SamplingConfig
    from minillm_cli.training.rollout import sample_rollouts
    from minillm_cli.training.served_rollout import sample_served_rollouts

    served = connect(served_teacher.url, refs, tokenizer, k=5)
    prompts = [tokenizer(p)["input_ids"] for p, _ in TRAIN]
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=5)
    options = dict(alpha=alpha, seed=11, batch_size=4, vocab_width=384, coins="step")
    local = sample_rollouts(student, teacher, tokenizer, prompts, sampling, **options)
    remote = sample_served_rollouts(student, served, tokenizer, prompts, sampling, **options)
    assert remote.responses == local.responses and remote.finished == local.finished
    for name in ("old_logprobs", "teacher_logprobs", "mixed_logprobs"):
        for a, b in zip(getattr(remote, name), getattr(local, name)):
            assert a == pytest.approx(b, abs=1e-4), name


def test_minillm_trains_against_the_server(served_teacher, refs, tmp_path, monkeypatch):
    requests = []
    real = CompletionsClient.complete
    monkeypatch.setattr(CompletionsClient, "complete", lambda self, body: requests.append(body) or real(self, body))
    prepared = _distill(served_teacher.url, refs, tmp_path, "minillm", alpha=0.5, ppo_epochs=2, lm_weight=0.0)
    assert prepared.engine.teacher is None
    for _ in range(2):
        record = prepared.engine.train_step()
        assert torch.isfinite(torch.tensor(record["loss"])) and "single" in record and "pg" in record
    kinds = {(r["max_tokens"], r["logprobs"]) for r in requests}
    assert (1, 0) in kinds          # the teacher's tokens of teacher-mixed sampling
    assert (0, 0) in kinds          # log p of every sampled token (rewards, importance weights)
    assert (0, 20) in kinds         # the top 20 per token for the single-step term
    with pytest.raises(MinillmError, match="coins"):
        _distill(served_teacher.url, refs, tmp_path / "eager", "minillm", mix_coins="none").engine.train_step()


def test_a_wider_served_teacher_needs_trim_vocab_and_keys_come_from_the_environment(tiny_models, monkeypatch):
    """Qwen2.5-style padding: the same tokenizer, 400 logits served against a student's 384; and a keyed server."""
    from minillm_cli.losses.head import distill_loss
    from minillm_cli.models.forward import forward_hidden
    from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
    from minillm_cli.runs.serve import make_server

    server_ref = resolve_model(str(tiny_models("qwen2", vocab_size=400)))
    server = make_server(server_ref.source, port=0, device="cpu", api_key="sesame")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    student = resolve_model(str(tiny_models("qwen2")))
    tokenizer = load_tokenizer(student)
    try:
        monkeypatch.delenv("MINILLM_TEACHER_API_KEY", raising=False)
        with pytest.raises(MinillmError, match="HTTP 401.*set MINILLM_TEACHER_API_KEY"):
            ServedTeacher.connect(server.url, tokenizer, 384, 20, family=student.family)
        monkeypatch.setenv("MINILLM_TEACHER_API_KEY", "sesame")
        with pytest.raises(MinillmError, match="400 logits and the student 384 .* --trim-vocab"):
            ServedTeacher.connect(server.url, tokenizer, 384, 20, family=student.family)
        served = ServedTeacher.connect(server.url, tokenizer, 384, 400, family=student.family, trim=True)
        assert served.width == 384
        batch = batch_of(tokenizer)
        cached = served.for_batch(batch)
        assert cached.topk_ids.shape[1] == 384 and int(cached.topk_ids.max()) < 384
        # As a local teacher trimmed to the shared 384 entries: the padding rows' mass is left out, renormalised.
        local_student = load_model(student, trainable=True)
        forward = forward_hidden(local_student, batch, 384)
        local = distill_loss("fkl", forward, forward_hidden(load_model(server_ref), batch, 384), batch.loss_mask)
        assert cached.distill_loss("fkl", forward, batch.loss_mask).item() == pytest.approx(local.item(), rel=1e-5)
    finally:
        server.shutdown()
        server.server_close()


def test_generate_samples_and_saves_logits_from_a_served_model(served_teacher, refs, tmp_path, capsys):
    """`minillm generate --model http://…/v1 --tokenizer MODEL`: responses from the server, and a --save-logits file
    that equals the one the local teacher writes (to float16) and trains like it."""
    from safetensors.torch import load_file

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    code, _, err = run_cli(capsys, "generate", "--model", served_teacher.url, "--prompts", str(data))
    assert code == 2 and "pass --tokenizer MODEL" in err
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"
    assert run_cli(capsys, "generate", "--model", str(refs[1].source), "--prompts", str(data), "--out", str(local),
                   "--save-logits", "8")[0] == 0
    code, _, err = run_cli(capsys, "generate", "--model", served_teacher.url, "--tokenizer", str(refs[0].source),
                           "--prompts", str(data), "--out", str(served), "--save-logits", "8")
    assert code == 0, err
    a, b = (load_file(str(tmp_path / f"{n}.logits.safetensors")) for n in ("local", "served"))
    assert set(a) == set(b)
    for name in ("topk_ids", "prompt_ids", "prompt_offsets", "response_ids", "response_offsets"):
        assert torch.equal(a[name], b[name]), name
    for name in ("topk_logprobs", "rest_logprob"):
        torch.testing.assert_close(a[name].float(), b[name].float(), atol=2e-2, rtol=1e-3)
    sampled = tmp_path / "sampled.jsonl"
    code, _, err = run_cli(capsys, "generate", "--model", served_teacher.url, "--tokenizer", str(refs[0].source),
                           "--prompts", str(data), "--out", str(sampled), "--max-new-tokens", "4", "--seeds", "1,2")
    assert code == 0, err
    lines = [json.loads(line) for line in sampled.read_text().splitlines()]
    assert len(lines) == 2 * len(RECORDS) and all(r["model"] == served_teacher.url and r["num_tokens"] <= 4 for r in lines)
