// Third-party OpenAI clients against an `emit = "openai"` route of the real sse-proxy binary, in
// front of a mock sse-starlette upstream: the `openai` npm package and the Vercel AI SDK's
// `streamText` with an OpenAI-compatible provider. Skipped only when run by hand without a built
// binary; under scripts/test.sh (SSE_PROXY_REQUIRE_ALL=1) a missing binary fails.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { streamText } from 'ai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { configFile, skipProxy, startProxy } from '../../test/helpers/proxy.mjs';
import { listen, sleep } from '../../test/helpers/servers.mjs';
import { starletteUpstream } from '../../test/helpers/upstream.mjs';

// Escaping of every kind: quotes, backslashes, line ends, non-ASCII, SSE look-alikes.
const PIECES = ['Hello', ',', ' "world"', ' back\\slash', '\n', 'line\r\nend', ' é 日本 😀', ' data: x', '\n\nid: 1', ' ok'];
const TOKENS = Array.from({ length: 60 }, (_, i) => PIECES[i % PIECES.length]);
const FULL = TOKENS.join('');
const MESSAGES = [{ role: 'user', content: 'hi' }];

/** A proxy with one `emit = "openai"` route, `/v1/chat/completions`, in front of `upstream`. */
async function openaiProxy(upstream, extraToml = '') {
  const config = configFile(`[upstream]
url = "${upstream.url}"

[heartbeat]
interval = "20ms"

[[stream]]
path = "/v1/chat/completions"
token_path = "/content"
model_from = "body:/model"
emit = "openai"
${extraToml}`);
  return startProxy(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
}

/** An upstream that sends `n` tokens and then breaks the connection (no last chunk). */
async function breakingUpstream(n) {
  return listen(async (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    for (const t of TOKENS.slice(0, n)) {
      res.write(`data: ${JSON.stringify({ content: t })}\r\n\r\n`);
      await sleep(5);
    }
    await sleep(50);
    res.destroy();
  });
}

describe('OpenAI clients through an emit = "openai" route', { skip: skipProxy }, () => {
  let upstream, proxy;
  before(async () => {
    // Tokens 30 ms apart with 20 ms heartbeats: the clients read heartbeat comments between chunks.
    upstream = await starletteUpstream({ tokens: TOKENS, intervalMs: 30, pingEvery: 7 });
    proxy = await openaiProxy(upstream, '[progress]\nevery_tokens = 5\nmin_interval = "0s"\n[batching]\nmax_tokens = 3\n');
  });
  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  test('the openai package streams the exact text', async () => {
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: 'not-checked', maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: 'fake-1', messages: MESSAGES, stream: true });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), FULL);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === 'fake-1'));
    const progress = chunks.filter((c) => c.sse_proxy?.progress);
    assert.ok(progress.length >= 2, `progress chunks: ${progress.length}`);
  });

  test('the Vercel AI SDK streamText reads the exact text without a validation error', async () => {
    const provider = createOpenAICompatible({ name: 'sse-proxy', baseURL: `${proxy.url}/v1`, apiKey: 'not-checked' });
    const errors = [];
    const result = streamText({
      model: provider('fake-1'),
      messages: MESSAGES,
      maxRetries: 0,
      onError: ({ error }) => errors.push(error),
    });
    let text = '';
    for await (const part of result.fullStream) {
      if (part.type === 'text-delta') text += part.text ?? part.delta ?? part.textDelta;
      if (part.type === 'error') errors.push(part.error);
    }
    assert.deepEqual(errors.map(String), []);
    assert.equal(text, FULL);
    assert.equal(await result.text, FULL);
    assert.equal(await result.finishReason, 'stop');
  });
});

describe('an error of the stream', { skip: skipProxy }, () => {
  let upstream, proxy;
  before(async () => {
    upstream = await breakingUpstream(4);
    proxy = await openaiProxy(upstream);
  });
  after(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  test('the openai package throws an APIError with the proxy code after the text before it', async () => {
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: 'not-checked', maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: 'fake-1', messages: MESSAGES, stream: true });
    let text = '';
    await assert.rejects(
      async () => {
        for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
      },
      (err) => {
        assert.ok(err instanceof OpenAI.APIError, String(err));
        assert.equal(err.code, 'upstream_reset');
        assert.equal(err.type, 'sse_proxy');
        return true;
      },
    );
    assert.equal(text, TOKENS.slice(0, 4).join(''));
  });

  test('streamText reports it as an error, not as a validation failure', async () => {
    const provider = createOpenAICompatible({ name: 'sse-proxy', baseURL: `${proxy.url}/v1`, apiKey: 'not-checked' });
    const errors = [];
    const result = streamText({ model: provider('fake-1'), messages: MESSAGES, maxRetries: 0, onError: ({ error }) => errors.push(error) });
    for await (const part of result.fullStream) {
      if (part.type === 'error') errors.push(part.error);
    }
    assert.ok(errors.length >= 1);
    const all = errors.map((e) => `${e?.message ?? ''} ${JSON.stringify(e)}`).join('\n');
    assert.doesNotMatch(all, /Type validation failed/);
    assert.match(all, /backend connection broke/);
  });
});
