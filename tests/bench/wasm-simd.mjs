// The browser CPU backend's two wasm builds against each other: the plain simd128 build and the
// relaxed-SIMD one (what the npm package loads where the engine validates relaxed SIMD), on one
// thread and on all cores, interleaved and repeated, in headless Chromium on a cross-origin
// isolated page, on SmolLM2-135M-Instruct Q4_1 from the local mock Hub. Not a test: it prints
// a table (medians) of prefill and decode tok/s and a two-turn chat's second TTFT over its first,
// the second asked after `--think-ms` (default 1000: the user reads the reply and types), on an
// engine that runs the next turn's opening ahead in that time (the default) and on one that
// does not (`prefillNextTurn: false`).
// `--baseline DIR` (a folder under the repo holding `wasm/` and `wasm-threads/` as
// scripts/build-wasm.sh made them at another commit) runs those builds too, interleaved, for a
// before/after of a kernel change. `--repeat N` makes the prompt N copies of itself (~50 tokens
// each): a long prompt's prefill, and decode over a long cache.
//   node tests/bench/wasm-simd.mjs [--runs 3] [--tokens 64] [--threads N] [--think-ms 1000] [--baseline DIR] [--repeat N]
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
const { values: args } = parseArgs({ options: { runs: { type: 'string', default: '3' }, tokens: { type: 'string', default: '64' }, threads: { type: 'string' }, 'think-ms': { type: 'string', default: '1000' }, baseline: { type: 'string' }, repeat: { type: 'string', default: '1' } } });
for (const f of ['npm/dist/index.js', 'npm/wasm/emberlm_wasm_relaxed_bg.wasm', 'npm/wasm-threads/emberlm_wasm_relaxed_bg.wasm', 'models/SmolLM2-135M-Instruct.Q4_1.gguf']) {
  if (!existsSync(join(root, f))) throw new Error(`${f} is missing: run scripts/setup.sh, scripts/build-wasm.sh and (cd npm && npm run build)`);
}
if (args.baseline && !existsSync(join(root, args.baseline, 'wasm-threads', 'emberlm_wasm_relaxed_bg.wasm'))) {
  throw new Error(`--baseline ${args.baseline}: no wasm-threads/emberlm_wasm_relaxed_bg.wasm there (copy npm/wasm and npm/wasm-threads from a build of the other commit)`);
}
const REPO = 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF';
const REPEAT = Math.max(1, Number(args.repeat));
const ONE_PROMPT =
  'The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, printers across Europe had produced millions of books, and the way people';

const PROMPT = Array(REPEAT).fill(ONE_PROMPT).join(' ');

const hub = await startMockHub({ repos: fixtureRepos() });
const session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm', { isolated: true });
const run = (build, threads) =>
  session.page.evaluate(
    async ({ repo, hubUrl, prompt, n, dir, file, threads, thinkMs, repeat }) => {
      const load = (prefillNextTurn) =>
        window.emberlm.createEngine(repo, {
          hub: hubUrl,
          context: Math.max(512, 64 * repeat + n + 64),
          device: 'cpu',
          threads,
          prefillNextTurn,
          wasmUrl: `/${dir}/wasm/${file}`,
          wasmThreadsUrl: `/${dir}/wasm-threads/${file}`,
        });
      const ttft = (x) => x.usage.extra.time_to_first_token_ms;
      // A chat of two turns: the second (a short follow-up, asked after the user's reading and
      // typing time) prefills only what is new.
      const chat = async (engine) => {
        const messages = [{ role: 'user', content: prompt }];
        const turn1 = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 16 });
        await new Promise((r) => setTimeout(r, thinkMs));
        messages.push(turn1.choices[0].message, { role: 'user', content: 'Say that again in one sentence.' });
        const turn2 = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 2 });
        return { turn1: ttft(turn1), turn2: ttft(turn2) };
      };
      const engine = await load(true);
      const r = await engine.generate(prompt, { temperature: 0, max_tokens: n, ignore_eos: true });
      const ahead = await chat(engine);
      const device = engine.info.device.name;
      await engine.unload();
      const plain = await load(false);
      const notAhead = await chat(plain);
      await plain.unload();
      return { device, prefill: r.usage.extra.prefill_tokens_per_s, decode: r.usage.extra.decode_tokens_per_s, ...ahead, plainTurn1: notAhead.turn1, plainTurn2: notAhead.turn2 };
    },
    { repo: REPO, hubUrl: hub.url, prompt: PROMPT, n: Number(args.tokens), dir: build.dir, file: build.file, threads, thinkMs: Number(args['think-ms']), repeat: REPEAT },
  );

const results = new Map();
const builds = [
  ...(args.baseline ? [{ name: 'baseline plain', dir: args.baseline, file: 'emberlm_wasm_bg.wasm' }, { name: 'baseline relaxed', dir: args.baseline, file: 'emberlm_wasm_relaxed_bg.wasm' }] : []),
  { name: 'plain', dir: 'npm', file: 'emberlm_wasm_bg.wasm' },
  { name: 'relaxed', dir: 'npm', file: 'emberlm_wasm_relaxed_bg.wasm' },
];
const configs = [...new Set(args.threads ? [Number(args.threads)] : [1, availableParallelism()])].flatMap((t) => builds.map((b) => [b, t]));
for (let i = 0; i < Number(args.runs); i++) {
  for (const [build, threads] of configs) {
    const r = await run(build, threads);
    console.log(
      `run ${i + 1}: ${build.name}, ${r.device}: prefill ${r.prefill.toFixed(1)} tok/s, decode ${r.decode.toFixed(1)} tok/s, chat TTFT ${r.turn1.toFixed(0)} then ${r.turn2.toFixed(0)} ms (not run ahead: ${r.plainTurn1.toFixed(0)} then ${r.plainTurn2.toFixed(0)} ms)`,
    );
    const key = `${build.name}|${threads}`;
    results.set(key, [...(results.get(key) ?? []), r]);
  }
}
await session.close();
await hub.close();

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
console.log('\n| build | runs on | prefill tok/s | decode tok/s | decode / plain | chat turn 1 TTFT ms | turn 2 TTFT ms | turn 2 / turn 1 | not run ahead: turn 2 TTFT ms | turn 2 / turn 1 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const [build, threads] of configs) {
  const rs = results.get(`${build.name}|${threads}`);
  const plain = median(results.get(`plain|${threads}`).map((r) => r.decode));
  const decode = median(rs.map((r) => r.decode));
  const [turn1, turn2] = [median(rs.map((r) => r.turn1)), median(rs.map((r) => r.turn2))];
  console.log(
    `| ${build.name} | ${rs[0].device} | ${median(rs.map((r) => r.prefill)).toFixed(1)} | ${decode.toFixed(1)} | ${(decode / plain).toFixed(2)} | ${turn1.toFixed(0)} | ${turn2.toFixed(0)} | ${median(rs.map((r) => r.turn2 / r.turn1)).toFixed(2)} | ${median(rs.map((r) => r.plainTurn2)).toFixed(0)} | ${median(rs.map((r) => r.plainTurn2 / r.plainTurn1)).toFixed(2)} |`,
  );
}
