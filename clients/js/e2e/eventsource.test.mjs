// Native EventSource against the proxy through a relay that cuts the TCP connection every 1-3 KiB:
// the browser's own reconnect + Last-Event-ID must yield the exact answer, then stop after `done`.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { SseClient } from '../dist/sse-client.js';
import { listen, sleep } from '../test/helpers/servers.mjs';
import { skipProxy, startProxy } from '../test/helpers/proxy.mjs';
import { launchBrowser } from './browser.mjs';

const QUESTION = 'Why do streams need resumption?';

const PAGE = `<!doctype html><meta charset="utf-8"><title>EventSource</title><script>
const s = window.__es = { text: '', opens: 0, errors: 0, done: false, readyState: 0 };
const q = new URLSearchParams(location.search).get('q');
const es = new EventSource('/api/question/stream?model=demo&question=' + encodeURIComponent(q));
es.onopen = () => { s.opens++; };
es.onerror = () => { s.errors++; s.readyState = es.readyState; };
es.onmessage = (e) => { s.text += JSON.parse(e.data).content; };
es.addEventListener('done', () => { s.done = true; });
</script>`;

/** Serves PAGE and relays /api/ to `target`, destroying the client socket after 1-3 KiB of body. */
function relay(target) {
  const log = [];
  return listen((req, res) => {
    if (req.url.startsWith('/es.html')) {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE);
      return;
    }
    if (!req.url.startsWith('/api/')) {
      res.writeHead(404).end(); // e.g. /favicon.ico
      return;
    }
    const entry = { lastEventId: req.headers['last-event-id'] ?? null, status: 0, bytes: 0, cut: false };
    log.push(entry);
    const { hostname, port } = new URL(target);
    const upstream = request({ hostname, port, path: req.url, method: req.method, headers: req.headers }, (pr) => {
      entry.status = pr.statusCode;
      res.writeHead(pr.statusCode, pr.headers);
      const limit = 1024 + Math.floor(Math.random() * 2048);
      pr.on('data', (chunk) => {
        const room = limit - entry.bytes;
        entry.bytes += Math.min(room, chunk.length);
        if (chunk.length < room) return res.write(chunk);
        entry.cut = true;
        res.write(chunk.subarray(0, room), () => res.socket?.destroy());
        pr.destroy();
      });
      pr.on('end', () => res.end());
    });
    upstream.on('error', () => res.socket?.destroy());
    upstream.end();
  }).then((server) => ({ ...server, log }));
}

describe('native EventSource through a connection-cutting relay', { skip: skipProxy, timeout: 180000 }, () => {
  let proxy;
  let browser;
  let server;
  before(async () => {
    proxy = await startProxy(['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
    server = await relay(proxy.url);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    await proxy?.stop();
  });

  test('ends with the exact full text and stops reconnecting after done (204)', async () => {
    const url = `${proxy.url}/api/question/stream?question=${encodeURIComponent(QUESTION)}&model=demo`;
    const reference = await new SseClient(url).start();
    assert.equal(reference.reason, 'done');

    const page = await browser.context.newPage();
    await page.goto(`${server.url}/es.html?q=${encodeURIComponent(QUESTION)}`);
    await page.waitForFunction(() => window.__es.done && window.__es.readyState === 2, null, { timeout: 150000 });
    const requestsAtClose = server.log.length;
    await sleep(2500);
    const es = await page.evaluate(() => window.__es);
    const reconnects = server.log.length - 1;
    const cuts = server.log.filter((e) => e.cut).length;
    console.log(`EventSource: reconnects=${reconnects} cuts=${cuts} opens=${es.opens} ` +
      `statuses=${server.log.map((e) => e.status).join(',')}`);
    assert.equal(es.text, reference.text);
    assert.ok(cuts >= 1, 'the relay cut at least one connection');
    assert.equal(server.log[0].lastEventId, null);
    assert.ok(server.log.slice(1).every((e) => e.lastEventId !== null), 'every reconnect sent Last-Event-ID');
    assert.equal(server.log.at(-1).status, 204, 'the reconnect after done is answered 204');
    assert.equal(server.log.length, requestsAtClose, 'no request after EventSource closed');
    await page.close();
  });
});
