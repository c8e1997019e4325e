// llama.cpp through node-llama-cpp's prebuilt binaries on a GGUF: prefill a prompt, then decode
// greedily a fixed number of tokens. Prints one JSON line per run.
//   node llama.mjs <model.gguf> <prompt> <new tokens> <runs> <threads> [cpu|vulkan]
// `vulkan` runs every layer on the first Vulkan device (lavapipe here, by VK_ICD_FILENAMES).
import { getLlama } from 'node-llama-cpp';

const [modelPath, prompt, n, runs, threads, backend = 'cpu'] = process.argv.slice(2);
const gpu = backend === 'vulkan' ? 'vulkan' : false;
// llama.cpp's Vulkan backend skips CPU-type devices (lavapipe, SwiftShader) unless they are
// named; read when the backend starts, so set before getLlama.
if (gpu) process.env.GGML_VK_VISIBLE_DEVICES ??= '0';
const llama = await getLlama({ gpu, build: 'never' });
const model = await llama.loadModel({ modelPath, gpuLayers: gpu ? 'max' : 0 });
if (gpu && model.gpuLayers === 0) throw new Error('llama.cpp found no Vulkan device');
const ctx = await model.createContext({ contextSize: 512, threads: Number(threads) });
const seq = ctx.getSequence();
const tokens = model.tokenize(prompt, true);
const device = gpu ? `llama.cpp vulkan (${(await llama.getGpuDeviceNames()).join(', ')})` : `llama.cpp cpu (${threads} threads)`;
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
  console.log(JSON.stringify({ promptTokens: tokens.length, ttftMs: ttft, prefillTokS: (tokens.length * 1000) / ttft, decodeTokS: (got * 1000) / decodeMs, device }));
}
process.exit(0);
