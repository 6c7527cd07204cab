// The demo page served by `sse-proxy demo`, in headless Chromium: thinking and sources shown, the
// Length and Speed controls, Drop and exact resume, the batching saving, the ETA after Stop and after a
// failure, one consistent refresh of progress and stats, no failed request in the console.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { SseClient } from '../dist/sse-client.js';
import { skipProxy, startProxy } from '../test/helpers/proxy.mjs';
import { launchBrowser } from './browser.mjs';

// Screenshots go under the cargo target directory (or $SSE_PROXY_E2E_ARTIFACTS); their paths are printed.
const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const ARTIFACTS = process.env.SSE_PROXY_E2E_ARTIFACTS ?? join(resolve(REPO, process.env.CARGO_TARGET_DIR ?? 'target'), 'e2e');
const QUESTION = 'How does a reverse proxy resume a token stream?';

/** What the page shows, read at one instant (between two of its renders). */
function readView() {
  const text = (sel) => document.querySelector(sel).textContent.trim();
  const num = (sel) => Number(text(sel));
  const progressTokens = text('#progress-tokens');
  return {
    state: document.querySelector('#state').dataset.state,
    reason: document.querySelector('#state').dataset.reason,
    eta: text('#eta'),
    percent: text('#percent'),
    progressTokens: progressTokens === '–' ? null : Number(progressTokens.split('/')[0]),
    statTokens: num('[data-stat=tokens]'),
    statEvents: num('[data-stat=events]'),
    savingTokens: num('[data-saving=tokens]'),
    upstream: num('[data-saving=upstream]'),
    downstream: num('[data-saving=downstream]'),
    saved: text('[data-saving=saved]'),
    detail: text('#saving-detail'),
  };
}

/** The progress line, the stats row and the batching saving agree with each other. */
function assertConsistent(v) {
  if (v.progressTokens !== null) assert.equal(v.progressTokens, v.statTokens, `progress line vs stats row: ${JSON.stringify(v)}`);
  assert.equal(v.savingTokens, v.statTokens, `saving vs stats row: ${JSON.stringify(v)}`);
  assert.equal(v.downstream, v.statEvents, `saving vs stats row: ${JSON.stringify(v)}`);
  const expected = v.upstream > 0 ? `${Math.round(100 * (1 - v.downstream / v.upstream))}%` : '–';
  assert.equal(v.saved, expected, JSON.stringify(v));
}

