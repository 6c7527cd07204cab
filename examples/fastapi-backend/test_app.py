"""Tests for the example backend: determinism, JSON escaping, SSE framing, fail_after, run.py.

    .venv/bin/pip install -r requirements-dev.txt
    .venv/bin/python -m pytest -q
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient

import app as backend

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def client(monkeypatch):
    monkeypatch.delenv("OLLAMA_URL", raising=False)
    with TestClient(backend.app) as c:
        yield c


def parse_sse(raw: bytes) -> list[dict]:
    """Minimal SSE parser over CRLF-framed bytes; returns events (comments skipped)."""
    text = raw.decode("utf-8")
    events = []
    for block in text.split("\r\n\r\n"):
        if not block:
            continue
        ev = {"event": "message", "data": []}
        lines = block.split("\r\n")
        if all(line.startswith(":") for line in lines):
            continue
        for line in lines:
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                ev["data"].append(value)
            else:
                ev[field] = value
        ev["data"] = "\n".join(ev["data"])
        events.append(ev)
    return events


# ---------------------------------------------------------------- determinism


def test_fake_tokens_deterministic_and_exact_count():
    a = backend.fake_tokens("What is SSE?", 120)
    assert a == backend.fake_tokens("What is SSE?", 120)
    assert len(a) == 120
    assert a != backend.fake_tokens("What is SSE??", 120)
    for n in (0, 1, 7, 8, 9, 500):
        assert len(backend.fake_tokens("q", n)) == n


def test_every_special_token_present():
    toks = backend.fake_tokens("anything", 120)
    for special in backend.SPECIAL_TOKENS:
        assert special in toks
    answer = "".join(toks)
    for needle in ['"', "\\", "é", "日本", "🚀", "\n"]:
        assert needle in answer


def test_answer_independent_of_pythonhashseed():
    code = "import app, hashlib; print(hashlib.sha256(app.fake_answer('stable?').encode()).hexdigest())"
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.check_output([sys.executable, "-c", code], cwd=HERE, env=env, text=True).strip())
    assert len(outs) == 1
    assert outs == {hashlib.sha256(backend.fake_answer("stable?").encode()).hexdigest()}


def test_golden_answer():
    # Pinned so a change to the fake model (which Rust tests may rely on) is deliberate.
    answer = backend.fake_answer("hello", 20)
    assert answer == (
        ' "quoted" back\\slash café x 👩\u200d💻 &a data: {not-a-field} naïve <b> λ 日本語 🚀 t\n € C 🚀ath s'
    )


# ---------------------------------------------------------------- plain endpoints


def test_text_endpoint_matches_fake_answer(client):
    r = client.get("/api/question/text", params={"question": "Why?", "tokens": 50})
    assert r.status_code == 200
    assert r.json() == {"answer": backend.fake_answer("Why?", 50), "tokens": 50}
    r = client.get("/api/question/text", params={"question": "Why?"})
    assert r.json()["tokens"] == backend.DEFAULT_TOKENS


def test_healthz(client):
    assert client.get("/healthz").json() == {"ok": True}


def test_private(client):
    r = client.get("/api/private")
    assert r.status_code == 401
    assert r.json() == {"detail": "not authenticated"}
    assert client.get("/api/private", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/api/private", headers={"Authorization": "Bearer secret"})
    assert r.status_code == 200


def test_echo(client):
    body = {"x": 'é"\\\n', "n": [1, 2]}
    r = client.post(
        "/api/echo?a=1",
        json=body,
        headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example"},
    )
    assert r.status_code == 200
    j = r.json()
    assert j["body"] == body
    assert j["query"] == "a=1"
    assert j["headers"]["x-forwarded-for"] == "10.1.2.3"
    assert j["headers"]["x-forwarded-proto"] == "https"
    assert j["headers"]["x-forwarded-host"] == "chat.example"
    assert client.post("/api/echo", content=b"not json").status_code == 400


# ---------------------------------------------------------------- stream (in-process)


def stream_bytes(client, **params) -> bytes:
    params.setdefault("rate", 0)
    with client.stream("GET", "/api/question/stream", params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return r.read()


def test_stream_framing_and_escaping(client):
    raw = stream_bytes(client, question="escape me", tokens=120)
    # CRLF line ends only, never a bare LF (token newlines are JSON-escaped).
    assert b"\n" not in raw.replace(b"\r\n", b"")
    # Non-ASCII goes out as raw UTF-8 by default.
    assert "日本".encode() in raw and "🚀".encode() in raw and "é".encode() in raw
    events = parse_sse(raw)
    assert events[0] == {"event": "thinking", "data": '{"status": "thinking"}'}
    assert events[-1] == {"event": "done", "data": '{"status": "complete"}'}
    tokens = events[1:-1]
    assert len(tokens) == 120
    assert all(e["event"] == "message" for e in tokens)
    contents = [json.loads(e["data"])["content"] for e in tokens]
    assert contents == backend.fake_tokens("escape me", 120)
    # Each data line is exactly json.dumps of the token.
    assert [e["data"] for e in tokens] == [json.dumps({"content": t}, ensure_ascii=False) for t in contents]
    assert b'{"content": " \\"quoted\\""}' in raw
    assert b'{"content": " back\\\\slash"}' in raw
    assert b'{"content": "\\n"}' in raw


def test_stream_ascii_mode(client):
    raw = stream_bytes(client, question="escape me", tokens=120, ascii=1)
    assert all(b < 0x80 for b in raw)
    assert b"\\u65e5\\u672c" in raw  # 日本
    contents = [json.loads(e["data"])["content"] for e in parse_sse(raw)[1:-1]]
    assert "".join(contents) == backend.fake_answer("escape me", 120)


def test_stream_matches_text_endpoint(client):
    raw = stream_bytes(client, question="compare")
    answer = "".join(json.loads(e["data"])["content"] for e in parse_sse(raw)[1:-1])
    assert answer == client.get("/api/question/text", params={"question": "compare"}).json()["answer"]


def test_stream_sources_event(client):
    events = parse_sse(stream_bytes(client, question="q", tokens=3, sources=1))
    assert [e["event"] for e in events] == ["thinking", "sources", "message", "message", "message", "done"]


def test_stream_rate_and_delay(client):
    t0 = time.monotonic()
    stream_bytes(client, question="q", tokens=10, rate=100, delay_first_ms=200)
    assert time.monotonic() - t0 >= 0.2 + 10 * 0.01 * 0.8


def test_fail_after_raises_in_app(monkeypatch):
    monkeypatch.delenv("OLLAMA_URL", raising=False)
    with TestClient(backend.app) as c:
        with pytest.raises(backend.AbortStream):
            stream_bytes(c, question="q", tokens=10, fail_after=3)


# ---------------------------------------------------------------- Ollama mode


class _FakeOllama(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOllama.requests.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        for tok in ["Hel", "lo", ' "wörld"', "\n", "🚀"]:
            self.wfile.write((json.dumps({"model": body["model"], "response": tok, "done": False}) + "\n").encode())
            self.wfile.flush()
        self.wfile.write((json.dumps({"model": body["model"], "response": "", "done": True}) + "\n").encode())

    def log_message(self, *a):
        pass


def test_ollama_mode(monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOllama)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OLLAMA_URL", f"http://127.0.0.1:{srv.server_address[1]}/")
        monkeypatch.setenv("OLLAMA_MODEL", "tiny")
        _FakeOllama.requests.clear()
        with TestClient(backend.app) as c:
            events = parse_sse(stream_bytes(c, question="hi"))
            assert [json.loads(e["data"])["content"] for e in events[1:-1]] == ["Hel", "lo", ' "wörld"', "\n", "🚀"]
            assert events[-1]["event"] == "done"
            stream_bytes(c, question="hi", model="other")
        assert _FakeOllama.requests[0] == ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": True})
        assert _FakeOllama.requests[1][1]["model"] == "other"
    finally:
        srv.shutdown()


# ---------------------------------------------------------------- real process via run.py


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("srv") / "port"
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_URL"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "run.py"), "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        line = json.loads(proc.stdout.readline())
        port = int(port_file.read_text())
        assert line == {"listening": f"127.0.0.1:{port}"}
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_run_py_stream_over_tcp(server):
    with httpx.stream("GET", server + "/api/question/stream", params={"question": "tcp", "rate": 0}) as r:
        raw = r.read()
    assert r.headers["transfer-encoding"] == "chunked"
    events = parse_sse(raw)
    answer = "".join(json.loads(e["data"])["content"] for e in events[1:-1])
    assert answer == httpx.get(server + "/api/question/text", params={"question": "tcp"}).json()["answer"]


def test_run_py_fail_after_gives_incomplete_body(server):
    got = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "GET", server + "/api/question/stream", params={"question": "q", "rate": 0, "fail_after": 3}
        ) as r:
            for chunk in r.iter_raw():
                got += chunk
    events = parse_sse(got)
    assert [e["event"] for e in events] == ["thinking", "message", "message", "message"]
    assert b"event: done" not in got


def test_openai_chat_completions_stream_and_non_stream(client):
    req = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 30}
    whole = client.post("/v1/chat/completions", json=req).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == backend.fake_answer("hi there", 30)
    assert whole["usage"]["completion_tokens"] == 30
    stream = {**req, "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/v1/chat/completions?rate=0", json=stream)
    assert r.headers["content-type"].startswith("text/event-stream")
    datas = [e["data"] for e in parse_sse(r.content) if "data" in e]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == backend.fake_answer("hi there", 30)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 32


@pytest.mark.parametrize("path,field", [("/api/chat", "message"), ("/api/generate", "response")])
def test_ollama_ndjson(client, path, field):
    req = {"model": "fake", "options": {"num_predict": 25}}
    if field == "message":
        req["messages"] = [{"role": "user", "content": "why"}]
    else:
        req["prompt"] = "why"
    r = client.post(path + "?rate=0", json=req)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    text = "".join(o["message"]["content"] if field == "message" else o["response"] for o in lines)
    assert text == backend.fake_answer("why", 25)
    assert [o["done"] for o in lines].count(True) == 1 and lines[-1]["done"]
    assert lines[-1]["eval_count"] == 25 and lines[-1]["done_reason"] == "stop"
    whole = client.post(path, json={**req, "stream": False}).json()
    assert whole["done"] is True
