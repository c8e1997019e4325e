// Runs in Node, Deno and Bun alike: an engine whose WebAssembly module traps (a tokenizer.json
// that makes the tokenizers crate panic, which aborts in wasm) fails that call and every later
// one with a clear `crashed` error, unloads, and the next engine in the same process works
// (on a fresh instance of the module). Prints one JSON line.
//   <runtime> crash.mjs <hub url> <bad repo> <good repo> <cache dir> <prompt> <max tokens>
import { createEngine } from '../../npm/dist/index.js';

const argv = typeof Deno !== 'undefined' ? Deno.args : process.argv.slice(2);
const [hub, badRepo, goodRepo, cacheDir, prompt, maxTokens] = argv;
const outcome = async (call) => {
  try {
    await call();
    return { code: 'none' };
  } catch (e) {
    return { code: e.code, message: e.message };
  }
};

const bad = await createEngine(badRepo, { hub, cacheDir, context: 64, device: 'cpu' });
const first = await outcome(() => bad.generate(prompt, { max_tokens: 4 }));
const again = await outcome(() => bad.chat.completions.create({ messages: [{ role: 'user', content: prompt }], max_tokens: 4 }));
const encode = await outcome(() => bad.tokenizer.encode(prompt));
const unload = await outcome(() => bad.unload());
const good = await createEngine(goodRepo, { hub, cacheDir, context: 64, device: 'cpu' });
const greedy = await good.generate(prompt, { temperature: 0, max_tokens: Number(maxTokens) });
await good.unload();
console.log(JSON.stringify({ first, again, encode, unload, tokens: greedy.tokens }));
