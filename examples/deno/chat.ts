// Streams a chat reply in the terminal with emberlm on Deno (its built-in WebGPU).
//   deno run -A chat.ts ["question"] [--model owner/name] [--quant Q4_0]
import { createEngine } from 'emberlm';

const args = [...Deno.args];
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const model = flag('--model') ?? 'HuggingFaceTB/SmolLM2-360M-Instruct';
const quant = flag('--quant');
const question = args[0] ?? 'In two sentences, what is WebGPU?';
const encoder = new TextEncoder();

const engine = await createEngine(model, { hub: Deno.env.get('EMBERLM_HUB'), quant });
const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], stream: true, max_tokens: 256 });
for await (const chunk of stream) {
  await Deno.stdout.write(encoder.encode(chunk.choices[0].delta.content ?? ''));
  if (chunk.usage) console.error(`\n[${chunk.usage.completion_tokens} tokens, ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s]`);
}
await engine.unload();
