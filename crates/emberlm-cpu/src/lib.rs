//! emberlm-cpu: the CPU backend's kernels, for machines whose only WebGPU adapter is a software
//! rasteriser (SwiftShader, llvmpipe, WARP) or that have no WebGPU at all.
//!
//! The same ops as `emberlm_core::ops`, with the same arguments and memory layouts, executed at
//! once instead of recorded: a model's forward pass is written once against the backend trait in
//! `emberlm-models` and runs on either. Weights stay in the packed formats of
//! [`emberlm_core::dtype`] (no f32 widening); the row dots decode them in registers:
//! - [`matvec`]: one token (decode); Q4 and Q8 fused dot products, the K formats and f16
//!   decoded a row at a time into a small scratch, all in f32 like the GPU kernels, so the
//!   backends agree to rounding.
//! - [`matvec::matmul`]: many tokens (prefill); each weight row is decoded once and dotted with
//!   every token.
//! - [`attention`] and [`ops`]: the rest of a transformer step.
//!
//! Work is split over rows with rayon natively ([`parallel`]); the wasm build runs on one thread.
//! Hot loops are written so LLVM vectorises them (explicit lane accumulators), and natively
//! the row kernels are compiled a second time for AVX2+FMA and chosen at run time ([`simd`]).

pub mod attention;
#[cfg(feature = "reference")]
pub mod checks;
pub mod matvec;
pub mod ops;
pub mod parallel;
pub mod profile;
pub mod simd;
pub mod tensor;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod wasm;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use tensor::CpuTensor;

/// The CPU "device": how many threads the kernels use and what the CPU offers.
#[derive(Debug, Clone)]
pub struct CpuDevice {
    pub threads: usize,
    /// The SIMD level the row kernels run with, e.g. `avx2+fma` or `simd128`.
    pub simd: &'static str,
}

impl CpuDevice {
    /// `threads`: `None` for one per core (natively); the wasm build always uses one.
    pub fn new(threads: Option<usize>) -> Self {
        Self { threads: parallel::init(threads), simd: simd::level() }
    }

    /// A short description for reports: `cpu (2 threads, avx2+fma)`.
    pub fn describe(&self) -> String {
        format!("cpu ({} thread{}, {})", self.threads, if self.threads == 1 { "" } else { "s" }, self.simd)
    }
}

/// Lets the JavaScript host run its queued tasks (an abort message, a UI update) when the CPU
/// backend has computed for a while without a break: the WebGPU backend awaits the GPU every
/// step, but CPU steps would otherwise run back to back without ever returning to the event
/// loop. A `setTimeout(0)` round trip is ~4 ms in browsers, so it happens at most every 30 ms.
/// Natively there is nothing to do.
pub async fn yield_to_host() {
    #[cfg(target_arch = "wasm32")]
    {
        use js_sys::wasm_bindgen::JsCast;
        use std::cell::Cell;
        thread_local!(static LAST: Cell<f64> = const { Cell::new(0.0) });
        let now = js_sys::Date::now();
        if now - LAST.get() < 30.0 {
            return;
        }
        let global = js_sys::global();
        let Ok(set_timeout) = js_sys::Reflect::get(&global, &"setTimeout".into()).and_then(|f| f.dyn_into::<js_sys::Function>()) else { return };
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let _ = set_timeout.call2(&global, &resolve, &0.into());
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        LAST.set(js_sys::Date::now());
    }
}
