// Starts the real sse-proxy binary and waits for its `{"listening":..,"admin":..}` line.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The binary a person gets from `cargo build` in this repository (used only when run by hand). */
export const DEFAULT_PROXY_BIN = fileURLToPath(new URL('../../../../target/debug/sse-proxy', import.meta.url));

/** Whether every suite must run (scripts/test.sh sets SSE_PROXY_REQUIRE_ALL=1; CI sets CI). */
export function requireAll(env) {
  const ci = env.CI ?? '';
  return env.SSE_PROXY_REQUIRE_ALL === '1' || (ci !== '' && ci !== '0' && ci !== 'false');
}

/**
 * Where the proxy binary is: `{ bin, skip }`, `skip` being false or why the proxy tests are skipped.
 * Under scripts/test.sh or CI the binary must be the one named by $SSE_PROXY_BIN, else this throws;
 * only a person running one suite by hand may skip, when <repo>/target/debug/sse-proxy is missing.
 */
export function locateProxy(env, exists = existsSync) {
  const named = env.SSE_PROXY_BIN || undefined;
  if (requireAll(env)) {
    if (!named) {
      throw new Error('SSE_PROXY_REQUIRE_ALL/CI is set but SSE_PROXY_BIN is not: run scripts/test.sh, which exports the built binary');
    }
    if (!exists(named)) throw new Error(`SSE_PROXY_BIN=${named} does not exist`);
    return { bin: named, skip: false };
  }
  if (named) {
    if (!exists(named)) throw new Error(`SSE_PROXY_BIN=${named} does not exist`);
    return { bin: named, skip: false };
  }
  if (exists(DEFAULT_PROXY_BIN)) return { bin: DEFAULT_PROXY_BIN, skip: false };
  return {
    bin: DEFAULT_PROXY_BIN,
    skip: `run by hand without the proxy binary: ${DEFAULT_PROXY_BIN} is missing (cargo build, or set SSE_PROXY_BIN)`,
  };
}

const located = locateProxy(process.env);

/** Path of the proxy binary. */
export const PROXY_BIN = located.bin;

/** Why proxy tests are skipped (only ever when run by hand), or false. */
export const skipProxy = located.skip;
if (skipProxy) console.error(`SKIP ${skipProxy}`);

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
