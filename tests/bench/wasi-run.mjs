// Runs a wasm32-wasip1 program in Node's WASI (no files, no environment): the CPU kernel bench
// built for wasm, timed on V8 as in a browser. Not a test.
//   node [--experimental-wasm-relaxed-simd] tests/bench/wasi-run.mjs program.wasm [args…]
import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
if (!file) throw new Error('usage: node tests/bench/wasi-run.mjs program.wasm [args…]');
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, preopens: {}, returnOnExit: true });
const instance = await WebAssembly.instantiate(await WebAssembly.compile(readFileSync(file)), wasi.getImportObject());
// Exit at once: Node 20 has crashed tearing down this instance after it returned.
process.exit(wasi.start(instance));
