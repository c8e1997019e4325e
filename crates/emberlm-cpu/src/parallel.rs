//! Splitting work across threads: rayon's pool natively and in the wasm threads build (Web
//! Workers on one shared memory, started by the npm package), the calling thread in plain wasm.

use std::ops::Range;

/// Sizes the global pool once (later calls keep the first size) and returns the thread count.
/// In a wasm threads build the pool is started from JavaScript (Web Workers sharing the
/// memory) before any model loads, so `threads` is not used there.
pub fn init(threads: Option<usize>) -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(n) = threads {
        // Fails only if the pool already exists, which keeps its size: reported below.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let _ = threads;
    self::threads()
}

/// Threads the kernels split work over: rayon's pool natively and in a wasm threads build
/// (`+atomics`), one in a plain wasm build.
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        1
    }
}

/// Items per task: about `n / (threads · 4)` (some slack for uneven threads), at least `min_chunk`.
fn chunk_len(n: usize, min_chunk: usize) -> usize {
    n.div_ceil(threads() * 4).max(min_chunk).max(1)
}

/// Runs `f` on consecutive ranges of `0..n` of about `n / (threads · 4)` items (at least
/// `min_chunk`) and returns the results in range order.
pub fn map_ranges<R: Send>(n: usize, min_chunk: usize, f: impl Fn(Range<usize>) -> R + Sync + Send) -> Vec<R> {
    let chunk = chunk_len(n, min_chunk);
    let ranges = (0..n.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(n));
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        if n <= chunk {
            return ranges.map(f).collect();
        }
        ranges.collect::<Vec<_>>().into_par_iter().map(f).collect()
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        ranges.map(f).collect()
    }
}

/// Runs `f(start, part)` on consecutive parts of `out` (about `len / (threads · 4)` items, at
/// least `min_chunk`); `part` is `out[start..start + part.len()]`.
pub fn for_parts(out: &mut [f32], min_chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let chunk = chunk_len(out.len(), min_chunk);
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        if out.len() > chunk {
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, part)| f(i * chunk, part));
            return;
        }
    }
    for (i, part) in out.chunks_mut(chunk).enumerate() {
        f(i * chunk, part);
    }
}
