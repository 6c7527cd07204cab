// The parser in dist/sse-client.js against the shared vectors (tests/vectors/sse.json), fed whole,
// split in two at every byte offset, and byte by byte.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { SseDecoder, SseParser } from '../dist/sse-client.js';

const VECTORS = new URL('../../../tests/vectors/sse.json', import.meta.url);
const vectors = JSON.parse(readFileSync(VECTORS, 'utf8'));

/** Parses byte chunks; returns events in the vectors' shape (empty id as null). */
function parse(chunks) {
  const events = [];
  const decoder = new SseDecoder({ onEvent: (e) => events.push({ type: e.type, data: e.data, id: e.id === '' ? null : e.id }) });
  for (const chunk of chunks) decoder.push(chunk);
  decoder.end();
  return events;
}

const bytesOf = (v) => (v.input_hex !== undefined ? Buffer.from(v.input_hex, 'hex') : Buffer.from(v.input, 'utf8'));

test('vectors file is present and non-trivial', () => {
  assert.ok(vectors.length >= 20, `only ${vectors.length} vectors in ${VECTORS.pathname}`);
});

for (const v of vectors) {
  test(`vector: ${v.name}`, () => {
    const bytes = bytesOf(v);
    assert.deepEqual(parse([bytes]), v.events, 'whole input');
    for (let i = 0; i <= bytes.length; i++) {
      assert.deepEqual(parse([bytes.subarray(0, i), bytes.subarray(i)]), v.events, `split at byte ${i}`);
    }
    assert.deepEqual(parse([...bytes].map((b) => Uint8Array.of(b))), v.events, 'byte by byte');
  });
}

test('string chunks: CRLF split across pushes is one line end', () => {
  const events = [];
  const parser = new SseParser({ onEvent: (e) => events.push(e.data) });
  for (const chunk of ['data: a\r', '\n', '\r', '\ndata: b\r', '\r']) parser.push(chunk);
  assert.deepEqual(events, ['a', 'b']);
});

test('retry: digits only are reported; comments are reported', () => {
  const retries = [];
  const comments = [];
  const parser = new SseParser({ onEvent: () => {}, onRetry: (ms) => retries.push(ms), onComment: (c) => comments.push(c) });
  parser.push('retry: 1500\nretry: 15x\nretry: -1\nretry:\nretry: 20\n: heartbeat\n\n');
  assert.deepEqual(retries, [1500, 20]);
  assert.deepEqual(comments, [' heartbeat']);
});
