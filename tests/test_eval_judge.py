"""LLM-as-judge against a scripted OpenAI-compatible server on 127.0.0.1: good replies, malformed and
out-of-range replies, a 500 then success, timeouts, a refused key; the key travels only as a Bearer header."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minillm_cli.errors import MinillmError
from minillm_cli.evaluation.judge import JudgeClient, JudgeError, build_prompt, judge, parse_scores

KEY = "sk-test-SECRET-4242"


class _Server:
    """A chat-completions endpoint that answers each request with the next scripted reply.

    A reply is a string (the assistant's text, HTTP 200), or a dict with ``status``, ``body`` (raw text) or
    ``content``, ``delay`` (seconds to wait first, for timeouts) and ``length`` (a Content-Length larger than the
    body: the connection closes mid-body). Every request is recorded.
    """

    def __init__(self):
        self.replies: list = []
        self.requests: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append({
                    "path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length)),
                })
                reply = server.replies.pop(0) if server.replies else {"status": 500, "body": "script exhausted"}
                if isinstance(reply, str):
                    reply = {"content": reply}
                time.sleep(reply.get("delay", 0))
                status = reply.get("status", 200)
                if "body" in reply:
                    body = reply["body"].encode()
                else:
                    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply["content"]}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(reply.get("length", len(body))))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:   # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MINILLM_JUDGE_API_KEY", KEY)
    s = _Server()
    yield s
    s.close()


def _items(n):
    return [
        {"instruction": f"Question {i}?", "input": "some context" if i % 2 else "", "output": f"model answer {i}",
         "reference": f"gold answer {i}"}
        for i in range(n)
    ]


def _client(server, **kwargs):
    kwargs.setdefault("backoff", 0)
    return JudgeClient(server.url, "judge-model", **kwargs)


def _assert_no_key(result, client):
    assert KEY not in json.dumps(result)
    assert KEY not in repr(client) and KEY not in str(vars(client))


def test_good_replies_give_the_ratio_and_send_the_key_as_bearer(server):
    server.replies = ["8 7\nAssistant 1 covers 3 points; 2 are wrong.", "6.5, 9", "**9/10 8/10**"]
    client = _client(server)
    result = judge(client, _items(3))
    assert result["scores"] == [{"model": 8.0, "gold": 7.0}, {"model": 6.5, "gold": 9.0}, {"model": 9.0, "gold": 8.0}]
    assert result["model_total"] == 23.5 and result["gold_total"] == 24.0
    assert result["ratio"] == pytest.approx(23.5 / 24.0)
    assert result["failures"] == 0 and result["errors"] == []
    assert len(server.requests) == 3
    request = server.requests[1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    user = body["messages"][-1]["content"]
    assert user == build_prompt("Question 1?", "some context", "model answer 1", "gold answer 1")
    # The model's response is Assistant 1, the gold one Assistant 2, as the ratio assumes.
    assert user.index("model answer 1") < user.index("gold answer 1")
    assert "[Input]" not in server.requests[0]["body"]["messages"][-1]["content"]   # empty input: no section
    _assert_no_key(result, client)


def test_malformed_and_out_of_range_replies_are_retried_then_counted_as_failures(server):
    server.replies = [
        "I think both are fine.", "Scores: 11 3", "0 5",      # item 0: three bad replies -> failure
        "7 8",                                                # item 1: fine
        "Assistant 1 is better.", "Assistant 1: 9 Assistant 2: 6",   # item 2: second attempt parses
        {"body": "<html>not json</html>"}, {"body": "short", "length": 500}, "2 2",   # item 3: bad bodies
    ]
    client = _client(server, retries=2)
    result = judge(client, _items(4))
    assert result["scores"] == [None, {"model": 7.0, "gold": 8.0}, {"model": 9.0, "gold": 6.0},
                                {"model": 2.0, "gold": 2.0}]
    assert result["failures"] == 1 and result["scored"] == 3
    assert (result["model_total"], result["gold_total"]) == (18.0, 16.0)     # the failed item is in neither
    assert result["ratio"] == pytest.approx(18 / 16)
    assert result["errors"] == [{"item": 0, "error": "unparsable reply: '0 5'"}]
    assert len(server.requests) == 9


def test_server_error_then_success_is_retried_and_echoed_keys_are_scrubbed(server):
    server.replies = [
        {"status": 500, "body": json.dumps({"error": {"message": f"overloaded; your key {KEY} is fine"}})},
        {"status": 503, "body": "busy"},
        "5 10",
    ]
    client = _client(server, retries=2)
    result = judge(client, _items(1))
    assert result["scores"] == [{"model": 5.0, "gold": 10.0}] and result["ratio"] == 0.5
    assert len(server.requests) == 3

    server.replies = [{"status": 500, "body": f"echo: Bearer {KEY}"}] * 2
    result = judge(_client(server, retries=1), _items(1))
    assert result["failures"] == 1 and result["ratio"] is None
    assert "HTTP 500" in result["errors"][0]["error"] and "***" in result["errors"][0]["error"]
    _assert_no_key(result, client)


def test_timeouts_are_retried_then_counted(server):
    server.replies = [{"content": "9 9", "delay": 0.6}, "4 8", {"content": "9 9", "delay": 0.6},
                      {"content": "9 9", "delay": 0.6}]
    client = _client(server, timeout=0.2, retries=1)
    started = time.perf_counter()
    result = judge(client, _items(2))
    assert time.perf_counter() - started < 3
    assert result["scores"] == [{"model": 4.0, "gold": 8.0}, None]   # item 0: timeout then success
    assert result["failures"] == 1
    assert "no reply within 0.2 s" in result["errors"][0]["error"]


def test_refused_key_stops_with_a_one_line_error_without_the_key(server):
    server.replies = [{"status": 401, "body": json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})}]
    with pytest.raises(JudgeError) as caught:
        judge(_client(server), _items(2))
    message = str(caught.value)
    assert isinstance(caught.value, MinillmError)
    assert "HTTP 401" in message and "$MINILLM_JUDGE_API_KEY" in message
    assert KEY not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(server.requests) == 1                  # no retry for an error that no retry fixes


def test_unreachable_endpoint_counts_failures(monkeypatch):
    import socket

    with socket.socket() as probe:                    # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = JudgeClient(f"http://127.0.0.1:{port}/v1/chat/completions", "m", retries=1, backoff=0)
    result = judge(client, _items(1))
    assert result["failures"] == 1 and "cannot reach" in result["errors"][0]["error"]


def test_client_settings_and_key_handling(server, monkeypatch):
    full = JudgeClient(server.url + "/chat/completions/", "m")
    assert full.endpoint == server.url + "/chat/completions"
    assert _client(server).endpoint == server.url + "/chat/completions"
    assert KEY not in repr(full) and "MINILLM_JUDGE_API_KEY" in repr(full)
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    server.replies = ["3 4"]
    judge(_client(server, api_key_env="OTHER_KEY"), _items(1))
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-other"
    monkeypatch.delenv("MINILLM_JUDGE_API_KEY")
    server.replies = ["3 4"]
    judge(_client(server), _items(1))
    assert "Authorization" not in server.requests[-1]["headers"]     # local servers need no key
    with pytest.raises(MinillmError, match="http"):
        JudgeClient("api.openai.com/v1", "gpt-4")
    with pytest.raises(MinillmError, match="retries"):
        JudgeClient(server.url, "m", retries=-1)
    with pytest.raises(MinillmError, match="judge item 1: field 'reference' is missing"):
        judge(_client(server), [_items(1)[0], {"instruction": "x", "output": "y"}])


@pytest.mark.parametrize("reply, expected", [
    ("8 7", (8.0, 7.0)),
    ("  \n8 7\nexplanation: 3 of 4 facts", (8.0, 7.0)),
    ("8, 7", (8.0, 7.0)),
    ("8.5 7", (8.5, 7.0)),
    ("8/10 7/10", (8.0, 7.0)),
    ("**9 6**", (9.0, 6.0)),
    ("Scores: 10 1", (10.0, 1.0)),
    ("Assistant 1: 9, Assistant 2: 6", (9.0, 6.0)),
    ("8", None),
    ("8 7 6", None),
    ("no numbers here", None),
    ("11 3", None),
    ("0 5", None),
    ("-1 5", None),
    ("", None),
    ("Here is my review.\n8 7", None),               # scores must be on the first line
])
def test_parse_scores(reply, expected):
    assert parse_scores(reply) == expected
