// The committed dist/ (embedded by the Rust build) must be exactly what `npm run build` makes from src/.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

test('dist/ is up to date with src/ (run npm run build)', (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'sse-client-build-'));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json'), '--outDir', join(tmp, 'build')], { stdio: 'inherit' });
  execFileSync(process.execPath, [join(root, 'scripts', 'bundle.mjs'), join(tmp, 'build'), join(tmp, 'dist')], { stdio: 'inherit' });
  const fresh = readdirSync(join(tmp, 'dist')).sort();
  assert.deepEqual(readdirSync(join(root, 'dist')).sort(), fresh);
  for (const file of fresh) {
    assert.equal(readFileSync(join(root, 'dist', file), 'utf8'), readFileSync(join(tmp, 'dist', file), 'utf8'), `dist/${file} is stale`);
  }
});
