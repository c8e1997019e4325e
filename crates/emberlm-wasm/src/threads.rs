//! The CPU backend's threads in the wasm threads build (`+atomics`, one shared memory).
//!
//! The npm package (`npm/src/cpu-threads.ts`) calls [`build_cpu_thread_pool`] in the engine's
//! worker, then starts `threads - 1` Web Workers; each instantiates this module on the shared
//! memory and calls [`run_cpu_thread`], which joins the pool for good
//! (`emberlm_cpu::pool::Pool`: the engine's worker is the pool's caller and works too).
//! wasm-bindgen-rayon does the same for rayon, but its worker script finds the glue through a
//! relative path or a `blob:` URL that bundlers of our npm package and a strict CSP break, and
//! rayon's idle threads fall asleep between a token's regions (see `emberlm_cpu::pool`).

use wasm_bindgen::prelude::*;

/// Makes the pool for `threads` threads (this one and `threads - 1` workers); returns its size.
/// Workers may join before or after the first job: chunks go to whoever is there.
#[wasm_bindgen(js_name = buildCpuThreadPool)]
pub fn build_cpu_thread_pool(threads: usize) -> usize {
    emberlm_cpu::parallel::init_wasm_pool(threads.max(1))
}

/// Runs in a pool worker once it has instantiated the module: works for the pool for the life
/// of the page (blocking this worker, which has nothing else to do).
#[wasm_bindgen(js_name = runCpuThread)]
pub fn run_cpu_thread() -> Result<(), JsValue> {
    match emberlm_cpu::parallel::wasm_pool_work() {
        Some(never) => match never {},
        None => Err(JsValue::from_str("the CPU thread pool was never built")),
    }
}

/// Called by a pool worker whose `runCpuThread` threw (a trap: a panic, or running out of
/// memory, inside a chunk): the engine's worker stops waiting for that chunk and fails.
#[wasm_bindgen(js_name = cpuThreadCrashed)]
pub fn cpu_thread_crashed() {
    emberlm_cpu::parallel::wasm_pool_thread_lost();
}

/// For the browser tests: a job whose chunks trap on the pool's workers; this call must then
/// trap too (not hang).
#[cfg(feature = "selftest")]
#[wasm_bindgen(js_name = selfTestCrashInCpuThread)]
pub fn self_test_crash_in_cpu_thread() {
    emberlm_cpu::parallel::wasm_pool_crash_a_worker();
}

/// This module and its shared memory, for the pool workers to instantiate.
#[wasm_bindgen(js_name = sharedModule)]
pub fn shared_module() -> JsValue {
    wasm_bindgen::module()
}

#[wasm_bindgen(js_name = sharedMemory)]
pub fn shared_memory() -> JsValue {
    wasm_bindgen::memory()
}
