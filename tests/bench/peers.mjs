// emberlm against the peers on this machine, in one run, interleaved and repeated: the same
// GGUF (SmolLM2-135M-Instruct Q4_1), the same prompt, greedy decoding of a fixed number of
// tokens (EOS ignored). Not a test: it prints a table (medians) and the ratios the speed issues
// set targets for.
//   - in headless Chromium, on a cross-origin isolated page (COOP/COEP, so wasm threads):
//     emberlm's npm package with `device: 'auto'` (the CPU backend on SwiftShader) and wllama
//     (llama.cpp compiled to wasm); `--webgpu` adds emberlm with WebGPU forced (slow there);
//   - natively: the emberlm CLI with `--device cpu` and llama.cpp's CPU backend through
//     node-llama-cpp's prebuilt binary.
// Every engine gets `--threads` threads (default: all cores); `--threads 1` compares one thread.
//
//   node tests/bench/peers.mjs [--runs 3] [--tokens 64] [--threads N] [--webgpu]
//
// The peers are installed into tests/bench/peers/ on first run (npm, --ignore-scripts).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openTestPage } from '../browser/chromium.mjs';
import { fixtureRepos } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '64' },
    threads: { type: 'string', default: String(availableParallelism()) },
    webgpu: { type: 'boolean', default: false },
  },
});
const REPO = 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF';
const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const GGUF = join(root, 'models', FILE);
const CLI = join(root, 'target', 'release', 'emberlm');
const PROMPT =
  'The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, printers across Europe had produced millions of books, and the way people';
const N = Number(args.tokens);

for (const [what, path, fix] of [
  [FILE, GGUF, 'run scripts/setup.sh'],
  ['the emberlm CLI', CLI, 'cargo build --release -p emberlm-cli'],
  ['the npm package', join(root, 'npm', 'dist', 'index.js'), 'bash scripts/build-wasm.sh && (cd npm && npm run build)'],
]) {
  if (!existsSync(path)) throw new Error(`${what} is missing (${path}): ${fix}`);
}
const peers = join(here, 'peers');
if (!existsSync(join(peers, 'node_modules', '@wllama', 'wllama')) || !existsSync(join(peers, 'node_modules', 'node-llama-cpp'))) {
  console.error('installing the peers into tests/bench/peers/ …');
  execFileSync('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: peers, stdio: 'inherit' });
}

const hub = await startMockHub({ repos: fixtureRepos() });
const session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm', { isolated: true });
const THREADS = Number(args.threads);
const page = session.page;

const emberlmBrowser = (device) =>
  page.evaluate(
    async ({ repo, hubUrl, prompt, n, device, threads }) => {
      const t0 = performance.now();
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 512, device, threads });
      const loadMs = performance.now() - t0;
      const r = await engine.generate(prompt, { temperature: 0, max_tokens: n, ignore_eos: true });
      const info = engine.info;
      await engine.unload();
      const x = r.usage.extra;
      return { loadMs, promptTokens: r.usage.prompt_tokens, ttftMs: x.time_to_first_token_ms, prefillTokS: x.prefill_tokens_per_s, decodeTokS: x.decode_tokens_per_s, device: info.device.name };
    },
    { repo: REPO, hubUrl: hub.url, prompt: PROMPT, n: N, device, threads: THREADS },
  );

const wllamaBrowser = () =>
  page.evaluate(
    async ({ url, prompt, n, threads }) => {
      const base = '/tests/bench/peers/node_modules/@wllama/wllama/esm';
      const { Wllama } = await import(`${base}/index.js`);
      const w = new Wllama({ default: `${base}/wasm/wllama.wasm` }, { suppressNativeLog: true });
      const t0 = performance.now();
      await w.loadModelFromUrl(url, { n_ctx: 512, useCache: true, n_threads: threads });
      const loadMs = performance.now() - t0;
      const start = performance.now();
      let first;
      const r = await w.createCompletion({ prompt, max_tokens: n, temperature: 0, ignore_eos: true, stream: false });
      first = r.timings;
      const used = w.getNumThreads();
      await w.exit();
      return {
        loadMs,
        promptTokens: first.prompt_n,
        ttftMs: first.prompt_ms,
        prefillTokS: first.prompt_per_second,
        decodeTokS: first.predicted_per_second,
        wallMs: performance.now() - start,
        device: `wasm cpu (wllama, ${used} thread${used === 1 ? '' : 's'})`,
      };
    },
    { url: `${hub.url}/${REPO}/resolve/main/${FILE}`, prompt: PROMPT, n: N, threads: THREADS },
  );

