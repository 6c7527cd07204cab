// A mock LLM backend in the style of FastAPI + sse-starlette: CRLF line ends, `: ping` comments,
// `event: thinking`, one `data: {"content": "tok"}` per token, then `event: done`.
import { listen, sleep } from './servers.mjs';

// json.dumps' default separators put a space after ':'.
const event = (name, data) => `${name ? `event: ${name}\r\n` : ''}data: ${JSON.stringify(data).replaceAll('":', '": ')}\r\n\r\n`;

/**
 * Serves `tokens` every `intervalMs` (with a ping comment every `pingEvery` tokens, and a pause of
 * `stallMs` after `stallAfter` tokens). `state.aborted` counts requests whose client went away early.
 */
export async function starletteUpstream({ tokens, intervalMs = 5, pingEvery = 10, stallAfter = -1, stallMs = 0 }) {
  const state = { aborted: 0 };
  const server = await listen(async (req, res) => {
    let finished = false;
    res.on('close', () => {
      if (!finished) state.aborted++;
    });
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store' });
    res.write(event('thinking', { text: 'Thinking about it' }));
    for (let i = 0; i < tokens.length; i++) {
      if (res.destroyed) return;
      if (i === stallAfter) await sleep(stallMs);
      if (i > 0 && i % pingEvery === 0) res.write(`: ping - ${new Date().toISOString()}\r\n\r\n`);
      res.write(event(null, { content: tokens[i] }));
      await sleep(intervalMs);
    }
    res.write(event('done', { total_tokens: tokens.length }));
    finished = true;
    res.end();
  });
  return { ...server, state };
}
