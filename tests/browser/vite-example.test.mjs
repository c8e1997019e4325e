// examples/vite-app, installed and built as its README says, served as a static site and run
// in headless Chromium against the mock Hub: the bundled worker and wasm load and stream a reply.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fixtureRepos, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { openTestPage } from './chromium.mjs';

const app = join(ROOT, 'examples', 'vite-app');
let hub;
let session;

before(async () => {
  for (const args of [['install', '--no-audit', '--no-fund', '--loglevel=error'], ['exec', '--', 'vite', 'build']]) {
    const r = spawnSync('npm', args, { cwd: app, encoding: 'utf8' });
    assert.equal(r.status, 0, `npm ${args.join(' ')}: ${r.stderr}`);
  }
  hub = await startMockHub({ repos: fixtureRepos() });
});
after(async () => {
  await session?.close();
  await hub?.close();
});

test('the Vite app, served cross-origin isolated as its config says, streams an answer on the threaded CPU backend', async () => {
  const query = new URLSearchParams({ model: 'emberlm-test/tiny-qwen2-GGUF', hub: hub.url, max_tokens: '8' });
  session = await openTestPage(join(app, 'dist'), `/?${query}`, 'document', { isolated: true });
  const { page } = session;
  await page.waitForFunction(() => document.getElementById('status').textContent === 'Ready', null, { timeout: 120_000 });
  // Vite bundled the package's thread workers and the threads build: more than one thread runs.
  const cores = await page.evaluate(() => Math.min(navigator.hardwareConcurrency, 16));
  if (cores > 1) assert.match(await page.textContent('#device'), new RegExp(`^cpu \\(${cores} threads, simd128\\+relaxed\\): auto: `));
  await page.click('button');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Done'), null, { timeout: 120_000 });
  assert.match(await page.textContent('#status'), /^Done: 8 tokens at [\d.]+ tok\/s$/);
  assert.ok((await page.textContent('#answer')).length > 0);
});
