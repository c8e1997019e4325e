// Loads a model where WebGPU has no adapter, from a Hub that is not there; prints the error's
// code and message as JSON.   no-adapter.mjs [device]
import { createEngine } from '../../npm/dist/index.js';

const argv = typeof Deno !== 'undefined' ? Deno.args : process.argv.slice(2);
try {
  await createEngine('emberlm-test/tiny-qwen2-GGUF', { hub: 'http://127.0.0.1:9', device: argv[0] ?? 'auto' });
  console.log(JSON.stringify({ code: null }));
} catch (e) {
  console.log(JSON.stringify({ code: e.code, message: e.message }));
}
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
