// Load-time benchmark of the npm package in headless Chromium (WebGPU on SwiftShader): the same
// model loaded through the default path (Web Worker + OPFS cache: sync access handle reads), the
// worker with the Cache API (Blob reads through FileReaderSync) and the page with
// `cache: 'memory'` (downloaded from the local mock Hub each time: `files s`), interleaved and
// repeated, phase by phase. Not a test:
// it prints figures. The model comes from the mock Hub on 127.0.0.1 (no Hub access needed).
//
//   node tests/bench/load.mjs [--repo HuggingFaceTB/SmolLM2-135M-Instruct-GGUF] [--runs 3]
//
// The default repo is SmolLM2-135M-Instruct Q4_1 when scripts/setup.sh has fetched it, else the
// tiny llama with a 60k-token vocabulary. OPFS and Cache API runs load from their caches (filled first).
import { parseArgs } from 'node:util';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixtureRepos } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { openTestPage } from '../browser/chromium.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const repos = fixtureRepos();
const SMOL = 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF';
const { values: args } = parseArgs({
  options: {
    repo: { type: 'string', default: repos[SMOL] ? SMOL : 'emberlm-test/tiny-llama-bigvocab-GGUF' },
    runs: { type: 'string', default: '3' },
  },
});

const hub = await startMockHub({ repos });
const session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm');
const load = (options) =>
  session.page.evaluate(
    async ({ repo, hubUrl, options }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 256, ...options });
      const { loadMs, load, fromCache } = engine.info;
      await engine.unload();
      return { loadMs, fromCache, ...load };
    },
    { repo: args.repo, hubUrl: hub.url, options },
  );

const modes = [
  ['worker + OPFS (default)', {}],
  ['worker + Cache API', { cache: 'cache-api' }],
  ['page + memory', { worker: false, cache: 'memory' }],
];
try {
  // Fill the persistent caches; their downloads are not part of the figures.
  await load({});
  await load({ cache: 'cache-api' });
  const rows = [];
  for (let run = 0; run < Number(args.runs); run++) {
    for (const [name, options] of modes) rows.push({ mode: name, ...(await load(options)) });
  }
  const s = (ms) => (ms / 1000).toFixed(2);
  const cols = ['mode', 'reader', 'total s', 'files s', 'header s', 'header reads', 'tokenizer s', 'device s', 'upload s', 'compile s', 'reads', 'MB read'];
  console.log(`\nLoad of ${args.repo} in headless Chromium (SwiftShader), ${args.runs} runs per mode, interleaved\n`);
  console.log(`| ${cols.join(' | ')} |\n|${cols.map(() => '---').join('|')}|`);
  for (const r of rows) {
    const cells = [r.mode, r.reader, s(r.loadMs), s(r.filesMs), s(r.headerMs), r.headerReads, s(r.tokenizerMs), s(r.deviceMs), s(r.uploadMs), s(r.compileMs), r.reads, (r.readBytes / 1e6).toFixed(1)];
    console.log(`| ${cells.join(' | ')} |`);
  }
  const median = (name) => {
    const xs = rows.filter((r) => r.mode === name).map((r) => r.loadMs).sort((a, b) => a - b);
    return xs[Math.floor(xs.length / 2)];
  };
  const [opfs, cacheApi, memory] = modes.map(([name]) => median(name));
  console.log(`\nmedian load: OPFS ${s(opfs)} s, Cache API ${s(cacheApi)} s, memory ${s(memory)} s; OPFS / memory ${(opfs / memory).toFixed(2)}`);
} finally {
  await session.close();
  await hub.close();
}
