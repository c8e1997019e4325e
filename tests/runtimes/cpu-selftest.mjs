// The wasm build's CPU-backend self-test (every op against the f64 reference) in Node, Deno or
// Bun: prints its report as JSON.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuSelfTest, initSync } from '../../npm/wasm/emberlm_wasm.js';

const wasm = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'npm', 'wasm', 'emberlm_wasm_bg.wasm');
initSync({ module: readFileSync(wasm) });
console.log(JSON.stringify(cpuSelfTest()));
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
