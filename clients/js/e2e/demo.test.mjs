// The demo page served by `sse-proxy demo`, in headless Chromium: ask, drop, resume, stop.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
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
