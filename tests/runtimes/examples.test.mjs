// Runs each terminal example (examples/node, deno, bun) against the mock Hub, as its README
// says (after `npm install` there), and checks that it streamed generated text; then on a
// .gguf file on disk with the Hub unreachable, and with a missing file (a readable message,
// no stack trace).
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

/** `npm install` in an example once, as its README says. */
async function installed(name) {
  const dir = join(ROOT, 'examples', name);
  if (!existsSync(join(dir, 'node_modules', 'emberlm'))) {
    const r = await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir });
    assert.equal(r.status, 0, r.stderr);
  }
  return dir;
}

// Nothing listens on port 9: any request to this Hub fails at once.
const NO_HUB = 'http://127.0.0.1:9';

for (const [name, [cmd, ...args]] of Object.entries(EXAMPLES)) {
  test(`examples/${name} streams a reply from the mock Hub`, async () => {
    const dir = await installed(name);
    const env = runtimeEnv(name, { EMBERLM_HUB: hub.url, EMBERLM_CACHE: cacheDir });
    const r = await run(cmd, [...args, 'Hello there!', '--model', 'emberlm-test/tiny-qwen2-GGUF'], { cwd: dir, env });
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.ok(r.stdout.trim().length > 0, `no text streamed; stderr: ${r.stderr.slice(-500)}`);
    assert.match(r.stderr, /\[\d+ tokens, [\d.]+ tok\/s\]/);
  });

  test(`examples/${name} runs a .gguf from disk with no Hub, and says plainly when the file is missing`, async () => {
    const dir = await installed(name);
    const env = runtimeEnv(name, { EMBERLM_HUB: NO_HUB, EMBERLM_CACHE: cacheDir });
    const gguf = join(ROOT, 'tests', 'fixtures', 'tiny', 'qwen2', 'model.gguf');
    const r = await run(cmd, [...args, 'Hello there!', '--model', gguf], { cwd: dir, env });
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.ok(r.stdout.trim().length > 0, `no text streamed; stderr: ${r.stderr.slice(-500)}`);
    assert.match(r.stderr, /model\.gguf on (cpu|webgpu)/);

    const missing = await run(cmd, [...args, 'Hello there!', '--model', './nope/model.gguf'], { cwd: dir, env });
    assert.equal(missing.status, 1, missing.stderr.slice(-2000));
    assert.match(missing.stderr, /emberlm: \.\/nope\/model\.gguf: no such file/);
    assert.doesNotMatch(missing.stderr, /^\s+at /m, 'a stack trace');
  });
}

test('examples/node extract.mjs pulls a contact card out of a sentence as schema-valid JSON, on the bundled model', async () => {
  const model = join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  assert.ok(existsSync(model), 'run scripts/setup.sh (the bundled model)');
  const dir = await installed('node');
  const env = runtimeEnv('node', { EMBERLM_HUB: NO_HUB, EMBERLM_CACHE: cacheDir });
  const r = await run(NODE, ['extract.mjs', 'Tom Baker, aged 61, moved to Glasgow last year.'], { cwd: dir, env });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const card = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(card).sort(), ['age', 'city', 'name'], r.stdout);
  assert.ok(card.name.includes('Tom') && card.city.includes('Glasgow') && card.age === 61, r.stdout);
});

test('examples/node tools.mjs: the bundled model calls the weather function (a required call) and gets its result back', async () => {
  const dir = await installed('node');
  const env = runtimeEnv('node', { EMBERLM_HUB: NO_HUB, EMBERLM_CACHE: cacheDir });
  // Its default question, about Lisbon (the 135M model picks `add` for some other cities).
  const r = await run(NODE, ['tools.mjs'], { cwd: dir, env });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines[0], '→ get_weather({"city":"Lisbon"}) = {"temp_c":19,"sky":"sunny"}', r.stdout);
  assert.ok(lines.length >= 2, r.stdout);
});
