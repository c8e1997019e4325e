// Runs each terminal example (examples/node, deno, bun) against the mock Hub, as its README
// says (after `npm install` there), and checks that it streamed generated text.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fixtureRepos, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { BUN, DENO, NODE, run, runtimeEnv } from './spawn.mjs';

const EXAMPLES = {
  node: [NODE, 'chat.mjs'],
  deno: [DENO, 'run', '-A', 'chat.ts'],
  bun: [BUN, 'chat.ts'],
};
let hub;
const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-examples-'));
before(async () => (hub = await startMockHub({ repos: fixtureRepos() })));
after(async () => {
  await hub?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

for (const [name, [cmd, ...args]] of Object.entries(EXAMPLES)) {
  test(`examples/${name} streams a reply from the mock Hub`, async () => {
    const dir = join(ROOT, 'examples', name);
    if (!existsSync(join(dir, 'node_modules', 'emberlm'))) {
      const r = await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir });
      assert.equal(r.status, 0, r.stderr);
    }
    const env = runtimeEnv(name, { EMBERLM_HUB: hub.url, EMBERLM_CACHE: cacheDir });
    const r = await run(cmd, [...args, 'Hello there!', '--model', 'emberlm-test/tiny-qwen2-GGUF'], { cwd: dir, env });
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.ok(r.stdout.trim().length > 0, `no text streamed; stderr: ${r.stderr.slice(-500)}`);
    assert.match(r.stderr, /\[\d+ tokens, [\d.]+ tok\/s\]/);
  });
}
