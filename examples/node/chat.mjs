// Streams a chat reply in the terminal with emberlm on Node (WebGPU from the `webgpu` package).
//   node chat.mjs ["question"] [--model owner/name] [--quant Q4_0]
// EMBERLM_HUB points at another Hub (a mirror, or the repo's mock Hub in tests).
import { createEngine } from 'emberlm';

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const model = flag('--model') ?? 'HuggingFaceTB/SmolLM2-360M-Instruct';
const quant = flag('--quant');
const question = args[0] ?? 'In two sentences, what is WebGPU?';

const engine = await createEngine(model, {
  hub: process.env.EMBERLM_HUB,
  quant,
  onProgress: (p) => process.stderr.write(`\r${p.phase} ${(p.loaded / 1e6).toFixed(1)}/${(p.total / 1e6).toFixed(1)} MB   `),
});
process.stderr.write('\n');
const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], stream: true, max_tokens: 256 });
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0].delta.content ?? '');
  if (chunk.usage) process.stderr.write(`\n[${chunk.usage.completion_tokens} tokens, ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s]\n`);
}
await engine.unload();
process.exit(0); // Dawn's device keeps the event loop alive otherwise
