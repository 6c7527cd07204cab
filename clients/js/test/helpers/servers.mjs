// Small HTTP servers for tests: a generic listener and a mock of the proxy's downstream stream.
import { createServer } from 'node:http';

/** Starts an HTTP server on 127.0.0.1:0; `requests` records every request (method, url, headers, body). */
export async function listen(handler) {
  const requests = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const record = { method: req.method, url: req.url, headers: req.headers, body };
      requests.push(record);
      handler(req, res, record);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/** Formats one event as the proxy does: `event:`, `data:` lines, then `id:` last. */
export function frame({ id, event, data }) {
  let out = event ? `event: ${event}\n` : '';
  for (const line of data.split('\n')) out += `data: ${line}\n`;
  if (id) out += `id: ${id}\n`;
  return out + '\n';
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** SSE response headers of the proxy. */
export function sseHead(res, streamId) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Stream-Id': streamId });
  // A field of the first event, as the proxy sends it: no blank line of its own.
  res.write('retry: 1000\n');
}

/** A proxy-like stream of token batches + progress + done, resumable with Last-Event-ID. */
export function tokenEvents(streamId, tokens) {
  const events = tokens.map((t, i) => ({ data: JSON.stringify({ content: t, batch_size: 1 }), n: i + 1 }));
  const list = [{ event: 'thinking', data: '{"text":"hmm"}' }];
  for (const e of events) {
    list.push({ data: e.data });
    const percent = Math.round((100 * e.n) / tokens.length);
    list.push({ event: 'progress', data: JSON.stringify({ tokens: e.n, percent }) });
  }
  list.push({ event: 'done', data: JSON.stringify({ total_tokens: tokens.length }) });
  return list.map((e, i) => ({ ...e, id: `${streamId}:${i + 1}` }));
}

/**
 * Serves `events` every `intervalMs`; on `Last-Event-ID: <id>:<seq>` resumes after seq, minus `overlap`
 * already-sent events (to exercise de-duplication) and skipping `skip` events (to exercise gap reports).
 */
export async function resumableServer({ streamId = 'S', events, intervalMs = 5, overlap = 0, skip = 0 }) {
  return listen(async (req, res) => {
    const last = req.headers['last-event-id'];
    let from = 0;
    if (last) from = Math.max(0, Number(last.split(':').pop()) - overlap + skip);
    sseHead(res, streamId);
    for (const e of events.slice(from)) {
      if (res.destroyed) return;
      res.write(frame(e));
      await sleep(intervalMs);
    }
    res.end();
  });
}
