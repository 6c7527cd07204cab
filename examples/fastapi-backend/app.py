"""Stand-in for the real LLM chat backend that sits behind sse-proxy.

FastAPI + sse-starlette's EventSourceResponse, like production. Without
OLLAMA_URL it answers with a deterministic fake model (the answer is a pure
function of the question and the requested token count); with OLLAMA_URL set
it streams from Ollama's /api/generate.

Stream wire format (sse-starlette defaults: CRLF line ends, ping comment every
15 s unless PING_SECONDS says otherwise):

    event: thinking\r\n
    data: {"status": "thinking"}\r\n
    \r\n
    data: {"content": "<token>"}\r\n        one event per token
    \r\n
    ...
    event: done\r\n
    data: {"status": "complete"}\r\n
    \r\n

See README.md for the query parameters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from typing import AsyncIterator

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

log = logging.getLogger("fastapi-backend")

app = FastAPI(title="sse-proxy example backend")

DEFAULT_TOKENS = 120
DEFAULT_RATE = 50.0
MAX_TOKENS = 100_000

# Tokens that must appear in every fake answer of at least len(SPECIAL_TOKENS)
# tokens: they exercise JSON escaping and the proxy's byte-exactness
# (multi-byte UTF-8 of 2, 3 and 4 bytes, a ZWJ emoji sequence, quotes,
# a backslash, a newline, and text that looks like SSE framing).
SPECIAL_TOKENS = [
    ' "quoted"',
    " back\\slash",
    " café",
    " 日本語",
    " 🚀",
    " 👩\u200d💻",
    "\n",
    " data: {not-a-field}",
]

WORDS = [
    "the", "model", "stream", "token", "answer", "proxy", "server", "event",
    "question", "latency", "buffer", "client", "context", "because", "which",
    "résumé", "naïve", "über", "Straße", "東京", "日本", "中文", "✓", "€",
    "😀", "🎉", "λ", "Ωmega", "it's", "\"hi\"", "C:\\path", "a\\nb", "{}",
    "[1,2]", "<b>", "&amp;", "50%", "id:", "x", "and", "or", "not",
]


def _seed(question: str) -> int:
    """Stable seed: sha256 of the question (never Python's randomized hash())."""
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")


def _word_pieces(word: str, rng: random.Random) -> list[str]:
    """Split a word into 1..4-character pieces, like a subword tokenizer."""
    pieces = []
    i = 0
    while i < len(word):
        n = rng.randint(1, 4)
        pieces.append(word[i : i + n])
        i += n
    return pieces


def fake_tokens(question: str, n: int = DEFAULT_TOKENS) -> list[str]:
    """Exactly n tokens, a pure function of (question, n)."""
    if n <= 0:
        return []
    rng = random.Random(_seed(question))
    out: list[str] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.06:
            out.append("\n")
        elif r < 0.10:
            out.append(rng.choice(SPECIAL_TOKENS))
        else:
            pieces = _word_pieces(rng.choice(WORDS), rng)
            pieces[0] = " " + pieces[0]
            out.extend(pieces)
    out = out[:n]
    # Guarantee every special token shows up when there is room for them.
    if n >= len(SPECIAL_TOKENS):
        for pos, tok in zip(rng.sample(range(n), len(SPECIAL_TOKENS)), SPECIAL_TOKENS):
            out[pos] = tok
    return out


def fake_answer(question: str, n: int = DEFAULT_TOKENS) -> str:
    return "".join(fake_tokens(question, n))


def _json(obj, ascii_only: bool) -> str:
    # One line always: json.dumps escapes \n, \r, quotes and backslashes.
    return json.dumps(obj, ensure_ascii=ascii_only)


class AbortStream(Exception):
    """Raised inside the generator to abort the response mid-body (fail_after)."""


async def _ollama_tokens(question: str, model: str) -> AsyncIterator[str]:
    import httpx  # only needed in Ollama mode

    url = os.environ["OLLAMA_URL"].rstrip("/") + "/api/generate"
    payload = {"model": model, "prompt": question, "stream": True}
    timeout = httpx.Timeout(connect=10.0, read=300.0, write=10.0, pool=10.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode("utf-8", "replace")
                raise RuntimeError(f"ollama returned {resp.status_code}: {body[:200]}")
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                msg = json.loads(line)
                if msg.get("error"):
                    raise RuntimeError(f"ollama error: {msg['error']}")
                tok = msg.get("response") or ""
                if tok:
                    yield tok
                if msg.get("done"):
                    return


async def _fake_stream(question: str, n: int, rate: float) -> AsyncIterator[str]:
    interval = 1.0 / rate if rate > 0 else 0.0
    for tok in fake_tokens(question, n):
        if interval:
            await asyncio.sleep(interval)
        else:
            await asyncio.sleep(0)  # still yield to the loop
        yield tok


def _ping_seconds() -> int | None:
    v = os.environ.get("PING_SECONDS")
    return int(v) if v not in (None, "") else None  # None = sse-starlette default (15 s)


@app.get("/api/question/stream")
async def question_stream(
    request: Request,
    question: str = Query(""),
    session_id: str | None = Query(None),
    model: str | None = Query(None),
    tokens: int = Query(DEFAULT_TOKENS, ge=0, le=MAX_TOKENS),
    rate: float = Query(DEFAULT_RATE, ge=0),
    fail_after: int | None = Query(None, ge=0),
    delay_first_ms: int = Query(0, ge=0),
    sources: bool = Query(False),
    ascii: bool = Query(False),
):
    use_ollama = bool(os.environ.get("OLLAMA_URL"))
    model_name = model or os.environ.get("OLLAMA_MODEL", "llama3")
    log.info("stream question=%r session_id=%r ollama=%s", question[:60], session_id, use_ollama)

    async def events():
        yield ServerSentEvent(data=_json({"status": "thinking"}, ascii), event="thinking")
        if sources:
            yield ServerSentEvent(
                data=_json({"sources": [{"title": "Example source", "url": "https://example.invalid/doc"}]}, ascii),
                event="sources",
            )
        if delay_first_ms:
            await asyncio.sleep(delay_first_ms / 1000.0)
        src = _ollama_tokens(question, model_name) if use_ollama else _fake_stream(question, tokens, rate)
        sent = 0
        async for tok in src:
            if fail_after is not None and sent >= fail_after:
                raise AbortStream(f"fail_after={fail_after}: aborting the response on purpose")
            yield ServerSentEvent(data=_json({"content": tok}, ascii))
            sent += 1
        if fail_after is not None and sent >= fail_after:
            # Stream was shorter than or equal to fail_after: still abort before done.
            raise AbortStream(f"fail_after={fail_after}: aborting the response on purpose")
        yield ServerSentEvent(data=_json({"status": "complete"}, ascii), event="done")

    return EventSourceResponse(events(), ping=_ping_seconds())


def _last_user_text(messages) -> str:
    """The question of a chat request: its last user message's text."""
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # OpenAI content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise HTTPException(status_code=400, detail="body is not valid JSON")
    if not isinstance(body, dict):
        raise HTTPException(status_code=400, detail="body must be a JSON object")
    return body


def _token_count(value, default: int = DEFAULT_TOKENS) -> int:
    n = value if isinstance(value, int) and not isinstance(value, bool) else default
    return max(0, min(n, MAX_TOKENS))


@app.post("/v1/chat/completions")
async def openai_chat_completions(request: Request, rate: float = Query(DEFAULT_RATE, ge=0)):
    """OpenAI-compatible Chat Completions on the fake model: `max_tokens` tokens (default 120)
    answering the last user message; `stream: true` streams chunks then `data: [DONE]`."""
    body = await _json_body(request)
    question = _last_user_text(body.get("messages"))
    n = _token_count(body.get("max_tokens"))
    model = body.get("model") or "fake"
    cid = "chatcmpl-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:24]
    created = 1_700_000_000
    prompt_tokens = len(question.split())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
    if not body.get("stream"):
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": fake_answer(question, n)},
                    "finish_reason": "length" if body.get("max_tokens") is not None else "stop",
                }
            ],
            "usage": usage,
        }
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    finish = "length" if body.get("max_tokens") is not None else "stop"

    def chunk(delta: dict, finish_reason=None) -> str:
        return _json(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            },
            False,
        )

    async def events():
        yield ServerSentEvent(data=chunk({"role": "assistant", "content": ""}))
        async for tok in _fake_stream(question, n, rate):
            yield ServerSentEvent(data=chunk({"content": tok}))
        yield ServerSentEvent(data=chunk({}, finish))
        if include_usage:
            yield ServerSentEvent(
                data=_json(
                    {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": usage},
                    False,
                )
            )
        yield ServerSentEvent(data="[DONE]")

    return EventSourceResponse(events(), ping=_ping_seconds())


def _ndjson_response(lines: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        async for obj in lines:
            yield (_json(obj, False) + "\n").encode("utf-8")

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def _ollama_fake(request: Request, rate: float, chat: bool):
    body = await _json_body(request)
    question = _last_user_text(body.get("messages")) if chat else str(body.get("prompt") or "")
    n = _token_count((body.get("options") or {}).get("num_predict"))
    model = body.get("model") or "fake"
    created_at = "2026-01-01T00:00:00Z"

    def piece(text: str) -> dict:
        if chat:
            return {"model": model, "created_at": created_at,
                    "message": {"role": "assistant", "content": text}, "done": False}
        return {"model": model, "created_at": created_at, "response": text, "done": False}

    last = {"done": True, "done_reason": "stop", "total_duration": 1000 * n + 1,
            "eval_count": n, "prompt_eval_count": len(question.split())}
    if body.get("stream") is False:
        out = piece(fake_answer(question, n))
        out.update(last)
        return out

    async def lines():
        async for tok in _fake_stream(question, n, rate):
            yield piece(tok)
        end = piece("")
        end.update(last)
        yield end

    return _ndjson_response(lines())


@app.post("/api/chat")
async def ollama_chat(request: Request, rate: float = Query(DEFAULT_RATE, ge=0)):
    """Ollama-style /api/chat on the fake model: NDJSON, `options.num_predict` tokens."""
    return await _ollama_fake(request, rate, chat=True)


@app.post("/api/generate")
async def ollama_generate(request: Request, rate: float = Query(DEFAULT_RATE, ge=0)):
    """Ollama-style /api/generate on the fake model: NDJSON, text in `response`."""
    return await _ollama_fake(request, rate, chat=False)


@app.get("/api/question/text")
async def question_text(
    question: str = Query(""),
    tokens: int = Query(DEFAULT_TOKENS, ge=0, le=MAX_TOKENS),
):
    toks = fake_tokens(question, tokens)
    return {"answer": "".join(toks), "tokens": len(toks)}


ECHO_HEADERS = [
    "host",
    "content-type",
    "content-length",
    "user-agent",
    "accept",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-request-id",
    "last-event-id",
    "connection",
    "te",
    "transfer-encoding",
]


@app.post("/api/echo")
async def echo(request: Request):
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise HTTPException(status_code=400, detail="body is not valid JSON")
    headers = {h: request.headers[h] for h in ECHO_HEADERS if h in request.headers}
    return {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "body": body,
        "headers": headers,
        "client": request.client.host if request.client else None,
    }


@app.get("/api/private")
async def private(request: Request):
    if request.headers.get("authorization") != "Bearer secret":
        return JSONResponse(
            {"detail": "not authenticated"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return {"ok": True, "user": "test"}


@app.get("/healthz")
async def healthz():
    return {"ok": True}
