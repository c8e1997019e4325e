// emberlm against the peers on this machine, in one run, interleaved and repeated: the same
// GGUF (SmolLM2-135M-Instruct Q4_1), the same prompt, greedy decoding of a fixed number of
// tokens (EOS ignored). Not a test: it prints a table (medians) and the ratios the speed issues
// set targets for.
//   CPU engines (the default set):
//   - in headless Chromium, on a cross-origin isolated page (COOP/COEP, so wasm threads):
//     emberlm's npm package with `device: 'auto'` (the CPU backend on SwiftShader) and wllama
//     (llama.cpp compiled to wasm);
//   - natively: the emberlm CLI with `--device cpu` and llama.cpp's CPU backend through
//     node-llama-cpp's prebuilt binary.
//   WebGPU engines (`--webgpu`; `--gpu-only` skips the CPU set):
//   - in the same Chromium on its SwiftShader adapter: emberlm with `device: 'webgpu'` and
//     Transformers.js 4 (`device: 'webgpu'`, the same model exported to ONNX by
//     peers/export_onnx.py, `--tjs-dtypes q4,fp32`);
//   - natively on lavapipe: the emberlm CLI with `--device webgpu` and llama.cpp's Vulkan backend
//     (node-llama-cpp's prebuilt Vulkan binary).
// Every engine gets `--threads` threads (default: all cores); `--threads 1` compares one thread.
//
//   node tests/bench/peers.mjs [--runs 3] [--tokens 64] [--threads N] [--webgpu [--gpu-only]]
//
// The peers are installed into tests/bench/peers/ on first run (npm, --ignore-scripts); the
// ONNX export needs Python packages (see export_onnx.py) and is made once by hand.
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
    'gpu-only': { type: 'boolean', default: false },
    'tjs-dtypes': { type: 'string', default: 'q4' },
  },
});
const REPO = 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF';
const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const GGUF = join(root, 'models', FILE);
const CLI = join(root, 'target', 'release', 'emberlm');
const PROMPT =
  'The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, printers across Europe had produced millions of books, and the way people';
const N = Number(args.tokens);
const LAVAPIPE = '/usr/share/vulkan/icd.d/lvp_icd.x86_64.json';
const ONNX_MODEL = 'SmolLM2-135M-Instruct';
const TJS_DTYPES = args.webgpu ? args['tjs-dtypes'].split(',').filter(Boolean) : [];

