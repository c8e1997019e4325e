// Loads the engine's wasm once per JavaScript realm (again only after it trapped), from the URL
// beside this module (bundlers see `new URL(..., import.meta.url)` and copy the file) or from
// disk outside browsers.
// Two builds: the plain one, and the threads one (shared memory, the CPU backend on Web
// Workers; see cpu-threads.ts), loaded only in a cross-origin isolated page's engine worker.
// Each comes as two .wasm files sharing one JS glue: `emberlm_wasm_relaxed_bg.wasm` (relaxed
// SIMD: the CPU backend's Q4 dot products in one instruction per 16 bytes) where this engine
// validates relaxed SIMD, else `emberlm_wasm_bg.wasm`.
import * as engine from '../wasm/emberlm_wasm.js';
import { startCpuThreads } from './cpu-threads.js';
import { EmberError } from './errors.js';
import type { HasherFactory } from './download.js';
import { IS_SERVER_RUNTIME } from './runtime.js';

export type Wasm = typeof engine;
let plain: Promise<Wasm> | undefined;
let threaded: Promise<Wasm> | undefined;
/** What `plain` and `threaded` resolved to, for `discardWasm` to compare synchronously. */
let plainReady: Wasm | undefined;
let threadedReady: Wasm | undefined;
/** Instances of the plain build that trapped in this realm (see `discardWasm`). */
let discarded = 0;
/** Set when the threads build trapped: its pool cannot be made again in this realm. */
let threadsCrashed = false;

/** The wasm-bindgen glue for the next plain instance: the bundled one, or a fresh copy after a trap. */
async function plainGlue(): Promise<Wasm> {
  if (discarded === 0) return engine;
  // The glue keeps its instance in module state and never instantiates twice, so a fresh
  // instance needs a fresh copy of the glue module: the same file under another URL (Node,
  // Deno, Bun and unbundled pages; a bundler that inlined the glue has no such file).
  const url = new URL(`../wasm/emberlm_wasm.js?instance=${discarded}`, import.meta.url).href;
  try {
    return (await import(/* @vite-ignore */ url)) as Wasm;
  } catch (e) {
    throw new EmberError('crashed', `the engine crashed earlier in this page and its WebAssembly module cannot be instantiated again here (${e instanceof Error ? e.message : String(e)}); reload the page`);
  }
}

/**
 * A module whose one function is `i32x4.relaxed_dot_i8x16_i7x16_add_s` of three zero vectors
 * (the instruction the relaxed builds use): an engine that validates it runs relaxed SIMD.
 * www/sw.js keeps the same bytes in base64 (checked by npm/test/pure.test.mjs).
 */
export const RELAXED_SIMD_PROBE: Uint8Array<ArrayBuffer> = (() => {
  const zero = [0xfd, 0x0c, ...new Array<number>(16).fill(0)]; // v128.const 0
  const body = [0x00, ...zero, ...zero, ...zero, 0xfd, 0x93, 0x02, 0x0b]; // no locals; dot; end
  const bytes = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  bytes.push(0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b); // type: () -> v128
  bytes.push(0x03, 0x02, 0x01, 0x00); // one function of that type
  bytes.push(0x0a, body.length + 2, 0x01, body.length, ...body);
  return new Uint8Array(bytes);
})();

/** Whether this JavaScript engine runs relaxed SIMD. */
export const HAS_RELAXED_SIMD: boolean = (() => {
  try {
    return typeof WebAssembly !== 'undefined' && WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
})();

/** The default .wasm of a build folder (`wasm` or `wasm-threads`) for this engine. */
function defaultWasmUrl(folder: 'wasm' | 'wasm-threads'): URL {
  // Written out twice, not built from `folder`: bundlers only copy literal `new URL` paths.
  if (folder === 'wasm') return HAS_RELAXED_SIMD ? new URL('../wasm/emberlm_wasm_relaxed_bg.wasm', import.meta.url) : new URL('../wasm/emberlm_wasm_bg.wasm', import.meta.url);
  return HAS_RELAXED_SIMD ? new URL('../wasm-threads/emberlm_wasm_relaxed_bg.wasm', import.meta.url) : new URL('../wasm-threads/emberlm_wasm_bg.wasm', import.meta.url);
}

export function loadWasm(wasmUrl?: string | URL): Promise<Wasm> {
  plain ??= (async () => {
    const glue = await plainGlue();
    const url = wasmUrl ?? defaultWasmUrl('wasm');
    if (IS_SERVER_RUNTIME && String(url).startsWith('file:')) {
      const { readFile } = await import(/* @vite-ignore */ 'node:fs/promises' as string);
      await glue.default({ module_or_path: await readFile(new URL(String(url))) });
    } else {
      await glue.default({ module_or_path: url });
    }
    plainReady = glue;
    return glue;
  })();
  plain.catch(() => (plain = undefined));
  return plain;
}

/** Whether `e` is a trap of the module (or a stack overflow inside it): its state is no longer to be trusted. */
export function isWasmTrap(e: unknown): boolean {
  return (typeof WebAssembly !== 'undefined' && e instanceof WebAssembly.RuntimeError) || (e instanceof RangeError && /call stack/i.test(e.message));
}

/**
 * After a trap: what the module said before it (its panic messages, when it panicked), and
 * this realm's next engine gets a fresh instance; engines already loaded on the old one keep it.
 */
export function discardWasm(wasm: Wasm, trap: unknown): string {
  let said: string[] = [];
  try {
    said = wasm.takePanics();
  } catch {
    // The trapped instance may not answer; the trap's own message is all there is.
  }
  if (plainReady === wasm) {
    plain = plainReady = undefined;
    discarded++;
  }
  if (threadedReady === wasm) threadsCrashed = true;
  return said.length > 0 ? said.join('; then: ') : trap instanceof Error ? `${trap.name}: ${trap.message}` : String(trap);
}

/** The threads build with its pool of `threads` workers started (browsers only). */
export function loadThreadedWasm(threads: number, wasmUrl?: string | URL): Promise<Wasm> {
  if (threadsCrashed) return Promise.reject(new Error('it crashed earlier in this worker'));
  threaded ??= (async () => {
    const glue = await import('../wasm-threads/emberlm_wasm.js');
    await glue.default({ module_or_path: wasmUrl ?? defaultWasmUrl('wasm-threads') });
    await startCpuThreads(glue, threads);
    threadedReady = glue as unknown as Wasm;
    return threadedReady;
  })();
  return threaded;
}

/** Download checks backed by the wasm SHA-256 / git-SHA-1 (WebCrypto cannot hash a stream). */
export function wasmHashers(wasm: Wasm): HasherFactory {
  return (file) => (file.sha256 ? wasm.ContentHasher.sha256() : file.gitOid ? wasm.ContentHasher.gitBlobSha1(file.size) : null);
}
