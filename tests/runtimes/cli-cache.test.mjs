// The CLI and the npm package share one download cache: a model the native CLI fetched from the
// (mock) Hub loads in Node from the cache with the Hub stopped, and the package lists it.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fixtureRepos, reference, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { NODE, run, runtimeEnv } from './spawn.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CLI = join(ROOT, 'target', 'release', 'emberlm');
const REPO = 'emberlm-test/tiny-llama-GGUF'; // its default file is the K-quant tiny llama
const want = reference('llama-kquant').cases[0];
const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-cli-cache-'));
after(() => rmSync(cacheDir, { recursive: true, force: true }));

test('a model downloaded by the CLI loads in Node from the shared cache with the Hub stopped', async () => {
  assert.ok(existsSync(CLI), 'build the CLI first (cargo build --release -p emberlm-cli)');
  const hub = await startMockHub({ repos: fixtureRepos() });
  let cli;
  try {
    const args = ['generate', '--model', REPO, '--hub', hub.url, '--prompt-ids', want.input_ids.join(','), '--max-new-tokens', String(want.generated_ids.length), '--json'];
    cli = await run(CLI, args, { env: runtimeEnv('node', { EMBERLM_CACHE: cacheDir, VK_ICD_FILENAMES: '/usr/share/vulkan/icd.d/lvp_icd.x86_64.json' }) });
  } finally {
    await hub.close();
  }
  assert.equal(cli.status, 0, cli.stderr.slice(-2000));
  assert.deepEqual(JSON.parse(cli.stdout).generated_ids, want.generated_ids);

  const node = await run(NODE, [join(here, 'chat.mjs'), hub.url, REPO, cacheDir, want.text, String(want.generated_ids.length)], { env: runtimeEnv('node') });
  assert.equal(node.status, 0, node.stderr.slice(-2000));
  const out = JSON.parse(node.stdout.trim().split('\n').at(-1));
  assert.deepEqual(out.ids, want.input_ids);
  assert.deepEqual(out.tokens, want.generated_ids);
  assert.ok(!out.phases.includes('download'), `Node downloaded again: ${out.phases}`);
  assert.ok(out.cached && out.listed.includes(REPO));
});
