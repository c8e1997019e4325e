//! Splitting work across threads: one [`Pool`] per process (natively: the caller and
//! `threads - 1` std threads; in the wasm threads build: the engine's worker and `threads - 1`
//! Web Workers on the shared memory, started by the npm package), whose idle threads spin
//! between a token's regions; the calling thread alone in the plain wasm build.

use std::ops::Range;

#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
use crate::pool::Pool;

/// The process's pool, once made.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
static POOL: std::sync::OnceLock<&'static Pool> = std::sync::OnceLock::new();

/// Makes the pool once (later calls keep the first size) and returns the thread count:
/// natively `threads` (default: one per core) with its worker threads started; in a wasm
/// threads build the pool is made by [`init_wasm_pool`] before any model loads, so `threads`
/// is not used there.
pub fn init(threads: Option<usize>) -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    POOL.get_or_init(|| {
        let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(n)));
        for i in 1..n {
            // Detached for the life of the process, as rayon's global pool is.
            let spawned = std::thread::Builder::new().name(format!("emberlm-cpu-{i}")).spawn(move || pool.work());
            if spawned.is_err() {
                // Fewer workers: their chunks go to whoever is there, the caller included.
                break;
            }
        }
        pool
    });
    let _ = threads;
    self::threads()
}

/// Threads the kernels split work over (one in the plain wasm build, and before the pool is made).
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        POOL.get().map_or(1, |p| p.threads())
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        1
    }
}

/// Makes the wasm threads build's pool for `threads` threads: the caller (the engine's worker)
/// and `threads - 1` Web Workers, each of which then calls [`wasm_pool_work`]. Once per module
/// instance; returns the pool's size.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub fn init_wasm_pool(threads: usize) -> usize {
    POOL.get_or_init(|| Box::leak(Box::new(Pool::new(threads)))).threads()
}

/// A pool worker's life (never returns); `None` when the pool has not been made.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub fn wasm_pool_work() -> Option<std::convert::Infallible> {
    POOL.get().map(|pool| pool.work())
}

/// Called by a pool worker's JavaScript after its call into the module trapped (see
/// [`Pool::thread_lost`]), on that worker's thread.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub fn wasm_pool_thread_lost() {
    if let Some(pool) = POOL.get() {
        pool.thread_lost();
    }
}

/// For the browser tests of the above: a job whose chunks panic on the pool's workers (a trap
/// in wasm) while the caller waits for one to. The caller must then panic too, not hang.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics", feature = "reference"))]
pub fn wasm_pool_crash_a_worker() {
    use std::sync::atomic::{AtomicBool, Ordering};
    thread_local!(static CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let Some(pool) = POOL.get().filter(|p| p.threads() > 1) else { panic!("the pool has no workers") };
    CALLER.with(|c| c.set(true));
    let trapped = AtomicBool::new(false);
    pool.run(64, &|_| {
        if CALLER.with(|c| c.get()) {
            // Leaves the chunks to the workers; gives up after a few seconds of spinning.
            for _ in 0..4_000_000_000u64 {
                if trapped.load(Ordering::Acquire) {
                    break;
                }
                std::hint::spin_loop();
            }
        } else {
            trapped.store(true, Ordering::Release);
            panic!("a test panic on a CPU thread");
        }
    });
}

/// The pool, when there is one and a job of `chunks` chunks is worth splitting.
/// Called after [`chunk_len`], which has made the pool natively.
fn pool_for(chunks: usize) -> Option<&'static crate::pool::Pool> {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        POOL.get().copied().filter(|p| chunks > 1 && p.threads() > 1)
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        let _ = chunks;
        None
    }
}

/// Items per task: about `n / (threads · 4)` (some slack for uneven threads), at least `min_chunk`.
fn chunk_len(n: usize, min_chunk: usize) -> usize {
    // Natively the pool is made on first use (one thread per core) when no device made it.
    #[cfg(not(target_arch = "wasm32"))]
    init(None);
    n.div_ceil(threads() * 4).max(min_chunk).max(1)
}

/// Runs `f` on consecutive ranges of `0..n` of about `n / (threads · 4)` items (at least
/// `min_chunk`) and returns the results in range order.
pub fn map_ranges<R: Send>(n: usize, min_chunk: usize, f: impl Fn(Range<usize>) -> R + Sync + Send) -> Vec<R> {
    let chunk = chunk_len(n, min_chunk);
    let ranges: Vec<_> = (0..n.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(n)).collect();
    let Some(pool) = pool_for(ranges.len()) else { return ranges.into_iter().map(f).collect() };
    let slots: Vec<std::sync::Mutex<Option<R>>> = ranges.iter().map(|_| std::sync::Mutex::new(None)).collect();
    pool.run(ranges.len(), &|i| *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(f(ranges[i].clone())));
    slots.into_iter().map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every chunk ran")).collect()
}

/// Runs `f(start, part)` on consecutive parts of `out` (about `len / (threads · 4)` items, at
/// least `min_chunk`); `part` is `out[start..start + part.len()]`.
pub fn for_parts(out: &mut [f32], min_chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let chunk = chunk_len(out.len(), min_chunk);
    let Some(pool) = pool_for(out.len().div_ceil(chunk)) else {
        for (i, part) in out.chunks_mut(chunk).enumerate() {
            f(i * chunk, part);
        }
        return;
    };
    /// The output's address, shared with the pool's threads; each chunk index is run once, so
    /// the parts they make are disjoint.
    struct Out(*mut f32, usize);
    unsafe impl Sync for Out {}
    impl Out {
        /// SAFETY: each `i` is asked for once while the output is borrowed.
        // The `&mut` comes from the raw pointer, not from `&self`: disjoint parts by contract.
        #[allow(clippy::mut_from_ref)]
        unsafe fn part(&self, i: usize, chunk: usize) -> &mut [f32] {
            let start = i * chunk;
            unsafe { std::slice::from_raw_parts_mut(self.0.add(start), chunk.min(self.1 - start)) }
        }
    }
    let whole = Out(out.as_mut_ptr(), out.len());
    // SAFETY: the pool runs every chunk index once, and `out` stays borrowed until it returns.
    pool.run(out.len().div_ceil(chunk), &|i| f(i * chunk, unsafe { whole.part(i, chunk) }));
}
