"""`minillm serve` over real HTTP on 127.0.0.1: vLLM's response shapes, log-probabilities equal to the model's own,
seeded sampling, the API key, request limits, and bad requests answered with JSON errors and the right status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from conftest import REPO


def call(url, path, body=None, *, method=None, headers=None, raw=None):
    """(status, JSON body) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method=method or ("GET" if data is None else "POST"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_vllm_completion(body, prompts: int, *, k=None, echo=False, as_ids=False):
    """The shape vLLM's /v1/completions returns (id, object, created, model, choices, usage; per choice index, text,
    logprobs {tokens, token_logprobs, top_logprobs, text_offset}, finish_reason)."""
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert [c["index"] for c in body["choices"]] == list(range(prompts))
    for choice in body["choices"]:
        assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
        if k is None:
            assert choice["logprobs"] is None
            continue
        logprobs = choice["logprobs"]
        assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        n = len(logprobs["tokens"])
        assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(logprobs["text_offset"]) == n
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
        for position, (token, value, top) in enumerate(zip(*(logprobs[f] for f in ("tokens", "token_logprobs", "top_logprobs")))):
            if as_ids:
                assert token.startswith("token_id:") and int(token.split(":")[1]) >= 0
            if echo and position == 0:
                assert value is None and top is None       # nothing predicts a sequence's first token
                continue
            assert value <= 0 and len(top) <= k + 1 and all(v <= 0 for v in top.values())
            if as_ids:   # distinct keys: the top k plus the chosen token (texts of byte tokens may coincide)
                assert k <= len(top) and top[token] == value


def test_models_lists_the_served_model(served_teacher):
    status, body = call(served_teacher.url, "/models")
    assert status == 200 and body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == served_teacher.served.name and model["object"] == "model"
    assert model["max_model_len"] == 512


def test_echo_scores_the_prompt_with_the_models_own_log_probabilities(served_teacher, refs, teacher):
    sequences = [[5, 17, 33, 2, 90], [7, 8]]
    status, body = call(served_teacher.url, "/completions", {
        "model": served_teacher.served.name, "prompt": sequences, "max_tokens": 0, "echo": True, "logprobs": 3,
        "return_tokens_as_token_ids": True})
    assert status == 200
    assert_vllm_completion(body, 2, k=3, echo=True, as_ids=True)
    for sequence, choice in zip(sequences, body["choices"]):
        logprobs = choice["logprobs"]
        assert logprobs["tokens"] == [f"token_id:{t}" for t in sequence]
        with torch.no_grad():
            local = torch.log_softmax(teacher(torch.tensor([sequence])).logits[0].float(), dim=-1)
        for t in range(1, len(sequence)):
            assert logprobs["token_logprobs"][t] == pytest.approx(local[t - 1, sequence[t]].item(), abs=1e-5)
            top = local[t - 1].topk(3)
            served = sorted(logprobs["top_logprobs"][t].items(), key=lambda kv: -kv[1])[:3]
            assert [int(key.split(":")[1]) for key, _ in served] == top.indices.tolist()
            assert [v for _, v in served] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}


def test_sampling_is_seeded_batched_and_scored(served_teacher):
    body = {"prompt": ["The capital of France is", "Two plus two"], "max_tokens": 6, "temperature": 1.0,
            "top_p": 0.9, "seed": 7, "logprobs": 2}
    status, first = call(served_teacher.url, "/completions", body)
    assert status == 200
    assert_vllm_completion(first, 2, k=2)
    _, again = call(served_teacher.url, "/completions", body)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in first["choices"]]
    for choice in first["choices"]:   # a completion's tokens: as many as max_tokens unless it stopped
        assert len(choice["logprobs"]["tokens"]) == 6 or choice["finish_reason"] == "stop"
    status, greedy = call(served_teacher.url, "/completions", {"prompt": [[5, 6, 7]], "max_tokens": 3,
                                                                "temperature": 0, "echo": True})
    assert status == 200 and greedy["choices"][0]["logprobs"] is None
    assert greedy["choices"][0]["text"].startswith(served_teacher.served.tokenizer.decode([5, 6, 7]))


