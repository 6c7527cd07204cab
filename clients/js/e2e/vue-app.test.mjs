// The Vite example app (examples/vue-app) with EnhancedStreamingDemo.vue, built here and served on the
// real proxy's origin, in headless Chromium: Drop (exact text after the resume), Stop (the upstream
// request is cancelled), Retry after a failure, thinking and sources, statistics.
// The build must work: a missing `npm ci` in examples/vue-app fails these tests, it never skips them.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { configFile, skipProxy, startProxy } from '../test/helpers/proxy.mjs';
import { listen, sleep } from '../test/helpers/servers.mjs';
import { launchBrowser } from './browser.mjs';

const APP_DIR = fileURLToPath(new URL('../examples/vue-app/', import.meta.url));
const ARTIFACTS = new URL('./artifacts/', import.meta.url);
const TOKENS = Array.from({ length: 90 }, (_, i) => `t${i}${i % 9 === 8 ? '.\n' : ' '}`);
const FULL = TOKENS.join('');
const SOURCES = [{ title: 'PROTOCOL.md', url: 'https://example.com/protocol' }, { title: 'Event ids' }];
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };

/** `vite build` of the example app into a temp dir; throws with vite's output when it cannot. */
async function buildApp() {
  const vite = join(APP_DIR, 'node_modules', 'vite', 'bin', 'vite.js');
  if (!existsSync(vite)) {
    throw new Error(`no vite in ${APP_DIR}node_modules: run \`npm ci\` in clients/js/examples/vue-app (scripts/test.sh does)`);
  }
  const outDir = mkdtempSync(join(tmpdir(), 'sse-vue-app-'));
  try {
    await promisify(execFile)(process.execPath, [vite, 'build', '--outDir', outDir, '--emptyOutDir', '--logLevel', 'warn'], { cwd: APP_DIR });
  } catch (e) {
    throw new Error(`vite build of ${APP_DIR} failed:\n${e.stdout}\n${e.stderr}`);
  }
  return outDir;
}

/** A backend like the reference one: thinks, names its sources, then streams TOKENS slowly enough to press buttons. */
async function slowUpstream() {
  const state = { aborted: 0 };
  const event = (name, data) => `${name ? `event: ${name}\n` : ''}data: ${JSON.stringify(data)}\n\n`;
  const server = await listen(async (req, res) => {
    let finished = false;
    res.on('close', () => {
      if (!finished) state.aborted++;
    });
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
    res.write(event('thinking', { text: 'Reading the protocol' }));
    await sleep(600);
    res.write(event('sources', { sources: SOURCES }));
    for (const t of TOKENS) {
      if (res.destroyed) return;
      res.write(event(null, { content: t }));
      await sleep(25);
    }
    res.write(event('done', { total_tokens: TOKENS.length }));
    finished = true;
    res.end();
  });
  return { ...server, state };
}

