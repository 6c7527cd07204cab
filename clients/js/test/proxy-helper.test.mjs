// Where the proxy tests find the binary, and when (never under scripts/test.sh or CI) they may skip.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_PROXY_BIN, locateProxy } from './helpers/proxy.mjs';

const only = (...paths) => (p) => paths.includes(p);

test('scripts/test.sh: the exported binary is used, wherever CARGO_TARGET_DIR put it', () => {
  const env = { SSE_PROXY_REQUIRE_ALL: '1', SSE_PROXY_BIN: '/elsewhere/debug/sse-proxy' };
  assert.deepEqual(locateProxy(env, only('/elsewhere/debug/sse-proxy')), { bin: '/elsewhere/debug/sse-proxy', skip: false });
});

test('scripts/test.sh: a missing binary fails instead of skipping', () => {
  const env = { SSE_PROXY_REQUIRE_ALL: '1', SSE_PROXY_BIN: '/elsewhere/debug/sse-proxy' };
  assert.throws(() => locateProxy(env, only()), /does not exist/);
});

test('scripts/test.sh or CI without SSE_PROXY_BIN fails, even when target/debug has a binary', () => {
  for (const env of [{ SSE_PROXY_REQUIRE_ALL: '1' }, { CI: 'true' }, { CI: '1' }]) {
    assert.throws(() => locateProxy(env, only(DEFAULT_PROXY_BIN)), /SSE_PROXY_BIN is not/, JSON.stringify(env));
  }
});

test('by hand: the repository build is found, and a missing one is a printed skip', () => {
  assert.deepEqual(locateProxy({}, only(DEFAULT_PROXY_BIN)), { bin: DEFAULT_PROXY_BIN, skip: false });
  const { skip } = locateProxy({ CI: 'false' }, only());
  assert.match(skip, /^run by hand without the proxy binary/);
});

test('by hand: a named binary that does not exist fails', () => {
  assert.throws(() => locateProxy({ SSE_PROXY_BIN: '/nope/sse-proxy' }, only(DEFAULT_PROXY_BIN)), /does not exist/);
});
