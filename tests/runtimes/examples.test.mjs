// Runs each terminal example (examples/node, deno, bun) against the mock Hub, as its README
// says (after `npm install` there), and checks that it streamed generated text.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fixtureRepos, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const bin = (name) => join(here, '..', 'node_modules', '.bin', name);
const EXAMPLES = {
  node: [process.execPath, 'chat.mjs'],
  deno: [bin('deno'), 'run', '-A', 'chat.ts'],
  bun: [bin('bun'), 'chat.ts'],
};
let hub;
const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-examples-'));
before(async () => (hub = await startMockHub({ repos: fixtureRepos() })));
after(async () => {
  await hub?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

function run(cmd, args, cwd, env) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

for (const [name, [cmd, ...args]] of Object.entries(EXAMPLES)) {
  test(`examples/${name} streams a reply from the mock Hub`, async () => {
    const dir = join(ROOT, 'examples', name);
    if (!existsSync(join(dir, 'node_modules', 'emberlm'))) {
      const r = await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], dir, process.env);
      assert.equal(r.status, 0, r.stderr);
    }
    const env = { ...process.env, EMBERLM_HUB: hub.url, EMBERLM_CACHE: cacheDir, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp', NO_COLOR: '1' };
    // Dawn (Node, Bun) refuses Mesa 22's lavapipe: SwiftShader. Deno's wgpu uses lavapipe.
    if (name === 'deno') delete env.VK_ICD_FILENAMES;
    else env.VK_ICD_FILENAMES = '/usr/lib/chromium/vk_swiftshader_icd.json';
    const r = await run(cmd, [...args, 'Hello there!', '--model', 'emberlm-test/tiny-qwen2-GGUF'], dir, env);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.ok(r.stdout.trim().length > 0, `no text streamed; stderr: ${r.stderr.slice(-500)}`);
    assert.match(r.stderr, /\[\d+ tokens, [\d.]+ tok\/s\]/);
  });
}
