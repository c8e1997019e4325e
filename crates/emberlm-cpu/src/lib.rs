//! emberlm-cpu: the CPU backend's kernels, for machines whose only WebGPU adapter is a software
//! rasteriser (SwiftShader, llvmpipe, WARP) or that have no WebGPU at all.
//!
//! The same ops as `emberlm_core::ops`, with the same arguments and memory layouts, executed at
//! once instead of recorded: a model's forward pass is written once against the backend trait in
//! `emberlm-models` and runs on either. Weights stay in the packed formats of
//! [`emberlm_core::dtype`] (no f32 widening); the row dots decode them in registers:
//! - [`matvec`]: one token (decode); Q4 and Q8 fused dot products, the K formats and f16
//!   decoded a row at a time into a small scratch, in f32 like the GPU kernels; by default Q4
//!   and Q8 meet activations rounded to 8 bits in integer dot products instead ([`int8`]).
//! - [`matvec::matmul`]: many tokens (prefill); each weight row is decoded once and dotted with
//!   every token.
//! - [`attention`] and [`ops`]: the rest of a transformer step.
//!
//! Work is split over rows ([`parallel`]) on a [`pool`] whose idle threads spin between a
//! token's regions: std threads natively, Web Workers sharing the memory in the wasm threads
//! build; the plain wasm build runs on one thread.
//! Hot loops are written so LLVM vectorises them (explicit lane accumulators), and natively
//! the row kernels are compiled a second time for AVX2+FMA and chosen at run time ([`simd`]).

pub mod attention;
#[cfg(feature = "reference")]
pub mod checks;
pub mod int8;
pub mod math;
pub mod matvec;
pub mod moe;
pub mod ops;
pub mod parallel;
pub mod pool;
pub mod profile;
pub mod simd;
pub mod tensor;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod wasm;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use tensor::CpuTensor;

/// The CPU "device": how many threads the kernels use, what the CPU offers, and how decode
/// meets Q4/Q8 weights.
#[derive(Debug, Clone)]
pub struct CpuDevice {
    pub threads: usize,
    /// The SIMD level the row kernels run with, e.g. `avx2+fma` or `simd128`.
    pub simd: &'static str,
    /// 8-bit activations for one-token matvecs over Q4/Q8 weights (the default), or exact f32.
    pub activations: int8::Activations,
}

impl CpuDevice {
    /// `threads`: `None` for one per core (natively); in wasm the pool the host started (one
    /// thread in the plain build).
    pub fn new(threads: Option<usize>) -> Self {
        Self { threads: parallel::init(threads), simd: simd::level(), activations: int8::Activations::default() }
    }

    /// The same device with `activations` chosen.
    pub fn with_activations(self, activations: int8::Activations) -> Self {
        Self { activations, ..self }
    }

    /// Bytes per second a copy between two `bytes`-sized arrays moves on the kernels' threads
    /// (read + write counted), `reps` copies: the yardstick decode's weight GB/s is held against.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_bandwidth(&self, bytes: u64, reps: usize) -> f64 {
        let n = (bytes / 4) as usize;
        let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut dst = vec![0f32; n];
        let copy = |dst: &mut [f32]| parallel::for_parts(dst, 1 << 16, |start, part| part.copy_from_slice(&src[start..start + part.len()]));
        copy(&mut dst);
        let t = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            copy(&mut dst);
        }
        std::hint::black_box(&dst);
        2.0 * (n * 4) as f64 * reps.max(1) as f64 / t.elapsed().as_secs_f64()
    }

    /// A short description for reports: `cpu (2 threads, avx2+fma)`, `…, f32 activations)` when exact.
    pub fn describe(&self) -> String {
        let exact = if self.activations == int8::Activations::Exact { ", f32 activations" } else { "" };
        format!("cpu ({} thread{}, {}{exact})", self.threads, if self.threads == 1 { "" } else { "s" }, self.simd)
    }
}

/// Lets the JavaScript host run its queued tasks (an abort message, a UI update) between CPU
/// steps: the WebGPU backend awaits the GPU every step, but CPU steps would otherwise run back
/// to back without ever returning to the event loop. In browsers a `MessageChannel` round trip
/// is a task without `setTimeout`'s 4 ms clamp (tens of µs), so this yields after 0.5 ms of
/// work; in Node, Deno
/// and Bun (where an active port would hold the process open) a `setTimeout(0)` after 30 ms.
/// Natively there is nothing to do.
pub async fn yield_to_host() {
    #[cfg(target_arch = "wasm32")]
    {
        use js_sys::wasm_bindgen::{JsCast, JsValue};
        use std::cell::{Cell, RefCell};
        thread_local! {
            static LAST: Cell<f64> = const { Cell::new(0.0) };
            /// (port1, port2) of one MessageChannel in a browser, made on first use.
            static CHANNEL: RefCell<Option<Option<(JsValue, JsValue)>>> = const { RefCell::new(None) };
        }
        let global = js_sys::global();
        let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
        let function = |o: &JsValue, k: &str| get(o, k).and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let ports = CHANNEL.with_borrow_mut(|c| {
            c.get_or_insert_with(|| {
                if get(&global, "process").is_some() {
                    return None;
                }
                let channel = js_sys::Reflect::construct(&function(&global, "MessageChannel")?, &js_sys::Array::new()).ok()?;
                Some((get(&channel, "port1")?, get(&channel, "port2")?))
            })
            .clone()
        });
        let now = js_sys::Date::now();
        if now - LAST.get() < if ports.is_some() { 0.5 } else { 30.0 } {
            return;
        }
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            let posted = match &ports {
                Some((port1, port2)) => {
                    js_sys::Reflect::set(port1, &"onmessage".into(), &resolve).is_ok()
                        && function(port2, "postMessage").is_some_and(|post| post.call1(port2, &JsValue::NULL).is_ok())
                }
                None => function(&global, "setTimeout").is_some_and(|set_timeout| set_timeout.call2(&global, &resolve, &0.into()).is_ok()),
            };
            if !posted {
                // Never leave the step waiting on a task that was not queued.
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        LAST.set(js_sys::Date::now());
    }
}
