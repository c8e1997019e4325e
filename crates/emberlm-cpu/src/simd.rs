//! Run-time choice of the SIMD level natively. The row kernels are plain Rust written for the
//! auto-vectoriser; [`multiversion!`] compiles one a second time with AVX2+FMA+F16C enabled and
//! picks that copy when the CPU has them, so one binary runs everywhere and fast where it can.
//! The hottest kernels are intrinsics instead, chosen once in [`crate::matvec::RowKernels`].
//! The wasm build is compiled with `simd128` (`.cargo/config.toml`) and has no run-time choice.

#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// AVX-512F on top of AVX2: the row kernels' 16-lane versions.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    has_avx2() && std::is_x86_feature_detected!("avx512f")
}

/// AVX-512 VNNI (with BW and VL): byte dot products for the 8-bit activation kernels.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512_vnni() -> bool {
    has_avx512() && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512vnni")
}

/// Asks the CPU to start loading `words` into cache (a hint: never faults, costs a few
/// instructions per 64-byte line). A no-op where the target has no prefetch instruction (wasm).
#[inline(always)]
pub fn prefetch(words: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = words.as_ptr() as *const i8;
        for line in (0..words.len() * 4).step_by(64) {
            // SAFETY: `_mm_prefetch` is SSE (baseline on x86_64) and only a hint; the address is
            // inside `words`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = words;
}

/// The SIMD level the row kernels run with ([`crate::matvec::RowKernels`]).
pub fn level() -> &'static str {
    crate::matvec::RowKernels::get().level
}

/// `multiversion! { pub fn name(args) -> T { body } }` defines `name`, which runs `body`
/// compiled for AVX2+FMA+F16C when the CPU has them and for the build's baseline otherwise.
/// Helpers the body calls must be `#[inline(always)]` to be compiled into each copy.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::simd::has_avx2() {
                    // SAFETY: the CPU supports every feature `avx2` was compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
