// SseClient (dist/sse-client.js) against node mock servers: events, resume, de-duplication, gaps,
// watchdog, status codes, cancel, metrics.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SseClient, backoffDelay, parseEventId, parseRetryAfter, proxyUrl } from '../dist/sse-client.js';
import { frame, listen, resumableServer, sleep, sseHead, tokenEvents } from './helpers/servers.mjs';

const TOKENS = Array.from({ length: 40 }, (_, i) => `t${i} `);
const FULL = TOKENS.join('');
const FAST = { baseMs: 10, capMs: 50 };

/** Runs a client, recording every emitted event by name. */
function record(client) {
  const seen = { state: [], token: [], progress: [], metadata: [], done: [], error: [], gap: [] };
  for (const name of Object.keys(seen)) client.on(name, (...args) => seen[name].push(args.length === 1 ? args[0] : args));
  return seen;
}

/** Drops the connection once `n` tokens arrived. */
function dropAfter(client, n) {
  let count = 0;
  client.on('token', () => {
    if (++count === n) client.dropConnection();
  });
}

test('streams tokens, progress and metadata, then closes on done', async (t) => {
  const server = await resumableServer({ events: tokenEvents('S', TOKENS), intervalMs: 1 });
  t.after(server.close);
  const client = new SseClient(`${server.url}/api/question/stream?question=hi`);
  const seen = record(client);
  const result = await client.start();
  assert.equal(result.text, FULL);
  assert.equal(result.state, 'closed');
  assert.equal(result.reason, 'done');
  assert.equal(result.outcome, 'done');
  assert.deepEqual(seen.state.map(([s]) => s), ['connecting', 'open', 'closed']);
  assert.equal(seen.token.length, TOKENS.length);
  assert.equal(seen.progress.at(-1).percent, 100);
  assert.deepEqual(seen.metadata[0], ['thinking', { text: 'hmm' }]);
  assert.deepEqual(seen.done, [{ total_tokens: TOKENS.length }]);
  assert.equal(client.streamId, 'S');
  assert.equal(client.lastEventId, `S:${tokenEvents('S', TOKENS).length}`);
  const { stats } = result;
  assert.equal(stats.tokens, TOKENS.length);
  assert.equal(stats.events, tokenEvents('S', TOKENS).length);
  assert.equal(stats.reconnects, 0);
  assert.ok(stats.ttftMs !== null && stats.ttftMs >= 0 && stats.ttftMs <= stats.totalMs);
  assert.ok(stats.bytes > FULL.length);
});

test('dropConnection resumes with Last-Event-ID and drops replayed duplicates', async (t) => {
  const server = await resumableServer({ events: tokenEvents('S', TOKENS), intervalMs: 3, overlap: 3 });
  t.after(server.close);
  const client = new SseClient(`${server.url}/s`, { backoff: FAST });
  dropAfter(client, 10);
  const seen = record(client);
  const result = await client.start();
  assert.equal(result.text, FULL);
  assert.equal(server.requests.length, 2);
  assert.match(server.requests[1].headers['last-event-id'], /^S:\d+$/);
  assert.equal(result.stats.reconnects, 1);
  assert.equal(result.stats.reconnectSuccesses, 1);
  assert.equal(result.stats.duplicates, 3);
  assert.deepEqual(seen.gap, []);
  assert.deepEqual(
    seen.state.map(([s, r]) => `${s}${r ? `:${r}` : ''}`),
    ['connecting', 'open', 'reconnecting:dropped', 'open', 'closed:done'],
  );
});

test('a hand-off (retry: 250 and no blank line at the end) resumes from the last event with no empty event', async (t) => {
  const events = tokenEvents('H', TOKENS);
  const half = Math.floor(events.length / 2);
  const server = await listen((req, res) => {
    sseHead(res, 'H');
    const last = req.headers['last-event-id'];
    if (!last) {
      // A heartbeat before the first event, then half the answer, then the stopping replica's line.
      res.end(`: heartbeat\n${events.slice(0, half).map(frame).join('')}retry: 250\n`);
      return;
    }
    res.end(events.slice(Number(last.split(':').pop())).map(frame).join(''));
  });
  t.after(server.close);
  const client = new SseClient(`${server.url}/s`);
  const empty = [];
  client.on('event', (e) => e.data === '' && empty.push(e));
  const result = await client.start();
  assert.equal(result.reason, 'done');
  assert.equal(result.text, FULL);
  assert.deepEqual(empty, []);
  assert.equal(server.requests.length, 2);
  assert.equal(server.requests[1].headers['last-event-id'], `H:${half}`);
});

