"""The official `openai` Python SDK reading an `emit = "openai"` route of the real proxy binary.

scripts/test.sh runs this file after building the proxy and exports SSE_PROXY_BIN. By hand:

    SSE_PROXY_BIN=../../target/debug/sse-proxy .venv/bin/python -m pytest -q test_openai_sdk.py

Without SSE_PROXY_BIN the tests skip, unless SSE_PROXY_REQUIRE_ALL=1 or CI is set: then they fail.
The upstream is a mock speaking the proxy's native token events, so what the SDK sees is the
proxy's own encoding of the stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from openai import OpenAI

# Tokens exercising escaping: quotes, backslashes, newlines, CR, non-ASCII, SSE look-alikes.
TOKENS = ["Hello", ",", " \"world\"", " back\\slash", "\n", "line\r\nend", " é 日本 😀", " data: x", "\n\nid: 1", " ok"]
TOKENS = TOKENS * 6
EXPECTED = "".join(TOKENS)


def _require_all() -> bool:
    ci = os.environ.get("CI", "")
    return os.environ.get("SSE_PROXY_REQUIRE_ALL") == "1" or ci not in ("", "0", "false")


def _proxy_bin() -> str:
    named = os.environ.get("SSE_PROXY_BIN")
    if named:
        if not os.access(named, os.X_OK):
            pytest.fail(f"SSE_PROXY_BIN={named} is not an executable")
        return named
    if _require_all():
        pytest.fail("SSE_PROXY_REQUIRE_ALL/CI is set but SSE_PROXY_BIN is not: run scripts/test.sh")
    pytest.skip("run by hand without SSE_PROXY_BIN")


class _Upstream(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: thinking, the tokens (query `gap_ms` apart), then done;
    with `?abort=N` the connection breaks after N tokens."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        type(self).requests += 1
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        assert body.get("stream") is True, body
        query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
        gap = int(query.get("gap_ms", "0")) / 1000
        abort = int(query["abort"]) if "abort" in query else None
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        # Chunked: a connection closed without the last chunk is a broken answer, not its end.
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self._event("thinking", {"status": "thinking"})
        for i, tok in enumerate(TOKENS):
            if abort is not None and i == abort:
                self.wfile.flush()
                time.sleep(0.05)
                self.connection.shutdown(2)
                return
            if gap:
                time.sleep(gap)
            self._event(None, {"content": tok})
        self._event("done", {"status": "complete"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _event(self, name, data):
        head = f"event: {name}\r\n" if name else ""
        raw = f"{head}data: {json.dumps(data)}\r\n\r\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()


@pytest.fixture()
def upstream():
    _Upstream.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _start_proxy(upstream: str, extra: str = ""):
    binary = _proxy_bin()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(
        f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
url = "{upstream}"

[[stream]]
path = "/v1/chat/completions"
token_path = "/content"
model_from = "body:/model"
emit = "openai"
{extra}
"""
    )
    cfg.close()
    proc = subprocess.Popen([binary, "--config", cfg.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the proxy printed no address line: {proc.stderr.read()}")
    return proc, f"http://{json.loads(line)['listening']}"


@pytest.fixture()
def proxy(upstream):
    procs = []

    def start(extra: str = ""):
        proc, url = _start_proxy(upstream, extra)
        procs.append(proc)
        return url

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0, timeout=20)


def _create(client: OpenAI, query: str = "", **kw):
    return client.chat.completions.create(
        model="fake-1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_query=dict(p.split("=", 1) for p in query.split("&") if p) or None,
        **kw,
    )


def test_sdk_reads_the_exact_text(proxy):
    url = proxy()
    chunks = list(_create(_client(url)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.model == "fake-1" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    # The proxy's own fields ride along as extra fields of the chunk.
    assert chunks[0].model_extra["sse_proxy"]["thinking"] == {"status": "thinking"}


def test_sdk_reads_through_progress_and_heartbeats(proxy):
    url = proxy('[heartbeat]\ninterval = "20ms"\n[progress]\nevery_tokens = 3\nmin_interval = "0s"\n[batching]\nmax_tokens = 2\n')
    chunks = list(_create(_client(url), "gap_ms=30"))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    progress = [c.model_extra["sse_proxy"]["progress"] for c in chunks if "progress" in (c.model_extra or {}).get("sse_proxy", {})]
    assert len(progress) >= 2
    assert all(p["tokens"] > 0 for p in progress)


def test_sdk_raises_the_proxys_error(proxy):
    url = proxy()
    seen = []
    with pytest.raises(openai.APIError) as err:
        for c in _create(_client(url), "abort=5&gap_ms=5"):
            seen.append(c.choices[0].delta.content or "")
    assert "".join(seen) == "".join(TOKENS[:5])
    assert err.value.code == "upstream_reset"
    assert err.value.type == "sse_proxy"
    assert err.value.message


def test_cut_then_sdk_resumes_with_last_event_id(proxy):
    url = proxy()
    body = {"model": "fake-1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    # Read a few events by hand and cut the connection inside the stream.
    first, last_id = "", None
    with httpx.stream("POST", f"{url}/v1/chat/completions?gap_ms=20", json=body, timeout=20) as r:
        assert r.status_code == 200
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                first += delta.get("content") or ""
            elif line.startswith("id: "):
                last_id = line[4:]
                events += 1
                if events == 6:
                    break
    assert last_id and first
    # The SDK resumes with Last-Event-ID and gets exactly the rest.
    rest = _create(_client(url), "gap_ms=20", extra_headers={"Last-Event-ID": last_id})
    chunks = list(rest)
    assert first + "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert _Upstream.requests == 1, "the resume was answered from the proxy's log"
