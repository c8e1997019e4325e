// One greedy generation through the npm package; prints one JSON line with the engine's info
// and the token ids.
//   node greedy.mjs <hub url> <repo> <cache dir> <device> <prompt> <max tokens>
import { createEngine } from '../../npm/dist/index.js';

const [hub, repo, cacheDir, device, prompt, maxTokens] = process.argv.slice(2);
const engine = await createEngine(repo, { hub, cacheDir, context: 256, device, dtype: 'f32' });
const greedy = await engine.generate(prompt, { temperature: 0, max_tokens: Number(maxTokens) });
await engine.unload();
console.log(JSON.stringify({ info: engine.info, tokens: greedy.tokens }));
process.exit(0);
