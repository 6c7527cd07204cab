// The demo page served by `sse-proxy demo`, in headless Chromium: ask, drop, resume, stop.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { SseClient } from '../dist/sse-client.js';
import { skipProxy, startProxy } from '../test/helpers/proxy.mjs';
import { launchBrowser } from './browser.mjs';

const ARTIFACTS = new URL('./artifacts/', import.meta.url);
const QUESTION = 'How does a reverse proxy resume a token stream?';

describe('demo page', { skip: skipProxy, timeout: 120000 }, () => {
  let proxy;
  let browser;
  before(async () => {
    proxy = await startProxy(['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await proxy?.stop();
  });

  test('the proxy serves the current demo/index.html (rebuild the proxy after editing it)', async () => {
    const res = await fetch(`${proxy.url}/_sse-proxy/demo`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/html/);
    assert.ok((await res.text()) === readFileSync(new URL('../demo/index.html', import.meta.url), 'utf8'), 'embedded demo page is stale');
  });

  /** Opens the demo page, failing the test on any page error. */
  async function openDemo() {
    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${proxy.url}/_sse-proxy/demo`);
    return { page, errors };
  }

  test('the answer streams fully; Drop connection resumes with the exact text; progress reaches 100%', async () => {
    const url = `${proxy.url}/api/question/stream?question=${encodeURIComponent(QUESTION)}&model=demo`;
    const reference = await new SseClient(url).start();
    assert.equal(reference.reason, 'done');
    assert.ok(reference.text.length > 50, 'the demo answer has some length');

    const { page, errors } = await openDemo();
    await page.fill('#question', QUESTION);
    await page.click('#ask');
    await page.waitForFunction(() => document.querySelector('#answer').textContent.length > 20);
    await page.click('#drop');
    const result = await page.evaluate(() =>
      window.__demo.done.then((r) => ({ state: r.state, reason: r.reason, text: r.text, stats: r.stats })),
    );
    console.log(`demo page: reconnects=${result.stats.reconnects} successes=${result.stats.reconnectSuccesses} ` +
      `events=${result.stats.events} tokens=${result.stats.tokens} bytes=${result.stats.bytes}`);
    assert.deepEqual([result.state, result.reason], ['closed', 'done']);
    assert.equal(result.text, reference.text);
    assert.equal(await page.textContent('#answer'), reference.text);
    assert.ok(result.stats.reconnects >= 1 && result.stats.reconnectSuccesses >= 1);
    assert.equal(result.stats.gaps, 0);
    assert.equal(result.stats.duplicates, 0);
    assert.equal(await page.getAttribute('#progress-bar', 'data-percent'), '100');
    assert.equal(await page.getAttribute('#state', 'data-state'), 'closed');
    assert.equal(await page.isHidden('#error'), true);
    assert.match(await page.textContent('#stats'), /Reconnects\s*[1-9]/);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.waitForTimeout(400); // let the progress bar's width transition finish
    await page.screenshot({ path: new URL('demo.png', ARTIFACTS).pathname, fullPage: true });
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('a failed stream shows the error panel; Retry asks again', async () => {
    const { page, errors } = await openDemo();
    await page.route('**/api/question/stream**', (route) =>
      route.fulfill({ status: 410, contentType: 'application/json', body: '{"error":"resume_unavailable","message":"gone"}' }));
    await page.click('#ask');
    await page.waitForSelector('#error', { state: 'visible' });
    assert.equal(await page.textContent('#error-code'), 'resume_unavailable');
    assert.equal(await page.getAttribute('#state', 'data-state'), 'failed');
    await page.unroute('**/api/question/stream**');
    await page.click('#retry');
    const result = await page.evaluate(() => window.__demo.done.then((r) => r.reason));
    assert.equal(result, 'done');
    assert.equal(await page.isHidden('#error'), true);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('Stop cancels the stream on the proxy', async () => {
    const { page, errors } = await openDemo();
    await page.fill('#question', `${QUESTION} (stop)`);
    await page.click('#ask');
    await page.waitForFunction(() => document.querySelector('#answer').textContent.length > 10);
    await page.click('#stop');
    const result = await page.evaluate(() => window.__demo.done.then((r) => ({ state: r.state, reason: r.reason })));
    assert.deepEqual(result, { state: 'closed', reason: 'cancelled' });
    assert.equal(await page.getAttribute('#state', 'data-reason'), 'cancelled');
    assert.equal(await page.isDisabled('#stop'), true);
    assert.deepEqual(errors, []);
    await page.close();
  });
});