@pytest.mark.parametrize("body, status, param", [
    ({"max_tokens": 1}, 400, "prompt"),
    ({"prompt": [], "max_tokens": 1}, 400, "prompt"),
    ({"prompt": [[1, 2], []], "max_tokens": 1}, 400, "prompt"),
    ({"prompt": [1, 999999], "max_tokens": 1}, 400, "prompt"),
    ({"prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": 100000}, 400, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": 600}, 400, "max_tokens"),          # past the model's 512 positions
    ({"prompt": [1, 2], "max_tokens": "3"}, 400, "max_tokens"),
    ({"prompt": [1, 2], "temperature": -1}, 400, "temperature"),
    ({"prompt": [1, 2], "top_p": 0}, 400, "top_p"),
    ({"prompt": [1, 2], "logprobs": 100000}, 400, "logprobs"),
    ({"prompt": [1, 2], "echo": "yes"}, 400, "echo"),
    ({"prompt": [1, 2], "n": 2}, 400, "n"),
    ({"prompt": [1, 2], "stream": True}, 400, "stream"),
    ({"prompt": [[1]] * 65, "max_tokens": 1}, 400, "prompt"),
    ({"prompt": [1, 2], "model": "another-model"}, 404, "model"),
    ([1, 2], 400, None),
])
def test_bad_requests_get_json_errors_with_the_right_status(served_teacher, body, status, param):
    got, answer = call(served_teacher.url, "/completions", body)
    assert got == status
    error = answer["error"]
    assert error["code"] == status and error["param"] == param and error["message"] and "\n" not in error["message"]
    assert error["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]


def test_transport_errors_and_limits(served_teacher):
    url = served_teacher.url
    assert call(url, "/completions", raw=b"{not json")[0] == 400
    assert call(url, "/nowhere")[0] == 404
    assert call(url, "/completions", method="GET")[0] == 405
    status, body = call(url, "/completions", raw=b" " * (9 * 1024 * 1024))
    assert status == 413 and "at most" in body["error"]["message"]
    assert call(url, "/models")[0] == 200            # still serving after all that


def test_an_api_key_is_required_when_set(tiny_models):
    import threading

    from minillm_cli.runs.serve import make_server

    server = make_server(str(tiny_models("llama", layers=3, seed=2)), port=0, device="cpu", api_key="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = call(server.url, "/models")
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"] and "s3cret" not in json.dumps(body)
        assert call(server.url, "/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(server.url, "/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(server.url.removesuffix("/v1"), "/health")[0] == 200      # health needs no key
    finally:
        server.shutdown()
        server.server_close()


def test_the_serve_command_starts_answers_and_stops(tiny_models, tmp_path):
    """`minillm serve` itself, as a user starts it: the key from the environment, the address it prints."""
    import signal

    model = tiny_models("llama", layers=3, seed=2)
    # In-process DeepSpeed tests leave RANK / LOCAL_RANK / WORLD_SIZE in this worker's environment
    # (distributed.single_process_env); a server started with them would take itself for a launched process.
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in launcher}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MY_KEY": "k-123"})
    process = subprocess.Popen([sys.executable, "-m", "minillm_cli", "serve", str(model), "--port", "0", "--device",
                                "cpu", "--api-key-env", "MY_KEY"], stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as a terminal starts it
    try:
        line = ""
        while "serving" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "minillm serve exited before serving"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        status, body = call(url, "/completions", {"prompt": [[5, 6]], "max_tokens": 2},
                            headers={"Authorization": "Bearer k-123"})
        assert status == 200 and len(body["choices"]) == 1
        process.send_signal(signal.SIGINT)
        # communicate drains stderr while waiting: a server that logs more than a pipe holds must not block on it
        _, rest = process.communicate(timeout=120)
        assert process.returncode == 0, rest[-2000:]
        assert "k-123" not in rest
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_without_the_key_variable_is_a_one_line_error(capsys, monkeypatch):
    from conftest import run_cli

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code, _, err = run_cli(capsys, "serve", "some-model", "--api-key-env", "NO_SUCH_KEY_VAR")
    assert code == 2 and err.strip() == ("error: --api-key-env NO_SUCH_KEY_VAR: the environment variable "
                                         "NO_SUCH_KEY_VAR is unset or empty; export NO_SUCH_KEY_VAR=... first")
