// Runs in Node, Deno and Bun alike: loads a model through the npm package from a (mock) Hub,
// generates greedily and streams a chat reply, then prints one JSON line with what happened.
//   <runtime> chat.mjs <hub url> <repo> <cache dir> <prompt> <max tokens> [device]
import { createEngine, isModelCached, listCachedModels } from '../../npm/dist/index.js';

const argv = typeof Deno !== 'undefined' ? Deno.args : process.argv.slice(2);
const [hub, repo, cacheDir, prompt, maxTokens, device = 'auto'] = argv;
const phases = new Set();
const engine = await createEngine(repo, { hub, cacheDir, context: 128, device, onProgress: (p) => phases.add(p.phase) });
const greedy = await engine.generate(prompt, { temperature: 0, max_tokens: Number(maxTokens) });
const ids = await engine.tokenizer.encode(prompt);
let streamed = '';
let chunks = 0;
let usage;
const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], stream: true, max_tokens: 8, temperature: 0 });
for await (const chunk of stream) {
  chunks++;
  streamed += chunk.choices[0].delta.content ?? '';
  usage = chunk.usage ?? usage;
}
const reply = await engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], max_tokens: 8, temperature: 0 });
const cached = await isModelCached(repo, { hub, cacheDir });
const listed = (await listCachedModels({ cacheDir })).map((m) => m.repo);
await engine.unload();
console.log(
  JSON.stringify({ info: engine.info, phases: [...phases], ids, tokens: greedy.tokens, finish: greedy.finish_reason, streamed, chunks, usage, reply: reply.choices[0].message.content, cached, listed }),
);
// Dawn keeps Node's event loop alive after the device is gone.
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