for (const [what, path, fix] of [
  [FILE, GGUF, 'run scripts/setup.sh'],
  ['the emberlm CLI', CLI, 'cargo build --release -p emberlm-cli'],
  ['the npm package', join(root, 'npm', 'dist', 'index.js'), 'bash scripts/build-wasm.sh && (cd npm && npm run build)'],
  ...TJS_DTYPES.map((d) => [
    `the ONNX export (${d})`,
    join(root, 'models', 'onnx', ONNX_MODEL, 'onnx', d === 'fp32' ? 'model.onnx' : `model_${d}.onnx`),
    `python3 tests/bench/peers/export_onnx.py ${GGUF} models/onnx/${ONNX_MODEL}`,
  ]),
]) {
  if (!existsSync(path)) throw new Error(`${what} is missing (${path}): ${fix}`);
}
const peers = join(here, 'peers');
const installed = ['@wllama/wllama', 'node-llama-cpp', '@node-llama-cpp/linux-x64-vulkan', '@huggingface/transformers'];
if (!installed.every((p) => existsSync(join(peers, 'node_modules', p)))) {
  console.error('installing the peers into tests/bench/peers/ …');
  execFileSync('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: peers, stdio: 'inherit' });
}

const hub = await startMockHub({ repos: fixtureRepos() });
const session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm', { isolated: true });
const THREADS = Number(args.threads);
const page = session.page;

// Transformers.js runs in a second tab of the same browser (its page maps the bare imports).
const tjsPage = TJS_DTYPES.length ? await page.context().browser().newPage() : null;
if (tjsPage) {
  tjsPage.on('console', (msg) => console.log(`[transformers.js] ${msg.text()}`));
  await tjsPage.goto(new URL('/tests/bench/peers/transformers.html', page.url()).href);
  await tjsPage.waitForFunction(() => window.transformers !== undefined);
}

const transformersBrowser = (dtype) =>
  tjsPage.evaluate(
    async ({ model, prompt, n, dtype }) => {
      const { AutoTokenizer, AutoModelForCausalLM, BaseStreamer } = window.transformers;
      const t0 = performance.now();
      const tokenizer = await AutoTokenizer.from_pretrained(model);
      const lm = await AutoModelForCausalLM.from_pretrained(model, { device: 'webgpu', dtype });
      const loadMs = performance.now() - t0;
      const inputs = tokenizer(prompt);
      // put() gets the prompt first, then each new token as it is sampled.
      const times = [];
      class Clock extends BaseStreamer {
        put() {
          times.push(performance.now());
        }
        end() {}
      }
      const start = performance.now();
      await lm.generate({ ...inputs, max_new_tokens: n, min_new_tokens: n, do_sample: false, streamer: new Clock() });
      await lm.dispose();
      const promptTokens = inputs.input_ids.dims.at(-1);
      const ttftMs = times[1] - start;
      return {
        loadMs,
        promptTokens,
        ttftMs,
        prefillTokS: (promptTokens * 1000) / ttftMs,
        decodeTokS: ((times.length - 2) * 1000) / (times.at(-1) - times[1]),
        device: `webgpu (onnxruntime-web, ${dtype})`,
      };
    },
    { model: ONNX_MODEL, prompt: PROMPT, n: N, dtype },
  );

const emberlmBrowser = (device) =>
  page.evaluate(
    async ({ repo, hubUrl, prompt, n, device, threads }) => {
      const t0 = performance.now();
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 512, device, threads });
      const loadMs = performance.now() - t0;
      const r = await engine.generate(prompt, { temperature: 0, max_tokens: n, ignore_eos: true });
      // A chat of two turns: the second (a short follow-up, asked a second later, as a user
      // reads and types; the engine runs the next turn's opening ahead meanwhile) prefills
      // only what is new.
      const messages = [{ role: 'user', content: prompt }];
      const turn1 = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 16 });
      await new Promise((r) => setTimeout(r, 1000));
      messages.push(turn1.choices[0].message, { role: 'user', content: 'Say that again in one sentence.' });
      const turn2 = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 2 });
      const info = engine.info;
      await engine.unload();
      const x = r.usage.extra;
      return {
        loadMs,
        promptTokens: r.usage.prompt_tokens,
        ttftMs: x.time_to_first_token_ms,
        prefillTokS: x.prefill_tokens_per_s,
        decodeTokS: x.decode_tokens_per_s,
        turn2: turn2.usage.extra.time_to_first_token_ms / turn1.usage.extra.time_to_first_token_ms,
        device: info.device.name,
      };
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

function emberlmNative(device) {
  const out = execFileSync(
    CLI,
    ['generate', '--model', GGUF, '--device', device, '--threads', args.threads, '--prompt', PROMPT, '--max-new-tokens', String(N), '--ignore-eos', '--json', '--context', '512'],
    { encoding: 'utf8', env: { ...process.env, VK_ICD_FILENAMES: LAVAPIPE } },
  );
  const j = JSON.parse(out.trim().split('\n').at(-1));
  return { loadMs: j.load_s * 1000, promptTokens: j.prompt_ids.length, ttftMs: j.ttft_ms, prefillTokS: j.prefill_tok_s, decodeTokS: j.decode_tok_s, device: j.device };
}