describe('Vue example app (EnhancedStreamingDemo.vue)', { skip: skipProxy, timeout: 180000 }, () => {
  let outDir;
  let upstream;
  let proxy;
  let browser;
  before(async () => {
    outDir = await buildApp();
    upstream = await slowUpstream();
    const config = configFile(`[upstream]
url = "${upstream.url}"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
`);
    proxy = await startProxy(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await proxy?.stop();
    await upstream?.close();
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  /** Opens the built app at <proxy>/vue-app/ (its files served from the build, everything else by the proxy). */
  async function openApp() {
    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.route(`${proxy.url}/vue-app/**`, (route) => {
      const rel = normalize(new URL(route.request().url()).pathname.slice('/vue-app/'.length) || 'index.html');
      const file = join(outDir, rel);
      if (rel.startsWith('..') || !existsSync(file)) return route.fulfill({ status: 404, body: 'not found' });
      return route.fulfill({ status: 200, contentType: TYPES[extname(file)] ?? 'application/octet-stream', body: readFileSync(file) });
    });
    await page.goto(`${proxy.url}/vue-app/`);
    await page.waitForSelector('.esd');
    return { page, errors };
  }

  async function ask(page, question) {
    await page.fill('.esd-question', question);
    await page.click('.esd-ask-button');
  }

  /** Waits for the component's stream to end; returns its [state, reason]. */
  async function ended(page) {
    await page.waitForFunction(() => ['closed', 'failed'].includes(document.querySelector('.esd').dataset.state)
      && document.querySelector('.esd').dataset.reason !== '');
    return page.evaluate(() => [document.querySelector('.esd').dataset.state, document.querySelector('.esd').dataset.reason]);
  }

  const lastResult = (page) => page.evaluate(() => {
    const r = window.__vueDemoResults.at(-1);
    return { state: r.state, reason: r.reason, text: r.text, stats: r.stats };
  });

  test('thinking and sources show; Drop connection resumes with the exact text; stats and progress at the end', async () => {
    const { page, errors } = await openApp();
    await ask(page, 'drop');
    await page.waitForSelector('.esd-thinking', { state: 'visible' });
    assert.match(await page.textContent('.esd-thinking'), /Reading the protocol/);
    await page.waitForFunction(() => document.querySelector('.esd-answer').textContent.length > 40);
    assert.equal(await page.isHidden('.esd-thinking'), true, 'thinking hides once the answer streams');
    assert.deepEqual(await page.$$eval('.esd-sources li', (li) => li.map((l) => l.textContent.trim())), ['PROTOCOL.md', 'Event ids']);
    assert.equal(await page.getAttribute('.esd-sources a', 'href'), SOURCES[0].url);
    assert.notEqual(await page.textContent('.esd-eta'), '–', 'an ETA while streaming');
    await page.click('.esd-drop');

    assert.deepEqual(await ended(page), ['closed', 'done']);
    const result = await lastResult(page);
    console.log(`vue app: reconnects=${result.stats.reconnects} successes=${result.stats.reconnectSuccesses} ` +
      `events=${result.stats.events} tokens=${result.stats.tokens}`);
    assert.equal(result.text, FULL);
    assert.equal(await page.textContent('.esd-answer'), FULL);
    assert.ok(result.stats.reconnects >= 1 && result.stats.reconnectSuccesses >= 1);
    assert.equal(result.stats.gaps, 0);
    assert.equal(result.stats.duplicates, 0);
    assert.equal(await page.textContent('[data-stat=reconnects]'), String(result.stats.reconnects));
    assert.equal(await page.textContent('[data-stat=tokens]'), String(TOKENS.length));
    assert.equal(await page.textContent('[data-stat=events]'), String(result.stats.events));
    const saving = Math.round(100 * (1 - result.stats.events / result.stats.tokens));
    assert.ok(saving > 0, `the proxy batches tokens (${result.stats.events} events for ${result.stats.tokens} tokens)`);
    assert.equal(await page.textContent('[data-stat=saving]'), `${saving}%`);
    assert.match(await page.textContent('[data-stat=ttft]'), /^[0-9.]+ m?s$/);
    assert.match(await page.textContent('[data-stat=duration]'), /^[0-9.]+ m?s$/);
    assert.equal(await page.getAttribute('.esd-bar', 'data-percent'), '100');
    assert.equal(await page.textContent('.esd-eta'), '–');
    assert.equal(await page.textContent('.esd-state'), 'Done');
    assert.equal(await page.isDisabled('.esd-drop'), true);
    assert.equal(await page.isHidden('.esd-error'), true);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.waitForTimeout(400); // let the progress bar's width transition finish
    await page.screenshot({ path: new URL('vue-app.png', ARTIFACTS).pathname, fullPage: true });
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('Stop cancels the generation: the proxy closes the upstream request, the ETA clears', async () => {
    const { page, errors } = await openApp();
    const aborted = upstream.state.aborted;
    await ask(page, 'stop');
    await page.waitForFunction(() => document.querySelector('.esd-answer').textContent.length > 20);
    await page.click('.esd-stop');
    assert.deepEqual(await ended(page), ['closed', 'cancelled']);
    assert.equal(await page.textContent('.esd-state'), 'Stopped');
    assert.equal(await page.textContent('.esd-eta'), '–');
    assert.equal(await page.isDisabled('.esd-stop'), true);
    const text = await page.textContent('.esd-answer');
    assert.ok(text.length > 20 && text.length < FULL.length && FULL.startsWith(text), 'the answer stops part way');
    const deadline = Date.now() + 10000;
    while (upstream.state.aborted === aborted && Date.now() < deadline) await sleep(20);
    assert.equal(upstream.state.aborted, aborted + 1, 'the upstream request was closed');
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('a failed stream shows the error panel; Retry asks again and streams the exact text', async () => {
    const { page, errors } = await openApp();
    await page.route('**/api/question/stream**', (route) =>
      route.fulfill({ status: 410, contentType: 'application/json', body: '{"error":"resume_unavailable","message":"gone"}' }));
    await ask(page, 'retry');
    assert.deepEqual(await ended(page), ['failed', 'resume_unavailable']);
    await page.waitForSelector('.esd-error', { state: 'visible' });
    assert.equal(await page.textContent('.esd-error-code'), 'resume_unavailable');
    assert.equal(await page.textContent('.esd-state'), 'Failed');
    assert.equal(await page.textContent('.esd-eta'), '–');
    await page.unroute('**/api/question/stream**');
    await page.click('.esd-retry');
    assert.equal(await page.isHidden('.esd-error'), true, 'the error clears when the retry starts');
    assert.deepEqual(await ended(page), ['closed', 'done']);
    assert.equal(await page.textContent('.esd-answer'), FULL);
    assert.equal((await lastResult(page)).text, FULL);
    assert.equal(await page.isHidden('.esd-error'), true);
    // The 410 is the browser's own console error for a failed fetch; nothing else may fail.
    assert.deepEqual(errors.filter((e) => !/status of 410/.test(e)), []);
    await page.close();
  });
});
