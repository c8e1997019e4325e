// One thread of the CPU backend's pool (see cpu-threads.ts): instantiates the threads build on
// the engine's shared memory, says so, then works for the pool until the page ends it (or the
// module traps on this thread).
import init, { cpuThreadCrashed, runCpuThread } from '../wasm-threads/emberlm_wasm.js';

const scope = globalThis as unknown as { onmessage: ((ev: MessageEvent) => void) | null; postMessage(m: unknown): void };

scope.onmessage = async ({ data }) => {
  scope.onmessage = null;
  try {
    await init({ module_or_path: data.module, memory: data.memory });
  } catch (e) {
    scope.postMessage({ error: e instanceof Error ? e.message : String(e) });
    return;
  }
  scope.postMessage({ ready: true });
  try {
    runCpuThread();
  } catch {
    // A trap in a chunk (a panic, or memory exhausted): the engine's worker, waiting for that
    // chunk, is told so and fails instead of waiting for good.
    cpuThreadCrashed();
  }
};
