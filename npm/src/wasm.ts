// Loads the engine's wasm once per JavaScript realm, from the URL beside this module (bundlers
// see `new URL(..., import.meta.url)` and copy the file) or from disk outside browsers.
// Two builds: the plain one, and the threads one (shared memory, the CPU backend on Web
// Workers; see cpu-threads.ts), loaded only in a cross-origin isolated page's engine worker.
import init, * as engine from '../wasm/emberlm_wasm.js';
import { startCpuThreads } from './cpu-threads.js';
import type { HasherFactory } from './download.js';
import { IS_SERVER_RUNTIME } from './runtime.js';

export type Wasm = typeof engine;
let plain: Promise<Wasm> | undefined;
let threaded: Promise<Wasm> | undefined;

export function loadWasm(wasmUrl?: string | URL): Promise<Wasm> {
  plain ??= (async () => {
    const url = wasmUrl ?? new URL('../wasm/emberlm_wasm_bg.wasm', import.meta.url);
    if (IS_SERVER_RUNTIME && String(url).startsWith('file:')) {
      const { readFile } = await import(/* @vite-ignore */ 'node:fs/promises' as string);
      await init({ module_or_path: await readFile(new URL(String(url))) });
    } else {
      await init({ module_or_path: url });
    }
    return engine;
  })();
  return plain;
}

/** The threads build with its pool of `threads` workers started (browsers only). */
export function loadThreadedWasm(threads: number, wasmUrl?: string | URL): Promise<Wasm> {
  threaded ??= (async () => {
    const glue = await import('../wasm-threads/emberlm_wasm.js');
    await glue.default({ module_or_path: wasmUrl ?? new URL('../wasm-threads/emberlm_wasm_bg.wasm', import.meta.url) });
    await startCpuThreads(glue, threads);
    return glue as unknown as Wasm;
  })();
  return threaded;
}

/** Download checks backed by the wasm SHA-256 / git-SHA-1 (WebCrypto cannot hash a stream). */
export function wasmHashers(wasm: Wasm): HasherFactory {
  return (file) => (file.sha256 ? wasm.ContentHasher.sha256() : file.gitOid ? wasm.ContentHasher.gitBlobSha1(file.size) : null);
}
