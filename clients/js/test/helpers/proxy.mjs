// Starts the real sse-proxy binary and waits for its `{"listening":..,"admin":..}` line.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Path of the proxy binary: $SSE_PROXY_BIN or <repo>/target/debug/sse-proxy. */
export const PROXY_BIN = process.env.SSE_PROXY_BIN ?? fileURLToPath(new URL('../../../../target/debug/sse-proxy', import.meta.url));

/** Why proxy tests must be skipped (binary missing), or false. */
export const skipProxy = existsSync(PROXY_BIN) ? false : `proxy binary not found at ${PROXY_BIN}`;

/** Writes `toml` to a temp file and returns its path. */
export function configFile(toml) {
  const file = join(mkdtempSync(join(tmpdir(), 'sse-proxy-cfg-')), 'proxy.toml');
  writeFileSync(file, toml);
  return file;
}

/** Spawns the proxy with `args`; resolves { url, admin, stop, stderr() } once it printed its bound addresses. */
export function startProxy(args, { timeoutMs = 15000 } = {}) {
  const child = spawn(PROXY_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', resolve);
      child.kill('SIGKILL');
    });
  return new Promise((resolve, reject) => {
    const fail = (why) => {
      stop();
      reject(new Error(`${why}\nargs: ${args.join(' ')}\nstderr:\n${stderr.slice(-2000)}`));
    };
    const timer = setTimeout(() => fail(`proxy printed no address line within ${timeoutMs} ms`), timeoutMs);
    child.once('exit', (code) => fail(`proxy exited with ${code} before printing its address line`));
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      child.removeAllListeners('exit');
      let bound;
      try {
        bound = JSON.parse(line);
      } catch {
        return fail(`first stdout line is not JSON: ${line}`);
      }
      resolve({ url: `http://${bound.listening}`, admin: `http://${bound.admin}`, stop, stderr: () => stderr });
    });
  });
}