describe('demo page', { skip: skipProxy, timeout: 180000 }, () => {
  let proxy;
  let browser;
  before(async () => {
    proxy = await startProxy(['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
    browser = await launchBrowser();
    mkdirSync(ARTIFACTS, { recursive: true });
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

  /**
   * Opens the demo page. `errors` collects page errors, console errors (a failed request, e.g. a
   * 404 favicon, is one) and every response of 400 or more; `streams` the stream requests made.
   */
  async function openDemo() {
    const page = await browser.context.newPage();
    const errors = [];
    const streams = [];
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && errors.push(`console: ${m.text()} (${m.location().url})`));
    page.on('response', (r) => r.status() >= 400 && errors.push(`${r.status()} ${r.url()}`));
    page.on('request', (r) => r.url().includes('/api/question/stream') && streams.push(new URL(r.url())));
    await page.goto(`${proxy.url}/_sse-proxy/demo`);
    return { page, errors, streams };
  }

  /** Sets the Speed slider as a person would drag it. */
  async function setSpeed(page, tokensPerSecond) {
    await page.$eval('#speed', (el, v) => {
      el.value = String(v);
      el.dispatchEvent(new Event('input', { bubbles: true }));
    }, tokensPerSecond);
    assert.equal(await page.textContent('#speed-value'), `${tokensPerSecond} tok/s`);
  }

  /** Waits for the page's next animation frame (its refreshes run in one). */
  async function nextFrame(page) {
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  }

  /** Waits until the page shows an ETA in time units (progress has come and the answer runs). */
  async function waitForEta(page) {
    await page.waitForFunction(() => /\d+(\.\d)? (ms|s)$/.test(document.querySelector('#eta').textContent));
  }

  test('thinking and sources are shown; Drop resumes the exact text; the batching saving agrees with the stats', async () => {
    const rate = 100;
    const reference = await new SseClient(`${proxy.url}/api/question/stream?question=${encodeURIComponent(QUESTION)}&tokens=300&rate=0&think_ms=0&model=ref`).start();
    assert.equal(reference.reason, 'done');
    assert.ok(reference.stats.tokens >= 300, `the default answer is long enough to Drop and Stop by hand: ${reference.stats.tokens}`);

    const { page, errors, streams } = await openDemo();
    await page.fill('#question', QUESTION);
    await setSpeed(page, rate);
    const samples = [];
    await page.click('#ask');

    // The model thinks for about 1 s: the page shows its message before any token.
    await page.waitForSelector('#thinking', { state: 'visible' });
    assert.equal(await page.textContent('#thinking-text'), 'Reading the question and planning an answer…');
    assert.equal(await page.textContent('#answer'), '');
    samples.push(await page.evaluate(readView));
    await page.waitForSelector('#sources', { state: 'visible' });
    const links = await page.$$eval('#sources a', (as) => as.map((a) => a.href));
    assert.ok(links.includes('https://html.spec.whatwg.org/multipage/server-sent-events.html'), links.join(' '));

    await page.waitForFunction(() => document.querySelector('#answer').textContent.length > 20);
    assert.equal(await page.isHidden('#thinking'), true);
    samples.push(await page.evaluate(readView));
    await page.click('#drop');
    // Sample the page while the answer streams: each sample must agree with itself.
    for (let seen = 0; (await page.evaluate(() => window.__demo.client.state)) !== 'closed';) {
      await page.waitForFunction((n) => window.__demo.client.stats.events > n || window.__demo.client.state === 'closed', seen);
      await nextFrame(page);
      const v = await page.evaluate(readView);
      samples.push(v);
      seen = v.statEvents;
    }
    const result = await page.evaluate(() =>
      window.__demo.done.then((r) => ({ state: r.state, reason: r.reason, text: r.text, stats: r.stats, progress: window.__demo.view.progress })),
    );
    const end = await page.evaluate(readView);
    samples.push(end);
    console.log(`demo page: ${samples.length} samples; reconnects=${result.stats.reconnects} tokens=${result.stats.tokens} ` +
      `events=${result.stats.events} upstream=${end.upstream} saved=${end.saved} (${end.detail})`);
    for (const v of samples) assertConsistent(v);
    assert.ok(samples.filter((v) => v.state === 'open' && v.statTokens > 0).length >= 3, 'sampled while streaming');

    assert.deepEqual([result.state, result.reason], ['closed', 'done']);
    assert.equal(result.text, reference.text);
    assert.equal(await page.textContent('#answer'), reference.text);
    assert.ok(result.stats.reconnects >= 1 && result.stats.reconnectSuccesses >= 1);
    assert.equal(result.stats.gaps, 0);
    assert.equal(result.stats.duplicates, 0);
    assert.equal(streams[0].searchParams.get('rate'), String(rate));
    // At the end every count is the stream's own: the final progress event's token count, the
    // client's events, and the backend's thinking, sources and done passed through.
    assert.equal(end.statTokens, reference.stats.tokens);
    assert.equal(end.progressTokens, result.progress.tokens);
    assert.equal(end.statTokens, result.progress.tokens);
    assert.equal(end.statEvents, result.stats.events);
    assert.equal(end.upstream, result.stats.tokens + 3);
    assert.ok(Number.parseInt(end.saved, 10) >= 50, `batching saves events at ${rate} tokens/s: ${JSON.stringify(end)}`);
    assert.equal(end.eta, 'done');
    assert.equal(await page.getAttribute('#progress-bar', 'data-percent'), '100');
    assert.equal(await page.getAttribute('#state', 'data-state'), 'closed');
    assert.equal(await page.isHidden('#error'), true);
    assert.match(await page.textContent('#stats'), /Reconnects\s*[1-9]/);
    await page.waitForTimeout(400); // let the progress bar's width transition finish
    const shot = join(ARTIFACTS, 'demo.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`demo page screenshot: ${shot}`);
    assert.deepEqual(errors, [], 'no failed request (favicon included) and no error in the console');
    await page.close();
  });

  test('Length and Speed are passed to the synthetic model', async () => {
    const { page, errors, streams } = await openDemo();
    await page.selectOption('#length', '80');
    await setSpeed(page, 200);
    await page.click('#ask');
    const result = await page.evaluate(() => window.__demo.done.then((r) => ({ reason: r.reason, tokens: r.stats.tokens, model: window.__demo.view.progress?.model })));
    assert.equal(result.reason, 'done');
    assert.equal(streams.length, 1);
    const asked = streams[0].searchParams;
    assert.deepEqual([asked.get('tokens'), asked.get('rate'), asked.get('model')], ['80', '200', 'demo-short']);
    assert.ok(result.tokens >= 80 && result.tokens < 110, `a short answer: ${result.tokens} tokens`);
    assert.equal(result.model, 'demo-short');
    const end = await page.evaluate(readView);
    assertConsistent(end);
    assert.equal(end.statTokens, result.tokens);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('Stop cancels the stream on the proxy and clears the ETA', async () => {
    const { page, errors } = await openDemo();
    await page.fill('#question', `${QUESTION} (stop)`);
    await page.click('#ask');
    await waitForEta(page);
    assertConsistent(await page.evaluate(readView));
    await page.click('#stop');
    const result = await page.evaluate(() => window.__demo.done.then((r) => ({ state: r.state, reason: r.reason })));
    assert.deepEqual(result, { state: 'closed', reason: 'cancelled' });
    assert.equal(await page.getAttribute('#state', 'data-reason'), 'cancelled');
    assert.equal(await page.isDisabled('#stop'), true);
    await nextFrame(page); // a refresh still scheduled has run: the ETA stays cleared
    const end = await page.evaluate(readView);
    assert.equal(end.eta, '–', JSON.stringify(end));
    assertConsistent(end);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('a stream that fails mid-answer shows the error panel and clears the ETA; Retry asks again', async () => {
    const { page, errors } = await openDemo();
    await page.selectOption('#length', '80');
    await setSpeed(page, 20);
    await page.click('#ask');
    await waitForEta(page);
    // The stream can no longer be resumed: the reconnect after the drop is refused.
    await page.route('**/api/question/stream**', (route) =>
      route.fulfill({ status: 410, contentType: 'application/json', body: '{"error":"resume_unavailable","message":"gone"}' }));
    await page.click('#drop');
    await page.waitForSelector('#error', { state: 'visible' });
    assert.equal(await page.textContent('#error-code'), 'resume_unavailable');
    assert.equal(await page.getAttribute('#state', 'data-state'), 'failed');
    await nextFrame(page);
    const failed = await page.evaluate(readView);
    assert.equal(failed.eta, '–', JSON.stringify(failed));
    assertConsistent(failed);
    await page.unroute('**/api/question/stream**');
    await setSpeed(page, 200);
    await page.click('#retry');
    const result = await page.evaluate(() => window.__demo.done.then((r) => r.reason));
    assert.equal(result, 'done');
    assert.equal(await page.isHidden('#error'), true);
    assert.equal((await page.evaluate(readView)).eta, 'done');
    // The refused reconnect is the only failed request.
    assert.ok(errors.length > 0 && errors.every((e) => /\b410\b/.test(e)), errors.join('\n'));
    await page.close();
  });
});