test('a sequence gap is reported with expected and got', async (t) => {
  const server = await resumableServer({ events: tokenEvents('S', TOKENS), intervalMs: 2, skip: 2 });
  t.after(server.close);
  const client = new SseClient(`${server.url}/s`, { backoff: FAST });
  dropAfter(client, 5);
  const seen = record(client);
  await client.start();
  assert.equal(seen.gap.length, 1);
  const [gap] = seen.gap;
  assert.equal(gap.got, gap.expected + 2);
  assert.equal(Number(server.requests[1].headers['last-event-id'].split(':')[1]) + 1, gap.expected);
});

test('watchdog aborts a silent connection and resumes', async (t) => {
  const events = tokenEvents('W', ['a', 'b', 'c']);
  const server = await listen(async (req, res) => {
    sseHead(res, 'W');
    if (!req.headers['last-event-id']) {
      res.write(frame(events[0]) + frame(events[1]));
      return; // stall: no more bytes, connection left open
    }
    for (const e of events.slice(2)) res.write(frame(e));
    res.end();
  });
  t.after(server.close);
  const client = new SseClient(`${server.url}/s`, { heartbeatIntervalMs: 40, watchdogMultiplier: 2, backoff: FAST });
  const seen = record(client);
  const result = await client.start();
  assert.equal(result.text, 'abc');
  assert.ok(seen.state.some(([s, r]) => s === 'reconnecting' && r === 'heartbeat_timeout'));
  assert.equal(server.requests[1].headers['last-event-id'], 'W:2');
});

test('heartbeat comments keep the watchdog quiet', async (t) => {
  const server = await listen(async (req, res) => {
    sseHead(res, 'H');
    for (let i = 0; i < 10; i++) {
      res.write(': heartbeat\n');
      await sleep(30);
    }
    res.end(frame({ id: 'H:1', data: '{"content":"x","batch_size":1}' }) + frame({ id: 'H:2', event: 'done', data: '{}' }));
  });
  t.after(server.close);
  const client = new SseClient(`${server.url}/s`, { heartbeatIntervalMs: 50, watchdogMultiplier: 2 });
  const result = await client.start();
  assert.equal(result.reason, 'done');
  assert.equal(server.requests.length, 1);
});

/** A server answering the i-th request with `answers[i]` (status, headers) and a short SSE stream afterwards. */
function statusServer(answers) {
  let i = 0;
  return listen((req, res) => {
    const answer = answers[i++];
    if (!answer) {
      sseHead(res, 'Z');
      res.end(frame({ id: 'Z:1', data: '{"content":"ok","batch_size":1}' }) + frame({ id: 'Z:2', event: 'done', data: '{}' }));
      return;
    }
    res.writeHead(answer.status, { 'Content-Type': 'application/json', ...answer.headers });
    res.end(JSON.stringify({ error: answer.code ?? 'x', message: 'test' }));
  });
}

test('204 closes with reason done', async (t) => {
  const s = await statusServer([{ status: 204 }]);
  t.after(s.close);
  const result = await new SseClient(`${s.url}/s`).start();
  assert.deepEqual([result.state, result.reason, result.outcome], ['closed', 'done', 'done']);
});

test('410 fails with resume_unavailable', async (t) => {
  const s = await statusServer([{ status: 410, code: 'resume_unavailable' }]);
  t.after(s.close);
  const result = await new SseClient(`${s.url}/s`, { backoff: FAST }).start();
  assert.deepEqual([result.state, result.reason, result.outcome], ['failed', 'resume_unavailable', 'failed']);
  assert.equal(s.requests.length, 1);
});

test('429 waits Retry-After seconds, then retries', async (t) => {
  const s = await statusServer([{ status: 429, headers: { 'Retry-After': '1' } }]);
  t.after(s.close);
  const client = new SseClient(`${s.url}/s`, { backoff: FAST });
  const seen = record(client);
  const started = performance.now();
  const result = await client.start();
  assert.equal(result.text, 'ok');
  assert.ok(performance.now() - started >= 950, 'waited about 1 s');
  assert.ok(seen.state.some(([st, r]) => st === 'reconnecting' && r === 'http_429'));
  assert.equal(result.stats.reconnects, 1);
  assert.equal(result.stats.reconnectSuccesses, 1);
});

test('503 (stream store unavailable) waits Retry-After seconds, then resumes', async (t) => {
  const s = await statusServer([{ status: 503, code: 'store_unavailable', headers: { 'Retry-After': '1' } }]);
  t.after(s.close);
  const client = new SseClient(`${s.url}/s`, { backoff: FAST });
  const seen = record(client);
  const started = performance.now();
  const result = await client.start();
  assert.equal(result.text, 'ok');
  assert.ok(performance.now() - started >= 950, 'waited about 1 s, not the 10 ms backoff');
  assert.ok(seen.state.some(([st, r]) => st === 'reconnecting' && r === 'http_503'));
  assert.equal(result.stats.reconnects, 1);
  assert.equal(s.requests.length, 2);
});

