// A worker for threads.test.mjs: loads the npm package's threads build with a pool of the asked
// size (as the engine worker does) and runs every CPU op's check against the f64 reference,
// so the row splits across threads are what is checked.
import { loadThreadedWasm } from '/npm/dist/wasm.js';

// With `crash`, runs a job whose chunks trap on the pool's workers instead and reports how
// this thread's call ended (it must throw, not hang) and the panics the module recorded.
onmessage = async ({ data: { threads, crash } }) => {
  let wasm;
  try {
    wasm = await loadThreadedWasm(threads);
    if (!crash) return postMessage(wasm.cpuSelfTest());
    wasm.selfTestCrashInCpuThread();
    postMessage({ error: 'the job returned' });
  } catch (e) {
    if (crash && wasm) return postMessage({ threw: e?.constructor?.name, panics: wasm.takePanics() });
    postMessage({ error: e instanceof Error ? e.message : String(e) });
  }
};
