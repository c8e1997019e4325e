// Streams a chat reply in the terminal with emberlm on Bun (WebGPU from the `webgpu` package).
//   bun chat.ts ["question"] [--model owner/name] [--quant Q4_0]
import { createEngine } from 'emberlm';

const args = Bun.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const model = flag('--model') ?? 'HuggingFaceTB/SmolLM2-360M-Instruct';
const quant = flag('--quant');
const question = args[0] ?? 'In two sentences, what is WebGPU?';

const engine = await createEngine(model, { hub: Bun.env.EMBERLM_HUB, quant });
const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], stream: true, max_tokens: 256 });
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0].delta.content ?? '');
  if (chunk.usage) console.error(`\n[${chunk.usage.completion_tokens} tokens, ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s]`);
}
await engine.unload();
process.exit(0);
