// useEnhancedStreaming (dist/vue.js) in a Vue effect scope against the node mock stream.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { effectScope, watch } from 'vue';
import { useEnhancedStreaming } from '../dist/vue.js';
import { listen, resumableServer, sseHead, tokenEvents } from './helpers/servers.mjs';

const TOKENS = Array.from({ length: 40 }, (_, i) => `v${i} `);

/** Runs the composable in an effect scope; counts synchronous streamContent updates. */
function mount(options) {
  const scope = effectScope();
  const s = scope.run(() => useEnhancedStreaming(options));
  let updates = 0;
  scope.run(() => watch(s.streamContent, () => updates++, { flush: 'sync' }));
  return { s, scope, updates: () => updates };
}

test('fills the reactive state from a stream, sending the given headers', async (t) => {
  const server = await resumableServer({ events: tokenEvents('V', TOKENS), intervalMs: 1 });
  t.after(server.close);
  const metadata = [];
  const { s, scope } = mount({ onMetadata: (meta, data) => metadata.push([meta, data]), backoff: { baseMs: 5 } });
  t.after(() => scope.stop());
  assert.equal(s.connectionState.value, 'idle');
  const running = s.startStreaming(`${server.url}/s`, { Authorization: 'Bearer v' });
  assert.equal(s.isStreaming.value, true);
  const result = await running;
  assert.equal(s.streamContent.value, TOKENS.join(''));
  assert.equal(s.isStreaming.value, false);
  assert.equal(s.connectionState.value, 'closed');
  assert.equal(s.progress.value.percent, 100);
  assert.equal(s.progress.value.percentageComplete, 100, 'camelCase beside the wire names');
  assert.deepEqual(s.metadata.value.thinking, { text: 'hmm' });
  assert.deepEqual(metadata, [
    [{ type: 'thinking', text: 'hmm' }, { text: 'hmm' }],
    [{ type: 'done', total_tokens: TOKENS.length }, { total_tokens: TOKENS.length }],
  ]);
  assert.equal(s.error.value, null);
  assert.deepEqual(s.stats.value, result.stats);
  assert.equal(server.requests[0].headers.authorization, 'Bearer v');
});

test('enableBatching:false updates per delta; the default coalesces per frame', async (t) => {
  const server = await resumableServer({ events: tokenEvents('B', TOKENS), intervalMs: 1 });
  t.after(server.close);
  const direct = mount({ enableBatching: false });
  await direct.s.startStreaming(`${server.url}/s`);
  assert.equal(direct.updates(), TOKENS.length, 'one update per delta');
  const batched = mount({});
  await batched.s.startStreaming(`${server.url}/s`);
  assert.equal(batched.s.streamContent.value, TOKENS.join(''));
  assert.ok(batched.updates() < TOKENS.length, `coalesced into ${batched.updates()} updates`);
});

test('enableProgress:false ignores progress; a failure fills error', async (t) => {
  const server = await resumableServer({ events: tokenEvents('P', TOKENS.slice(0, 3)) });
  t.after(server.close);
  const { s } = mount({ enableProgress: false });
  await s.startStreaming(`${server.url}/s`);
  assert.equal(s.progress.value, null);
  const gone = await listen((req, res) => res.writeHead(410).end('{"error":"resume_unavailable","message":"x"}'));
  t.after(gone.close);
  await s.startStreaming(`${gone.url}/s`);
  assert.equal(s.connectionState.value, 'failed');
  assert.equal(s.error.value.code, 'resume_unavailable');
});

test('stopStreaming posts the cancel request', async (t) => {
  const server = await listen((req, res) => {
    if (req.method === 'POST') return res.writeHead(202).end('{"cancelled":true}');
    sseHead(res, 'C');
    res.write('id: C:1\ndata: {"content":"x","batch_size":1}\n\n');
  });
  t.after(server.close);
  const { s } = mount({});
  const running = s.startStreaming(`${server.url}/s`, { Authorization: 'Bearer c' });
  await new Promise((resolve) => {
    const stop = watch(s.connectionState, (v) => v === 'open' && (stop(), resolve()));
  });
  await s.stopStreaming();
  const result = await running;
  assert.equal(result.reason, 'cancelled');
  const cancel = server.requests.find((r) => r.method === 'POST');
  assert.equal(cancel.url, '/_sse-proxy/streams/C/cancel');
  assert.equal(cancel.headers.authorization, 'Bearer c');
});

test('dropConnection resumes with Last-Event-ID and the exact text', async (t) => {
  const server = await resumableServer({ events: tokenEvents('D', TOKENS), intervalMs: 2 });
  t.after(server.close);
  const { s, scope } = mount({ backoff: { baseMs: 5 } });
  t.after(() => scope.stop());
  const running = s.startStreaming(`${server.url}/s`);
  await new Promise((resolve) => {
    const stop = watch(s.streamContent, (v) => v.length > 0 && (stop(), resolve()));
  });
  s.dropConnection();
  const result = await running;
  assert.equal(result.reason, 'done');
  assert.equal(s.streamContent.value, TOKENS.join(''));
  assert.equal(server.requests.length, 2);
  assert.match(server.requests[1].headers['last-event-id'], /^D:[0-9]+$/);
  assert.equal(s.stats.value.reconnects, 1);
  assert.equal(s.stats.value.duplicates, 0);
  assert.equal(s.stats.value.gaps, 0);
});

test('stats refresh while streaming, with the text shown', async (t) => {
  const server = await resumableServer({ events: tokenEvents('L', TOKENS), intervalMs: 2 });
  t.after(server.close);
  const { s, scope } = mount({ enableBatching: false });
  t.after(() => scope.stop());
  const seen = [];
  scope.run(() => watch(s.streamContent, (text) => seen.push([text.length, s.stats.value?.tokens]), { flush: 'sync' }));
  const running = s.startStreaming(`${server.url}/s`);
  await running;
  assert.equal(seen.length, TOKENS.length);
  // Each token is 3-4 characters; the token count shown with each text is that text's.
  for (const [i, [, tokens]] of seen.entries()) assert.equal(tokens, i + 1);
});