function llamaNative(backend) {
  const r = spawnSync('node', [join(peers, 'llama.mjs'), GGUF, PROMPT, String(N), '1', args.threads, backend], {
    encoding: 'utf8',
    env: { ...process.env, VK_ICD_FILENAMES: LAVAPIPE },
  });
  if (r.status !== 0) throw new Error(`node-llama-cpp: ${r.stderr.slice(-1000)}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}

const CPU = {
  browser: 'emberlm, Chromium, auto (CPU)',
  wllama: 'wllama, Chromium',
  native: 'emberlm CLI, native CPU',
  llama: 'llama.cpp CPU (node-llama-cpp)',
};
const GPU = {
  browser: 'emberlm, Chromium, WebGPU (SwiftShader)',
  tjs: (dtype) => `Transformers.js, Chromium, WebGPU ${dtype}`,
  native: 'emberlm CLI, native WebGPU (lavapipe)',
  llama: 'llama.cpp Vulkan (lavapipe)',
};
const engines = [
  ...(args['gpu-only']
    ? []
    : [
        [CPU.browser, () => emberlmBrowser('auto')],
        [CPU.wllama, wllamaBrowser],
        [CPU.native, () => emberlmNative('cpu')],
        [CPU.llama, () => llamaNative('cpu')],
      ]),
  ...(args.webgpu
    ? [
        [GPU.browser, () => emberlmBrowser('webgpu')],
        ...TJS_DTYPES.map((d) => [GPU.tjs(d), () => transformersBrowser(d)]),
        [GPU.native, () => emberlmNative('webgpu')],
        [GPU.llama, () => llamaNative('vulkan')],
      ]
    : []),
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

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const med = (name, key) => median(results[name].map((r) => r[key]));
console.log(`\n${FILE}, ${PROMPT.length}-character prompt, ${N} greedy tokens, ${args.runs} runs interleaved (medians); ${new Date().toISOString().slice(0, 10)}\n`);
console.log('| engine | runs on | prompt tokens | load s | TTFT ms | prefill tok/s | decode tok/s | chat turn 2 TTFT / turn 1 |\n|---|---|---:|---:|---:|---:|---:|---:|');
const fixed = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : '—');
for (const [name] of engines) {
  const r = results[name][0];
  console.log(
    `| ${name} | ${r.device} | ${r.promptTokens} | ${fixed(med(name, 'loadMs') / 1000, 2)} | ${med(name, 'ttftMs').toFixed(0)} | ${med(name, 'prefillTokS').toFixed(1)} | ${med(name, 'decodeTokS').toFixed(1)} | ${fixed(med(name, 'turn2'), 2)} |`,
  );
}
const ratio = (a, b, key) => (med(a, key) / med(b, key)).toFixed(2);
console.log('\nratios (emberlm / peer; TTFT: lower is better, tok/s: higher is better)');
if (!args['gpu-only']) {
  console.log(`- browser vs wllama: decode ${ratio(CPU.browser, CPU.wllama, 'decodeTokS')}×, TTFT ${ratio(CPU.browser, CPU.wllama, 'ttftMs')}×`);
  console.log(`- native vs llama.cpp CPU: decode ${ratio(CPU.native, CPU.llama, 'decodeTokS')}×, prefill ${ratio(CPU.native, CPU.llama, 'prefillTokS')}×`);
  console.log(`- browser vs native (emberlm CPU): decode ${ratio(CPU.browser, CPU.native, 'decodeTokS')}×`);
}
if (args.webgpu) {
  for (const d of TJS_DTYPES) {
    console.log(`- browser WebGPU vs Transformers.js ${d}: decode ${ratio(GPU.browser, GPU.tjs(d), 'decodeTokS')}×, TTFT ${ratio(GPU.browser, GPU.tjs(d), 'ttftMs')}×`);
  }
  console.log(`- native WebGPU vs llama.cpp Vulkan (lavapipe): decode ${ratio(GPU.native, GPU.llama, 'decodeTokS')}×, prefill ${ratio(GPU.native, GPU.llama, 'prefillTokS')}×`);
  console.log(`- browser WebGPU (SwiftShader) vs native WebGPU (lavapipe): decode ${ratio(GPU.browser, GPU.native, 'decodeTokS')}×`);
}