for (const status of [400, 401, 403, 404]) {
  test(`${status} fails with http_${status} and no retry`, async (t) => {
    const s = await statusServer([{ status }]);
    t.after(s.close);
    const result = await new SseClient(`${s.url}/s`, { backoff: FAST }).start();
    assert.deepEqual([result.state, result.reason], ['failed', `http_${status}`]);
    assert.equal(s.requests.length, 1);
  });
}

test('5xx reconnects with backoff until it succeeds', async (t) => {
  const s = await statusServer([{ status: 503 }, { status: 500 }, { status: 502 }]);
  t.after(s.close);
  const client = new SseClient(`${s.url}/s`, { backoff: FAST });
  const seen = record(client);
  const result = await client.start();
  assert.equal(result.text, 'ok');
  assert.equal(result.stats.reconnects, 3);
  assert.equal(result.stats.reconnectSuccesses, 1);
  assert.deepEqual(
    seen.state.filter(([st]) => st === 'reconnecting').map(([, r]) => r),
    ['http_503', 'http_500', 'http_502'],
  );
});

test('gives up after maxAttempts consecutive failures', async (t) => {
  const s = await statusServer(Array.from({ length: 20 }, () => ({ status: 500 })));
  t.after(s.close);
  const result = await new SseClient(`${s.url}/s`, { backoff: { ...FAST, maxAttempts: 3 } }).start();
  assert.deepEqual([result.state, result.reason], ['failed', 'max_attempts']);
  assert.equal(s.requests.length, 4);
});

test('network errors reconnect; reconnect:false fails at once', async (t) => {
  const s = await listen((req, res) => res.socket.destroy());
  t.after(s.close);
  const result = await new SseClient(`${s.url}/s`, { reconnect: false }).start();
  assert.deepEqual([result.state, result.reason], ['failed', 'network_error']);
  const retried = await new SseClient(`${s.url}/s`, { backoff: { ...FAST, maxAttempts: 2 } }).start();
  assert.equal(retried.reason, 'max_attempts');
  assert.equal(retried.stats.reconnects, 2);
});

test('a 200 that is not text/event-stream fails', async (t) => {
  const s = await listen((req, res) => res.end('<html>'));
  t.after(s.close);
  const result = await new SseClient(`${s.url}/s`).start();
  assert.deepEqual([result.state, result.reason], ['failed', 'bad_content_type']);
});

test('error event: recoverable asks again from scratch, non-recoverable fails', async (t) => {
  let n = 0;
  const s = await listen((req, res) => {
    sseHead(res, `E${++n}`);
    if (n === 1) {
      res.end(frame({ id: 'E1:1', data: '{"content":"a","batch_size":1}' }) +
        frame({ id: 'E1:2', event: 'error', data: '{"code":"upstream_reset","message":"m","recoverable":true}' }));
    } else {
      res.end(frame({ id: 'E2:1', data: '{"content":"b","batch_size":1}' }) +
        frame({ id: 'E2:2', event: 'error', data: '{"code":"upstream_malformed","message":"m","recoverable":false}' }));
    }
  });
  t.after(s.close);
  const client = new SseClient(`${s.url}/s`, { backoff: FAST });
  const restarts = [];
  client.on('restart', (reason) => restarts.push([reason, client.text]));
  const seen = record(client);
  const result = await client.start();
  assert.equal(s.requests[1].headers['last-event-id'], undefined, 'a new request, not a resume');
  assert.deepEqual(restarts, [['upstream_reset', '']]);
  assert.deepEqual(seen.error.map((e) => e.code), ['upstream_reset', 'upstream_malformed']);
  assert.deepEqual([result.state, result.reason, result.outcome, result.text], ['failed', 'upstream_malformed', 'error', 'b']);
  assert.equal(client.streamId, 'E2');
});

test('POST body and headers are sent on every attempt', async (t) => {
  const events = tokenEvents('P', TOKENS.slice(0, 6));
  const s = await resumableServer({ streamId: 'P', events, intervalMs: 5 });
  t.after(s.close);
  const client = new SseClient(`${s.url}/chat`, {
    method: 'POST', body: '{"q":1}', headers: { Authorization: 'Bearer k', 'Content-Type': 'application/json' }, backoff: FAST,
  });
  dropAfter(client, 2);
  const result = await client.start();
  assert.equal(result.text, TOKENS.slice(0, 6).join(''));
  assert.equal(s.requests.length, 2);
  for (const r of s.requests) {
    assert.equal(r.method, 'POST');
    assert.equal(r.body, '{"q":1}');
    assert.equal(r.headers.authorization, 'Bearer k');
  }
});

