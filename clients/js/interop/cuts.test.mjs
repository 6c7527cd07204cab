// Third-party SSE clients read a re-framed stream through a relay that cuts the TCP connection at
// random byte offsets, often inside an event; after every cut they resume with Last-Event-ID and
// must end with the exact text, every event once, and no empty event.
//   eventsource (npm)              spec-exact EventSource for Node
//   @microsoft/fetch-event-source  takes an event's id as soon as it reads the `id:` line
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventSource } from 'eventsource';
import { configFile, skipProxy, startProxy } from '../test/helpers/proxy.mjs';
import { starletteUpstream } from '../test/helpers/upstream.mjs';
import { cuttingRelay } from './relay.mjs';

// fetch-event-source is written for browsers: it calls window.fetch, window.setTimeout and, when it
// stops, document.removeEventListener (with openWhenHidden it never listens for visibility changes).
globalThis.window ??= { fetch: globalThis.fetch, setTimeout, clearTimeout };
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };
const { fetchEventSource } = await import('@microsoft/fetch-event-source');

const TOKENS = Array.from({ length: 48 }, (_, i) => `t${i}${i % 5 === 4 ? '. ' : ' '}`);
const FULL = TOKENS.join('');
const SEEDS = [7, 1234, 99991];
const MAX_CONNECTIONS = 1000;

/** What a client saw: the text, the seq of every event in order, the empty events, the connections. */
function recorder() {
  return { text: '', seqs: [], empties: 0, connections: 0 };
}

/** Records one event (type, data, id) into `seen`. */
function record(seen, type, data, id) {
  if (data === '') {
    seen.empties++;
    return;
  }
  seen.seqs.push(Number(id.split(':').pop()));
  if (type === 'message' || type === '') seen.text += JSON.parse(data).content;
}

/** Reads `url` with the `eventsource` package until `done`. */
function readWithEventSource(url, seen) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(url, {
      fetch: (input, init) => {
        if (++seen.connections > MAX_CONNECTIONS) return Promise.reject(new Error('too many connections'));
        return fetch(input, init);
      },
    });
    for (const type of ['message', 'thinking', 'progress']) {
      es.addEventListener(type, (e) => record(seen, type, e.data, e.lastEventId));
    }
    es.addEventListener('done', (e) => {
      record(seen, 'done', e.data, e.lastEventId);
      es.close();
      resolve();
    });
    es.addEventListener('error', () => {
      if (seen.connections > MAX_CONNECTIONS) {
        es.close();
        reject(new Error('too many connections'));
      }
    });
  });
}

/** Reads `url` with `@microsoft/fetch-event-source` until `done`. */
async function readWithFetchEventSource(url, seen) {
  const ctrl = new AbortController();
  await fetchEventSource(url, {
    signal: ctrl.signal,
    openWhenHidden: true,
    onopen: async (res) => {
      seen.connections++;
      assert.equal(res.status, 200);
    },
    onmessage: (m) => {
      record(seen, m.event, m.data, m.id);
      if (m.event === 'done') ctrl.abort();
    },
    // A body that ends without `done` is a cut too: throwing here makes it retry.
    onclose: () => {
      throw new Error('closed before done');
    },
    onerror: () => {
      if (seen.connections > MAX_CONNECTIONS) throw new Error('too many connections');
      return 20;
    },
  });
}

describe('third-party clients through a cutting relay', { skip: skipProxy }, () => {
  let upstream;
  let proxy;
  before(async () => {
    upstream = await starletteUpstream({ tokens: TOKENS, intervalMs: 8, stallAfter: 20, stallMs: 300 });
    const config = configFile(`[upstream]
url = "${upstream.url}"

[resume]
client_retry = "20ms"

[heartbeat]
interval = "100ms"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
`);
    proxy = await startProxy(['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
  });
  after(() => Promise.all([proxy?.stop(), upstream?.close()]));

  const clients = [
    ['eventsource', readWithEventSource, false],
    ['@microsoft/fetch-event-source', readWithFetchEventSource, true],
  ];
  for (const [name, read, avoidIdLineEnd] of clients) {
    test(`${name}: the exact text after every cut, every event once, no empty event`, async () => {
      const target = new URL(proxy.url);
      for (const seed of SEEDS) {
        const relay = await cuttingRelay({ host: target.hostname, port: Number(target.port) }, { seed, avoidIdLineEnd });
        try {
          const seen = recorder();
          await read(`${relay.url}/api/question/stream?question=${encodeURIComponent(`${name}-${seed}`)}`, seen);
          const inside = relay.cuts.filter((c) => c.insideEvent).length;
          const lost = FULL.length - seen.text.length;
          if (process.env.INTEROP_VERBOSE) console.error(name, seed, relay.cuts.length, inside, relay.cuts.filter((c) => c.moved).length, lost, seen.empties, seen.connections);
          assert.ok(relay.cuts.length >= 10, `seed ${seed}: only ${relay.cuts.length} cuts`);
          assert.ok(inside >= 5, `seed ${seed}: only ${inside} cuts inside an event`);
          assert.equal(
            seen.text,
            FULL,
            `seed ${seed}: ${lost} characters lost over ${relay.cuts.length} cuts (${inside} inside an event)`,
          );
          assert.deepEqual(seen.seqs, seen.seqs.map((_, i) => i + 1), `seed ${seed}: every event once, in order`);
          assert.equal(seen.empties, 0, `seed ${seed}: empty events`);
        } finally {
          await relay.close();
        }
      }
    });
  }
});
