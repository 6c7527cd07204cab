// A TCP relay that cuts every connection after a random number of response body bytes, often
// inside an event, so the client in front has to resume with Last-Event-ID.
import { connect, createServer } from 'node:net';

/** A seeded xorshift32 generator: the same cuts on every run. */
export function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** The end of an `id:` line whose event's blank line has not come yet: `...\nid: <id>\n|\n`. */
const ID_LINE_END = /\nid: [^\n]*\n$/;

/**
 * Relays 127.0.0.1:<port> to `target` ({ host, port }); each connection is destroyed after
 * 1..`maxCut` bytes of its response body (headers always pass). With `avoidIdLineEnd`, a cut that
 * would fall on the single byte between an `id:` line and its event's blank line moves one byte on
 * (see PROTOCOL.md: a client that takes the id when it reads the line loses the event there).
 * `cuts` records each cut: { offset, insideEvent, moved }.
 */
export async function cuttingRelay(target, { seed = 1, maxCut = 240, avoidIdLineEnd = false } = {}) {
  const random = rng(seed);
  const cuts = [];
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    sockets.add(client).add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    let head = Buffer.alloc(0);
    let body = null;
    let cutAt = 1 + Math.floor(random() * maxCut);
    upstream.on('data', (chunk) => {
      if (cutAt === Infinity) return;
      if (body === null) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        client.write(head.subarray(0, end + 4));
        body = Buffer.alloc(0);
        chunk = head.subarray(end + 4);
      }
      const room = cutAt - body.length;
      if (chunk.length < room) {
        body = Buffer.concat([body, chunk]);
        client.write(chunk);
        return;
      }
      let sent = Buffer.concat([body, chunk.subarray(0, room)]);
      const moved = avoidIdLineEnd && ID_LINE_END.test(sent.toString('latin1')) && room < chunk.length;
      if (moved) sent = Buffer.concat([body, chunk.subarray(0, room + 1)]);
      const text = sent.toString('latin1');
      cuts.push({ offset: sent.length, insideEvent: !/\n\n(\r\n)?$/.test(text), moved });
      client.end(sent.subarray(body.length), () => drop());
      upstream.pause();
      cutAt = Infinity;
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cuts,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(resolve);
      }),
  };
}
