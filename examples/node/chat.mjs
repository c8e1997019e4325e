// Streams a chat reply in the terminal with emberlm on Node (WebGPU from the `webgpu` package;
// the CPU backend when there is no GPU).
//   node chat.mjs ["question"] [--model owner/name | --model path/to/model.gguf] [--quant Q4_0]
// Default model: the repo's bundled SmolLM2-135M GGUF (models/, fetched by scripts/setup.sh)
// when it is there, read from disk with no network; else SmolLM2-360M-Instruct from the Hub.
// EMBERLM_HUB points at another Hub (a mirror, or the repo's local model server).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createEngine } from 'emberlm';

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const bundled = fileURLToPath(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url));
const model = flag('--model') ?? (existsSync(bundled) ? bundled : 'HuggingFaceTB/SmolLM2-360M-Instruct');
const quant = flag('--quant');
const question = args[0] ?? 'In two sentences, what is WebGPU?';

try {
  const engine = await createEngine(model, {
    hub: process.env.EMBERLM_HUB,
    quant,
    onProgress: (p) => process.stderr.write(`\r${p.phase} ${(p.loaded / 1e6).toFixed(1)}/${(p.total / 1e6).toFixed(1)} MB   `),
  });
  process.stderr.write(`\n${engine.info.model} on ${engine.info.device.backend} (${engine.info.device.name})\n`);
  const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], stream: true, max_tokens: 256 });
  for await (const chunk of stream) {
    process.stdout.write(chunk.choices[0].delta.content ?? '');
    if (chunk.usage) process.stderr.write(`\n[${chunk.usage.completion_tokens} tokens, ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s]\n`);
  }
  await engine.unload();
} catch (e) {
  // A message for people, not a stack trace.
  const hint = { network: 'no Hub access? give a local file: --model path/to/model.gguf', offline: 'give a local file: --model path/to/model.gguf' }[e?.code];
  process.stderr.write(`\nemberlm: ${e?.message ?? e}${hint ? `\n(${hint})` : ''}\n`);
  process.exit(1);
}
process.exit(0); // Dawn's device keeps the event loop alive otherwise
