// SseClient against the real sse-proxy binary in front of a mock sse-starlette upstream.
// Skipped only when run by hand without a built binary; under scripts/test.sh a missing binary fails.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { SseClient } from '../dist/sse-client.js';
import { configFile, skipProxy, startProxy } from './helpers/proxy.mjs';
import { starletteUpstream } from './helpers/upstream.mjs';

const TOKENS = Array.from({ length: 60 }, (_, i) => `w${i}${i % 7 === 6 ? '.\n' : ' '}`);
const FULL = TOKENS.join('');

/** Starts a mock upstream and a proxy in front of it. */
async function setup(upstreamOptions, extraToml = '') {
  const upstream = await starletteUpstream({ tokens: TOKENS, ...upstreamOptions });
  const config = configFile(`[upstream]
url = "${upstream.url}"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
${extraToml}`);
  const proxy = await startProxy(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--upstream', upstream.url]);
  return { upstream, proxy, close: async () => Promise.all([proxy.stop(), upstream.close()]) };
}

const streamUrl = (proxy, q = 'why') => `${proxy.url}/api/question/stream?question=${q}&model=m`;


describe('real proxy', { skip: skipProxy }, () => {
  let env;
  before(async () => {
    env = await setup({ intervalMs: 15 });
  });
  after(() => env?.close());

  test('streams the exact text with gapless ids, progress to 100 and one upstream request', async () => {
    const before = env.upstream.requests.length;
    const client = new SseClient(streamUrl(env.proxy, 'full'));
    const ids = [];
    const percents = [];
    client.on('event', (e) => ids.push(e.id));
    client.on('progress', (p) => percents.push(p.percent));
    const result = await client.start();
    assert.equal(result.reason, 'done');
    assert.equal(result.text, FULL);
    assert.equal(result.stats.tokens, TOKENS.length);
    assert.match(client.streamId, /^[A-Za-z0-9_-]{22}$/);
    assert.deepEqual(ids, ids.map((_, i) => `${client.streamId}:${i + 1}`));
    assert.equal(percents.at(-1), 100);
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b), 'percent never decreases');
    assert.equal(env.upstream.requests.length - before, 1);
  });

  test('dropConnection mid-stream resumes from the proxy buffer: exact text, no duplicates, no gaps', async () => {
    const before = env.upstream.requests.length;
    const client = new SseClient(streamUrl(env.proxy, 'drop'), { backoff: { baseMs: 50, capMs: 200 } });
    let n = 0;
    const gaps = [];
    client.on('gap', (g) => gaps.push(g));
    client.on('token', () => ++n === 5 && client.dropConnection());
    const result = await client.start();
    assert.equal(result.text, FULL);
    assert.equal(result.stats.reconnects, 1);
    assert.equal(result.stats.reconnectSuccesses, 1);
    assert.equal(result.stats.duplicates, 0, 'proxy replays only events after Last-Event-ID');
    assert.deepEqual(gaps, []);
    assert.equal(env.upstream.requests.length - before, 1, 'resume made no new upstream request');
  });

  test('resume after the last event of a finished stream answers 204; the client closes with done', async () => {
    const client = new SseClient(streamUrl(env.proxy, 'finished'));
    await client.start();
    const res = await fetch(streamUrl(env.proxy, 'finished'), { headers: { 'Last-Event-ID': client.lastEventId } });
    assert.equal(res.status, 204);
    const again = await new SseClient(`${streamUrl(env.proxy, 'finished')}&last_event_id=${client.lastEventId}`).start();
    assert.deepEqual([again.state, again.reason, again.text], ['closed', 'done', '']);
  });

  test('unknown stream: 410 resume_unavailable JSON; the client fails with resume_unavailable', async () => {
    const unknown = 'AAAAAAAAAAAAAAAAAAAAAA:3';
    const res = await fetch(streamUrl(env.proxy, 'x'), { headers: { 'Last-Event-ID': unknown } });
    assert.equal(res.status, 410);
    assert.equal((await res.json()).error, 'resume_unavailable');
    const result = await new SseClient(`${streamUrl(env.proxy, 'x')}&last_event_id=${unknown}`).start();
    assert.deepEqual([result.state, result.reason], ['failed', 'resume_unavailable']);
  });

  test('malformed Last-Event-ID: 400 bad_last_event_id', async () => {
    const res = await fetch(streamUrl(env.proxy, 'x'), { headers: { 'Last-Event-ID': 'no-seq-here' } });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error, 'bad_last_event_id');
  });

  test('stop() cancels on the proxy (202); a follower gets done {cancelled:true}', async () => {
    const client = new SseClient(streamUrl(env.proxy, 'stop'));
    let stopped;
    let follower;
    let n = 0;
    client.on('token', () => {
      if (++n !== 3) return;
      // Stop once the follower is attached (its response headers came back), not after a guessed delay.
      const attached = fetch(streamUrl(env.proxy, 'stop'), { headers: { 'Last-Event-ID': client.lastEventId } });
      follower = attached.then((res) => res.text());
      stopped = attached.then(() => client.stop());
    });
    const result = await client.start();
    assert.equal(await stopped, true);
    assert.equal(result.reason, 'cancelled');
    const text = await follower;
    assert.match(text, /event: done\ndata: \{[^\n]*"cancelled":\s*true/);
    const res = await fetch(`${env.proxy.url}/_sse-proxy/streams/${client.streamId}/cancel`, { method: 'POST' });
    assert.equal(res.status, 409, 'cancel of a finished stream');
  });

  test('client-metrics: exact fields accepted (204), unknown field rejected (400)', async () => {
    const post = (obj) => fetch(`${env.proxy.url}/_sse-proxy/client-metrics`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(obj),
    });
    const ok = { ttft_ms: 12, total_ms: 340, reconnects: 1, reconnect_successes: 1, outcome: 'done' };
    assert.equal((await post(ok)).status, 204);
    assert.equal((await post({ ...ok, extra: 1 })).status, 400);
  });

  test('serves the current dist/sse-client.js (rebuild the proxy after npm run build)', async () => {
    const js = await fetch(`${env.proxy.url}/_sse-proxy/client.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type'), /javascript/);
    assert.ok((await js.text()) === readFileSync(new URL('../dist/sse-client.js', import.meta.url), 'utf8'), 'embedded client.js is stale');
  });
});

describe('real proxy heartbeats', { skip: skipProxy }, () => {
  let env;
  before(async () => {
    env = await setup({ intervalMs: 5, stallAfter: 10, stallMs: 1500 }, '\n[heartbeat]\ninterval = "200ms"\n');
  });
  after(() => env?.close());

  test('a stalled upstream gets heartbeats; the watchdog stays quiet', async () => {
    const client = new SseClient(streamUrl(env.proxy, 'stall'), { heartbeatIntervalMs: 200, watchdogMultiplier: 3 });
    const result = await client.start();
    assert.equal(result.text, FULL);
    assert.equal(result.stats.reconnects, 0);
  });

  test('a watchdog tighter than the heartbeat interval reconnects during the stall and resumes exactly', async () => {
    const client = new SseClient(streamUrl(env.proxy, 'stall2'), {
      heartbeatIntervalMs: 50, watchdogMultiplier: 2, backoff: { baseMs: 20, capMs: 100, maxAttempts: 50 },
    });
    const result = await client.start();
    assert.equal(result.text, FULL);
    assert.ok(result.stats.reconnects >= 1);
    assert.equal(result.stats.duplicates, 0);
  });
});
