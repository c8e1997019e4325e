// Streams a chat reply in the terminal with emberlm on Deno (its built-in WebGPU; the CPU
// backend when there is no GPU).
//   deno run -A chat.ts ["question"] [--model owner/name | --model path/to/model.gguf] [--quant Q4_0]
// Default model: the repo's bundled SmolLM2-135M GGUF (models/, fetched by scripts/setup.sh)
// when it is there, read from disk with no network; else SmolLM2-360M-Instruct from the Hub.
// EMBERLM_HUB points at another Hub (a mirror, or the repo's local model server).
import { createEngine } from 'emberlm';

const args = [...Deno.args];
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const bundled = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url).pathname;
const exists = (path: string) => {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
};
const model = flag('--model') ?? (exists(bundled) ? bundled : 'HuggingFaceTB/SmolLM2-360M-Instruct');
const quant = flag('--quant');
const question = args[0] ?? 'In two sentences, what is WebGPU?';
const encoder = new TextEncoder();

try {
  const engine = await createEngine(model, { hub: Deno.env.get('EMBERLM_HUB'), quant });
  console.error(`${engine.info.model} on ${engine.info.device.backend} (${engine.info.device.name})`);
  const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], stream: true, max_tokens: 256 });
  for await (const chunk of stream) {
    await Deno.stdout.write(encoder.encode(chunk.choices[0].delta.content ?? ''));
    if (chunk.usage) console.error(`\n[${chunk.usage.completion_tokens} tokens, ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s]`);
  }
  await engine.unload();
} catch (e) {
  // A message for people, not a stack trace.
  const code = (e as { code?: string })?.code;
  const hint = code === 'network' || code === 'offline' ? 'no Hub access? give a local file: --model path/to/model.gguf' : '';
  console.error(`\nemberlm: ${e instanceof Error ? e.message : e}${hint ? `\n(${hint})` : ''}`);
  Deno.exit(1);
}
