// The CPU backend's threads in browsers: WebAssembly threads need a shared memory, which a page
// gets only when it is cross-origin isolated (served with COOP `same-origin` and COEP
// `require-corp` or `credentialless`). Then the engine loads the threads build
// (`wasm-threads/`), makes its thread pool, and starts `threads - 1` Web Workers
// (`cpu-thread.js`) on its memory; the engine's worker is the pool's last thread. Threads
// block while they wait, which only a worker may do: the engine's own worker is where this
// runs (a page's main thread keeps the one-thread build).
import { EmberError } from './errors.js';
import { IS_BROWSER_WORKER, IS_SERVER_RUNTIME } from './runtime.js';

const g = globalThis as { crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number } };

/** At most this many threads: beyond it the row kernels are bound by memory bandwidth. */
const MAX_THREADS = 16;
/** A worker that has not instantiated the module by then is not going to. */
const START_TIMEOUT_MS = 30_000;

/** Threads the CPU backend can use here, and why when it is one. */
export function cpuThreadPlan(requested?: number): { threads: number; why?: string } {
  if (requested !== undefined && (!Number.isInteger(requested) || requested < 1)) {
    throw new EmberError('bad-request', `threads must be a whole number of at least 1, not ${requested}`);
  }
  if (IS_SERVER_RUNTIME) return { threads: 1, why: `the wasm CPU backend has threads only in browsers (the emberlm CLI uses every core natively)` };
  if (!IS_BROWSER_WORKER) return { threads: 1, why: 'threads run only in the engine worker, and this engine runs on the page (worker: false)' };
  if (!g.crossOriginIsolated) return { threads: 1, why: 'the page is not cross-origin isolated (COOP/COEP headers), so no shared memory' };
  const threads = Math.min(requested ?? g.navigator?.hardwareConcurrency ?? 1, MAX_THREADS);
  return threads > 1 ? { threads } : { threads: 1, why: requested === 1 ? 'threads: 1 was asked for' : 'this device reports one core' };
}

type ThreadsWasm = {
  sharedModule(): unknown;
  sharedMemory(): unknown;
  buildCpuThreadPool(threads: number): number;
};

let started: Promise<number> | undefined;
/**
 * Kept so the workers are not collected while they run (Firefox collects unreferenced ones).
 * If one fails to start, the rest are stopped and the engine falls back to the plain build.
 */
const workers: Worker[] = [];

/** Starts the pool once per realm; later calls get the first pool's size. */
export function startCpuThreads(wasm: ThreadsWasm, threads: number): Promise<number> {
  started ??= (async () => {
    const size = wasm.buildCpuThreadPool(threads);
    const init = { module: wasm.sharedModule(), memory: wasm.sharedMemory() };
    await Promise.all(
      Array.from(
        { length: size - 1 },
        () =>
          new Promise<void>((resolve, reject) => {
            const worker = new Worker(new URL('./cpu-thread.js', import.meta.url), { type: 'module', name: 'emberlm-cpu-thread' });
            workers.push(worker);
            const timer = setTimeout(() => reject(new EmberError('model', `a CPU thread did not start within ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
            worker.onmessage = ({ data }) => {
              clearTimeout(timer);
              if (data?.ready) resolve();
              else reject(new EmberError('model', `a CPU thread failed to start: ${data?.error}`));
            };
            worker.onerror = (e) => {
              clearTimeout(timer);
              reject(new EmberError('model', `a CPU thread failed to start: ${e.message || 'the worker script did not load'}`));
            };
            worker.postMessage(init);
          }),
      ),
    );
    // Every worker now works for the pool (runCpuThread never returns).
    return size;
  })();
  started.catch(() => {
    for (const w of workers.splice(0)) w.terminate();
  });
  return started;
}
