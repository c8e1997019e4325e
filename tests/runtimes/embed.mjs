// Runs in Node, Deno and Bun alike: an embedding model through the npm package from a (mock)
// Hub; prints one JSON line with the vectors (and a Matryoshka-shortened one) and the usage.
//   <runtime> embed.mjs <hub url> <repo> <cache dir> <device> <text> [<text> ...]
import { createEngine } from '../../npm/dist/index.js';

const argv = typeof Deno !== 'undefined' ? Deno.args : process.argv.slice(2);
const [hub, repo, cacheDir, device, ...texts] = argv;
const engine = await createEngine(repo, { hub, cacheDir, context: 128, device, dtype: 'f32' });
const all = await engine.embeddings.create({ input: texts });
const short = await engine.embeddings.create({ input: texts[0], dimensions: 16 });
let refused;
try {
  await engine.embeddings.create({ input: [] });
} catch (e) {
  refused = e.code;
}
await engine.unload();
console.log(JSON.stringify({ all, short, refused }));
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