function emberlmNative() {
  const out = execFileSync(
    CLI,
    ['generate', '--model', GGUF, '--device', 'cpu', '--threads', args.threads, '--prompt', PROMPT, '--max-new-tokens', String(N), '--ignore-eos', '--json', '--context', '512'],
    { encoding: 'utf8' },
  );
  const j = JSON.parse(out.trim().split('\n').at(-1));
  return { loadMs: j.load_s * 1000, promptTokens: j.prompt_ids.length, ttftMs: j.ttft_ms, prefillTokS: j.prefill_tok_s, decodeTokS: j.decode_tok_s, device: j.device };
}

function llamaNative() {
  const r = spawnSync('node', [join(peers, 'llama-cpu.mjs'), GGUF, PROMPT, String(N), '1', args.threads], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`node-llama-cpp: ${r.stderr.slice(-1000)}`);
  return { ...JSON.parse(r.stdout.trim().split('\n').at(-1)), device: `llama.cpp cpu (${args.threads} threads)` };
}

const engines = [
  ['emberlm, Chromium, auto (CPU)', () => emberlmBrowser('auto')],
  ['wllama, Chromium', wllamaBrowser],
  ...(args.webgpu ? [['emberlm, Chromium, WebGPU (SwiftShader)', () => emberlmBrowser('webgpu')]] : []),
  ['emberlm CLI, native CPU', emberlmNative],
  ['llama.cpp CPU (node-llama-cpp)', llamaNative],
];
const results = Object.fromEntries(engines.map(([name]) => [name, []]));
try {
  for (let run = 0; run < Number(args.runs); run++) {
    for (const [name, go] of engines) {
      const r = await go();
      console.error(`run ${run + 1}: ${name}: ttft ${r.ttftMs.toFixed(0)} ms, prefill ${r.prefillTokS.toFixed(1)} tok/s, decode ${r.decodeTokS.toFixed(1)} tok/s`);
      results[name].push(r);
    }
  }
} finally {
  await session.close();
  await hub.close();
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const med = (name, key) => median(results[name].map((r) => r[key]));
console.log(`\n${FILE}, ${PROMPT.length}-character prompt, ${N} greedy tokens, ${args.runs} runs interleaved (medians); ${new Date().toISOString().slice(0, 10)}\n`);
console.log('| engine | runs on | prompt tokens | load s | TTFT ms | prefill tok/s | decode tok/s |\n|---|---|---:|---:|---:|---:|---:|');
for (const [name] of engines) {
  const r = results[name][0];
  const load = med(name, 'loadMs');
  console.log(`| ${name} | ${r.device} | ${r.promptTokens} | ${Number.isFinite(load) ? (load / 1000).toFixed(2) : '—'} | ${med(name, 'ttftMs').toFixed(0)} | ${med(name, 'prefillTokS').toFixed(1)} | ${med(name, 'decodeTokS').toFixed(1)} |`);
}
const ratio = (a, b, key) => (med(a, key) / med(b, key)).toFixed(2);
console.log('\nratios (emberlm / peer; TTFT: lower is better, tok/s: higher is better)');
console.log(`- browser vs wllama: decode ${ratio('emberlm, Chromium, auto (CPU)', 'wllama, Chromium', 'decodeTokS')}×, TTFT ${ratio('emberlm, Chromium, auto (CPU)', 'wllama, Chromium', 'ttftMs')}×`);
console.log(`- native vs llama.cpp CPU: decode ${ratio('emberlm CLI, native CPU', 'llama.cpp CPU (node-llama-cpp)', 'decodeTokS')}×, prefill ${ratio('emberlm CLI, native CPU', 'llama.cpp CPU (node-llama-cpp)', 'prefillTokS')}×`);
console.log(`- browser vs native (emberlm CPU): decode ${ratio('emberlm, Chromium, auto (CPU)', 'emberlm CLI, native CPU', 'decodeTokS')}×`);
