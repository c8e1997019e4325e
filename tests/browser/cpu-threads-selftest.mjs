// A worker for threads.test.mjs: loads the npm package's threads build with a pool of the asked
// size (as the engine worker does) and runs every CPU op's check against the f64 reference,
// so the row splits across threads are what is checked.
import { loadThreadedWasm } from '/npm/dist/wasm.js';

onmessage = async ({ data: { threads } }) => {
  try {
    const wasm = await loadThreadedWasm(threads);
    postMessage(wasm.cpuSelfTest());
  } catch (e) {
    postMessage({ error: e instanceof Error ? e.message : String(e) });
  }
};