/** A stream `abc` that sends one token and never ends, and accepts its cancel with 202. */
async function cancellableStream(t) {
  const s = await listen((req, res) => {
    if (req.method === 'POST') {
      res.writeHead(202, { 'Content-Type': 'application/json' });
      res.end('{"stream_id":"abc","cancelled":true}');
      return;
    }
    sseHead(res, 'abc');
    res.write(frame({ id: 'abc:1', data: '{"content":"x","batch_size":1}' }));
  });
  t.after(s.close);
  return s;
}

test('stop() posts cancel with the same headers, then closes', async (t) => {
  const s = await cancellableStream(t);
  const client = new SseClient(`${s.url}/api/s?q=1`, { headers: { Authorization: 'Bearer k' } });
  let stopped;
  client.on('token', () => (stopped = client.stop()));
  const result = await client.start();
  assert.equal(await stopped, true);
  assert.deepEqual([result.state, result.reason, result.outcome], ['closed', 'cancelled', 'cancelled']);
  const cancel = s.requests.find((r) => r.method === 'POST');
  assert.equal(cancel.url, '/_sse-proxy/streams/abc/cancel');
  assert.equal(cancel.headers.authorization, 'Bearer k');
});

test('stop() follows a configured route prefix', async (t) => {
  const s = await cancellableStream(t);
  const client = new SseClient(`${s.url}/api/s`, { routePrefix: '/internal/sse/' });
  let stopped;
  client.on('token', () => (stopped = client.stop()));
  await client.start();
  assert.equal(await stopped, true);
  assert.equal(s.requests.find((r) => r.method === 'POST').url, '/internal/sse/streams/abc/cancel');
});

test('reportMetrics posts exactly the protocol fields', async (t) => {
  const events = tokenEvents('M', TOKENS.slice(0, 3));
  let metrics;
  const s = await listen(async (req, res, rec) => {
    if (req.url === '/_sse-proxy/client-metrics') {
      metrics = rec;
      res.writeHead(204).end();
      return;
    }
    sseHead(res, 'M');
    res.end(events.map(frame).join(''));
  });
  t.after(s.close);
  await new SseClient(`${s.url}/s`, { reportMetrics: true }).start();
  assert.equal(metrics.method, 'POST');
  assert.equal(metrics.headers['content-type'], 'application/json');
  const body = JSON.parse(metrics.body);
  assert.deepEqual(Object.keys(body).sort(), ['outcome', 'reconnect_successes', 'reconnects', 'total_ms', 'ttft_ms']);
  assert.equal(body.outcome, 'done');
  assert.ok(Number.isInteger(body.total_ms) && body.total_ms >= 0);
  assert.ok(Buffer.byteLength(metrics.body) <= 1024);
});

test('close() while waiting to reconnect ends at once', async (t) => {
  const s = await statusServer([{ status: 503 }]);
  t.after(s.close);
  const client = new SseClient(`${s.url}/s`, { backoff: { baseMs: 60000, capMs: 60000 } });
  client.on('state', (st) => st === 'reconnecting' && setTimeout(() => client.close(), 10));
  const result = await client.start();
  assert.deepEqual([result.state, result.reason], ['closed', 'closed']);
});

test('helpers: backoff with full jitter, event ids, Retry-After, proxy URLs', () => {
  assert.equal(backoffDelay(0, 100, 1000, () => 0.999), 99);
  assert.equal(backoffDelay(3, 100, 1000, () => 0.5), 400);
  assert.equal(backoffDelay(10, 100, 1000, () => 0.999), 999);
  assert.equal(backoffDelay(5, 100, 1000, () => 0), 0);
  assert.deepEqual(parseEventId('AbC-_x:42'), { streamId: 'AbC-_x', seq: 42 });
  assert.equal(parseEventId('nocolon'), null);
  assert.equal(parseEventId('s:4x'), null);
  assert.equal(parseRetryAfter('3'), 3000);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6000);
  assert.equal(parseRetryAfter('soon'), null);
  assert.equal(proxyUrl('/api/q?x=1', '/_sse-proxy/client-metrics'), '/_sse-proxy/client-metrics');
  assert.equal(proxyUrl('http://h:1/api/q?x=1', '/_sse-proxy/streams/a/cancel'), 'http://h:1/_sse-proxy/streams/a/cancel');
});
