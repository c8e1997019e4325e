// Loads a model where WebGPU has no adapter; prints the error's code and message as JSON.
import { createEngine } from '../../npm/dist/index.js';

try {
  await createEngine('emberlm-test/tiny-qwen2-GGUF', { hub: 'http://127.0.0.1:9' });
  console.log(JSON.stringify({ code: null }));
} catch (e) {
  console.log(JSON.stringify({ code: e.code, message: e.message }));
}
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
