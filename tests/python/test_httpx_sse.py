"""httpx-sse (the decoder the `openai` SDKs derive theirs from) reads a re-framed stream of the real
proxy without empty events: the `retry:` line rides in the first event and heartbeats are single
comment lines, so the only blank lines end events with data.

Run by scripts/test.sh with the reference backend's venv (which pins httpx-sse) after the proxy is
built: SSE_PROXY_BIN names the binary. Run by hand without it, the test is skipped; under
SSE_PROXY_REQUIRE_ALL=1 (scripts/test.sh) a missing binary fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from httpx_sse import connect_sse

TOKENS = [f"w{i}{'. ' if i % 6 == 5 else ' '}" for i in range(30)]
PAUSE = 0.5  # several heartbeat intervals: heartbeats before the first event and mid-answer


def proxy_bin() -> str:
    path = os.environ.get("SSE_PROXY_BIN", "")
    if path and os.path.exists(path):
        return path
    why = f"SSE_PROXY_BIN={path!r} names no proxy binary"
    if os.environ.get("SSE_PROXY_REQUIRE_ALL") == "1":
        pytest.fail(f"{why} (scripts/test.sh exports the binary cargo built)")
    pytest.skip(f"run by hand: {why}")


class Backend(BaseHTTPRequestHandler):
    """An sse-starlette-like backend: thinking, a pause, tokens with a pause, done."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(event: str | None, data: dict) -> None:
            head = f"event: {event}\r\n" if event else ""
            self.wfile.write(f"{head}data: {json.dumps(data)}\r\n\r\n".encode())
            self.wfile.flush()

        time.sleep(PAUSE)
        send("thinking", {"text": "Thinking about it"})
        for i, token in enumerate(TOKENS):
            if i == len(TOKENS) // 2:
                time.sleep(PAUSE)
            send(None, {"content": token})
        send("done", {"total_tokens": len(TOKENS)})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def proxy_url(tmp_path):
    binary = proxy_bin()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""[upstream]
url = "http://127.0.0.1:{backend.server_address[1]}"

[heartbeat]
interval = "100ms"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
"""
    )
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the proxy printed no address line"
        yield f"http://{json.loads(line)['listening']}"
    finally:
        proc.kill()
        proc.wait()
        backend.shutdown()
        backend.server_close()


def test_no_empty_events_and_retry_rides_in_the_first_event(proxy_url):
    with httpx.Client(timeout=20) as client:
        with connect_sse(client, "GET", f"{proxy_url}/api/question/stream?question=py") as source:
            raw_events = list(source.iter_sse())
    empty = [e for e in raw_events if e.data == ""]
    assert empty == [], f"empty events: {empty}"
    assert raw_events[0].event == "thinking"
    assert raw_events[0].retry == 1000, "the first event carries the retry"
    assert raw_events[-1].event == "done"
    text = "".join(json.loads(e.data)["content"] for e in raw_events if e.event == "message")
    assert text == "".join(TOKENS)
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in raw_events]
    assert seqs == list(range(1, len(raw_events) + 1))
