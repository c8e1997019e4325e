// llama.cpp's CPU backend (node-llama-cpp's prebuilt binary) on a GGUF: prefill a prompt, then
// decode greedily a fixed number of tokens. Prints one JSON line per run.
//   node llama-cpu.mjs <model.gguf> <prompt> <new tokens> <runs> <threads>
import { getLlama } from 'node-llama-cpp';

const [modelPath, prompt, n, runs, threads] = process.argv.slice(2);
const llama = await getLlama({ gpu: false, build: 'never' });
const model = await llama.loadModel({ modelPath });
const ctx = await model.createContext({ contextSize: 512, threads: Number(threads) });
const seq = ctx.getSequence();
const tokens = model.tokenize(prompt, true);
for (let r = 0; r < Number(runs); r++) {
  await seq.clearHistory();
  const start = performance.now();
  let ttft;
  let got = 0;
  let decodeStart;
  for await (const _ of seq.evaluate(tokens, { temperature: 0 })) {
    if (ttft === undefined) {
      ttft = performance.now() - start;
      decodeStart = performance.now();
    } else got++;
    if (got >= Number(n) - 1) break;
  }
  const decodeMs = performance.now() - decodeStart;
  console.log(JSON.stringify({ promptTokens: tokens.length, ttftMs: ttft, prefillTokS: (tokens.length * 1000) / ttft, decodeTokS: (got * 1000) / decodeMs }));
}
process.exit(0);
