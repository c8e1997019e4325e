//! The CPU backend's thread pool in the wasm threads build (`+atomics`, one shared memory).
//!
//! rayon's global pool is started on Web Workers: the npm package (`npm/src/cpu-threads.ts`)
//! starts one worker per thread, each instantiates this module on the shared memory and calls
//! [`run_cpu_thread`], which blocks until [`build_cpu_thread_pool`] hands it a rayon thread to
//! run. The idea is wasm-bindgen-rayon's; its own worker script finds the glue through a path
//! (or a blob: URL) that neither bundlers of our npm package nor a strict CSP allow, so the
//! workers here are the package's own module, and the channel is std's.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use rayon::ThreadBuilder;
use wasm_bindgen::prelude::*;

/// rayon threads waiting for a worker to run them.
fn waiting_threads() -> &'static (Sender<ThreadBuilder>, Mutex<Receiver<ThreadBuilder>>) {
    static WAITING: OnceLock<(Sender<ThreadBuilder>, Mutex<Receiver<ThreadBuilder>>)> = OnceLock::new();
    WAITING.get_or_init(|| {
        let (sender, receiver) = channel();
        (sender, Mutex::new(receiver))
    })
}

/// Runs in a pool worker once it has instantiated the module: takes the next rayon thread and
/// runs it (for the life of the page; it blocks the worker, which has nothing else to do).
#[wasm_bindgen(js_name = runCpuThread)]
pub fn run_cpu_thread() -> Result<(), JsValue> {
    let next = waiting_threads().1.lock().map_err(|_| JsValue::from_str("the CPU thread pool's queue is poisoned"))?.recv();
    next.map_err(|_| JsValue::from_str("the CPU thread pool was never built"))?.run();
    Ok(())
}

/// Builds rayon's global pool on `threads` workers that are already waiting in
/// [`run_cpu_thread`] (rayon blocks here until every thread has started). Returns the size.
#[wasm_bindgen(js_name = buildCpuThreadPool)]
pub fn build_cpu_thread_pool(threads: usize) -> Result<usize, JsValue> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .spawn_handler(|thread| waiting_threads().0.send(thread).map_err(|_| std::io::Error::other("no worker is waiting")))
        .build_global()
        .map_err(|e| JsValue::from_str(&format!("the CPU thread pool could not start: {e}")))?;
    Ok(rayon::current_num_threads())
}

/// This module and its shared memory, for the pool workers to instantiate.
#[wasm_bindgen(js_name = sharedModule)]
pub fn wasm_module() -> JsValue {
    wasm_bindgen::module()
}

#[wasm_bindgen(js_name = sharedMemory)]
pub fn wasm_memory() -> JsValue {
    wasm_bindgen::memory()
}
