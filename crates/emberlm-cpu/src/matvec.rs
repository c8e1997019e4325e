//! Row dot products over packed weights: [`matvec_rows`] for one token (decode) and
//! [`matmul_rows`] for many (prefill). Both accumulate in f32 like the GPU kernels; decode's
//! Q4/Q8 rows can instead meet 8-bit activations in integer dots ([`crate::int8`]).
//!
//! Q4 and Q8 are dotted straight from their words; Q4's `min` term factors out as `min · Σx` per
//! group. The K formats and f16 are decoded a row at a time into a scratch row
//! ([`dequantize_row`]), which stays in L1, and dotted from there. Prefill decodes four rows at
//! a time and multiplies them with every token in register tiles. The inner kernels come from
//! [`RowKernels`]: the intrinsics of [`crate::x86`] (AVX2+FMA, AVX-512) or [`crate::wasm`]
//! (`simd128`) where the CPU has them, else the portable loops here, written for the
//! auto-vectoriser (NEON).

use emberlm_core::dtype::{k_scale_min, GROUP_SIZE, SUPER_BLOCK};
use emberlm_core::DType;

use crate::int8::{self, Activations, Int8Activations, Int8Layout};
use crate::multiversion;

/// f16 bits (the low half of `h`) to f32, exactly, without a table or F16C.
#[inline(always)]
pub fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000) << 16;
    let rest = h & 0x7fff;
    let magnitude = if rest >= 0x7c00 {
        // Inf and NaN keep their payload.
        0x7f80_0000 | ((rest & 0x3ff) << 13)
    } else {
        // Exponent and mantissa moved into place, then rebased from 15 to 127 by 2^112;
        // subnormal halves become f32 denormals that the multiply normalises exactly.
        (f32::from_bits(rest << 13) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(magnitude | sign)
}

/// Sum of lane accumulators, pairwise.
#[inline(always)]
fn lanes_sum<const N: usize>(acc: &[f32; N]) -> f32 {
    let mut v = *acc;
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// Σ a[i]·b[i] with 16 independent lanes (vectorisable without reassociating a single sum).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let mut acc = [0f32; L];
    for (ca, cb) in a[..n / L * L].chunks_exact(L).zip(b[..n / L * L].chunks_exact(L)) {
        for i in 0..L {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s = lanes_sum(&acc);
    for i in n / L * L..n {
        s += a[i] * b[i];
    }
    s
}

/// Σ w[i]·x_t[i] for four activation rows at once: each weight is loaded once for four tokens.
#[inline(always)]
fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    const L: usize = 8;
    let n = w.len() / L * L;
    let mut acc = [[0f32; L]; 4];
    for (c, cw) in w[..n].chunks_exact(L).enumerate() {
        for (t, a) in acc.iter_mut().enumerate() {
            let cx = &x[t][c * L..c * L + L];
            for i in 0..L {
                a[i] += cw[i] * cx[i];
            }
        }
    }
    let mut out = [0f32; 4];
    for t in 0..4 {
        out[t] = lanes_sum(&acc[t]);
        for i in n..w.len() {
            out[t] += w[i] * x[t][i];
        }
    }
    out
}

/// One token's activations as the chosen kernels read them, prepared once per matvec (not per
/// thread's share of the rows).
pub enum RowActivations {
    /// As they are (f32, f16, the K formats, Q8 exact).
    Plain,
    /// Q4 exact: in [`nibble_order`] where the kernel widens a group's bytes at once, and Σx per
    /// group for Q4's min term (`Σ (q·s + m)·x = s·Σ q·x + m·Σx`).
    Q4 { ordered: Option<Vec<f32>>, group_sums: Vec<f32> },
    /// Rounded to 8 bits for the integer kernels ([`crate::int8`]).
    Int8(Int8Activations),
}

impl RowActivations {
    pub fn new(kernels: &RowKernels, dtype: DType, x: &[f32], activations: Activations) -> Self {
        if activations.rounds(dtype) {
            RowActivations::Int8(Int8Activations::new(x, kernels.int8_layout(dtype)))
        } else if dtype == DType::Q4 {
            RowActivations::Q4 {
                ordered: kernels.q4_nibble_order.then(|| nibble_order(x)),
                group_sums: x.chunks_exact(GROUP_SIZE).map(|g| g.iter().sum()).collect(),
            }
        } else {
            RowActivations::Plain
        }
    }
}

#[inline(always)]
fn dot_q4(qs: &[u32], sc: &[u32], x: &[f32], group_sums: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut mins = 0f32;
    for ((words, &s), (x, &sum)) in qs.chunks_exact(4).zip(sc).zip(x.chunks_exact(GROUP_SIZE).zip(group_sums)) {
        let scale = f16_to_f32(s & 0xffff);
        let mut q = [0f32; GROUP_SIZE];
        unpack_nibbles(words, &mut q, |v, _| v as f32);
        for (c, cx) in q.chunks_exact(8).zip(x.chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += scale * (c[l] * cx[l]);
            }
        }
        mins += f16_to_f32(s >> 16) * sum;
    }
    lanes_sum(&acc) + mins
}

#[inline(always)]
fn dot_q8(qs: &[u32], sc: &[u32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    for (g, (words, x)) in qs.chunks_exact(8).zip(x.chunks_exact(GROUP_SIZE)).enumerate() {
        let scale = f16_to_f32((sc[g / 2] >> (16 * (g % 2))) & 0xffff);
        let bytes = bytemuck::cast::<[u32; 8], [u8; 32]>(words.try_into().unwrap());
        for j in 0..32 {
            acc[j] += scale * (bytes[j] as i8 as f32 * x[j]);
        }
    }
    lanes_sum(&acc)
}

/// Byte `i` of little-endian words.
#[inline(always)]
fn byte_of(words: &[u32], i: usize) -> u8 {
    (words[i / 4] >> (8 * (i % 4))) as u8
}

/// Decodes one row (`qs`/`sc`: the row's segments) into `out` (k values), in natural order.
#[inline(always)]
pub fn dequantize_row(dtype: DType, qs: &[u32], sc: &[u32], out: &mut [f32]) {
    let k = out.len();
    match dtype {
        DType::F32 => out.copy_from_slice(bytemuck::cast_slice(&qs[..k])),
        DType::F16 => {
            for (pair, &w) in out.chunks_exact_mut(2).zip(qs) {
                pair[0] = f16_to_f32(w & 0xffff);
                pair[1] = f16_to_f32(w >> 16);
            }
        }
        DType::Q8 => {
            for (g, (words, o)) in qs.chunks_exact(8).zip(out.chunks_exact_mut(GROUP_SIZE)).enumerate() {
                let scale = f16_to_f32((sc[g / 2] >> (16 * (g % 2))) & 0xffff);
                let bytes = bytemuck::cast::<[u32; 8], [u8; 32]>(words.try_into().unwrap());
                for j in 0..32 {
                    o[j] = bytes[j] as i8 as f32 * scale;
                }
            }
        }
        DType::Q4 => {
            for ((words, &s), o) in qs.chunks_exact(4).zip(sc).zip(out.chunks_exact_mut(GROUP_SIZE)) {
                let (scale, min) = (f16_to_f32(s & 0xffff), f16_to_f32(s >> 16));
                unpack_nibbles(words, o, |q, _| q as f32 * scale + min);
            }
        }
        DType::Mxfp4 => {
            for (g, (words, o)) in qs.chunks_exact(4).zip(out.chunks_exact_mut(GROUP_SIZE)).enumerate() {
                // 2^(e − 127) times each code's value: both exact, and so is their product.
                let scale = emberlm_core::dtype::mxfp4_value(2, byte_of(sc, g));
                unpack_nibbles(words, o, |q, _| E2M1_SIGNED[q as usize] * scale);
            }
        }
        DType::Q4K | DType::Q5K | DType::Q6K => {
            let hw = dtype.super_block_words();
            let (low, high) = qs.split_at(k / 8);
            for (sb, o) in out.chunks_exact_mut(SUPER_BLOCK).enumerate() {
                let header = &sc[sb * hw..(sb + 1) * hw];
                for (j, og) in o.chunks_exact_mut(GROUP_SIZE).enumerate() {
                    let words = &low[sb * 32 + 4 * j..sb * 32 + 4 * j + 4];
                    match dtype {
                        DType::Q6K => {
                            let d = f16_to_f32(header[0] & 0xffff);
                            let s = [d * byte_of(&header[1..], 2 * j) as i8 as f32, d * byte_of(&header[1..], 2 * j + 1) as i8 as f32];
                            let h = [high[sb * 16 + 2 * j], high[sb * 16 + 2 * j + 1]];
                            unpack_nibbles(words, og, |q, i| {
                                let q = q | ((h[i / 16] >> (2 * (i % 16))) & 3) << 4;
                                s[i / 16] * (q as f32 - 32.0)
                            });
                        }
                        _ => {
                            let (s, m) = k_scale_min(&header[1..], j);
                            let a = f16_to_f32(header[0] & 0xffff) * s as f32;
                            let b = f16_to_f32(header[0] >> 16) * m as f32;
                            let h = if dtype == DType::Q5K { high[sb * 8 + j] } else { 0 };
                            unpack_nibbles(words, og, |q, i| a * (q | ((h >> i) & 1) << 4) as f32 - b);
                        }
                    }
                }
            }
        }
    }
}

/// The e2m1 codes' values, sign included (code 2 is 1.0).
const E2M1_SIGNED: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Calls `f(q, i)` for the 32 nibbles of four Q4 words (`i`: position in the group) and stores
/// the results in natural order.
#[inline(always)]
fn unpack_nibbles(words: &[u32], out: &mut [f32], f: impl Fn(u32, usize) -> f32) {
    for (w, &word) in words.iter().enumerate() {
        for b in 0..4 {
            let byte = (word >> (8 * b)) & 0xff;
            out[8 * w + b] = f(byte & 15, 8 * w + b);
            out[8 * w + 4 + b] = f(byte >> 4, 8 * w + 4 + b);
        }
    }
}

multiversion! {
    /// [`dequantize_row`], compiled for the CPU's SIMD level (AVX2 kernels for Q4/Q8 on x86_64).
    pub fn dequantize_row_fast(dtype: DType, qs: &[u32], sc: &[u32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() && matches!(dtype, DType::Q4 | DType::Q8) {
            // SAFETY: has_avx2() checked the CPU; the kernels check their slice lengths.
            unsafe {
                return match dtype {
                    DType::Q4 => crate::x86::dequantize_q4(qs, sc, out),
                    _ => crate::x86::dequantize_q8(qs, sc, out),
                };
            }
        }
        dequantize_row(dtype, qs, sc, out)
    }
}

/// `x` per group of 32 in the order a Q4 group's nibbles come out when its 16 bytes are widened
/// at once (AVX-512, simd128): the 16 values meeting the low nibbles (weights 0–3, 8–11, 16–19,
/// 24–27), then the 16 meeting the high nibbles.
pub fn nibble_order(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (src, dst) in x.chunks_exact(GROUP_SIZE).zip(out.chunks_exact_mut(GROUP_SIZE)) {
        for j in 0..16 {
            let i = 8 * (j / 4) + j % 4;
            dst[j] = src[i];
            dst[16 + j] = src[i + 4];
        }
    }
    out
}

/// `out[r·m + t] = Σ w[r·k + i]·x[t·k + i]` for 4 decoded rows: four tokens share each weight load.
fn matmul_4rows(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
    let xt = |t: usize| &x[t * k..(t + 1) * k];
    for r in 0..4 {
        let (wr, o) = (&w[r * k..(r + 1) * k], &mut out[r * m..(r + 1) * m]);
        let mut t = 0;
        while t + 4 <= m {
            o[t..t + 4].copy_from_slice(&dot4(wr, [xt(t), xt(t + 1), xt(t + 2), xt(t + 3)]));
            t += 4;
        }
        for t in t..m {
            o[t] = dot(wr, xt(t));
        }
    }
}

/// An integer Q4 matmul: rows' segments against every token's 8-bit activations (in `layout`),
/// out [tokens, rows]; it works on panels of `panel_rows` rows, so a thread's share of the rows
/// should be a multiple of that.
#[derive(Clone, Copy)]
pub struct IntegerMatmul {
    pub kernel: unsafe fn(&[u32], &[u32], &[Int8Activations], &mut [f32]),
    pub layout: Int8Layout,
    pub panel_rows: usize,
}

/// The row kernels this CPU runs, chosen once ([`RowKernels::get`]): AVX-512, AVX2+FMA, wasm
/// `simd128`, or the portable loops above. [`matvec_rows`] and [`matmul_rows`] are written once
/// over them.
pub struct RowKernels {
    pub level: &'static str,
    /// Q4 activations go in [`nibble_order`] (kernels that widen a group's bytes at once).
    q4_nibble_order: bool,
    dot: unsafe fn(&[f32], &[f32]) -> f32,
    /// (row qs, row scales, x, Σx per group).
    dot_q4: unsafe fn(&[u32], &[u32], &[f32], &[f32]) -> f32,
    dot_q8: unsafe fn(&[u32], &[u32], &[f32]) -> f32,
    /// (row qs, row scales, 8-bit activations in the dtype's order).
    dot_q4_int8: unsafe fn(&[u32], &[u32], &Int8Activations) -> f32,
    dot_q8_int8: unsafe fn(&[u32], &[u32], &Int8Activations) -> f32,
    /// How the Q4 integer kernels want activations laid out.
    q4_int8_layout: Int8Layout,
    /// Q4 and Q8 rows against many tokens' 8-bit activations, where it beats f32.
    matmul_q4_int8: Option<IntegerMatmul>,
    matmul_q8_int8: Option<IntegerMatmul>,
    /// (4 decoded rows, x, k, m, out [4, m]).
    matmul_4rows: unsafe fn(&[f32], &[f32], usize, usize, &mut [f32]),
}

#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: RowKernels = RowKernels {
    level: "avx512+vnni",
    dot_q4_int8: crate::x86::dot_q4_int8_vnni,
    dot_q8_int8: crate::x86::dot_q8_int8_vnni,
    q4_int8_layout: Int8Layout::NibbleBlocks,
    matmul_q4_int8: Some(IntegerMatmul { kernel: crate::x86::matmul_q4_int8_vnni, layout: Int8Layout::Natural, panel_rows: crate::x86::PANEL_ROWS }),
    matmul_q8_int8: Some(IntegerMatmul { kernel: crate::x86::matmul_q8_int8_vnni, layout: Int8Layout::Natural, panel_rows: crate::x86::PANEL_ROWS }),
    ..AVX512
};
#[cfg(target_arch = "x86_64")]
static AVX512: RowKernels = {
    use crate::x86;
    RowKernels {
        level: "avx512",
        q4_nibble_order: true,
        dot: x86::dot_512,
        dot_q4: x86::dot_q4_512,
        dot_q8: x86::dot_q8_512,
        dot_q4_int8: x86::dot_q4_int8,
        dot_q8_int8: x86::dot_q8_int8,
        q4_int8_layout: Int8Layout::Nibbles,
        matmul_q4_int8: None,
        matmul_q8_int8: None,
        matmul_4rows: x86::matmul_4rows_512,
    }
};
#[cfg(target_arch = "x86_64")]
static AVX2: RowKernels = {
    use crate::x86;
    RowKernels {
        level: "avx2+fma",
        q4_nibble_order: false,
        dot: x86::dot,
        dot_q4: x86::dot_q4,
        dot_q8: x86::dot_q8,
        dot_q4_int8: x86::dot_q4_int8,
        dot_q8_int8: x86::dot_q8_int8,
        q4_int8_layout: Int8Layout::Nibbles,
        matmul_q4_int8: None,
        matmul_q8_int8: None,
        matmul_4rows: x86::matmul_4rows,
    }
};
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
static SIMD128: RowKernels = {
    use crate::wasm;
    RowKernels {
        // The relaxed build's Q4 × int8 dot product is one relaxed instruction (wasm.rs).
        level: if cfg!(target_feature = "relaxed-simd") { "simd128+relaxed" } else { "simd128" },
        q4_nibble_order: true,
        dot: wasm::dot,
        dot_q4: wasm::dot_q4,
        dot_q8: wasm::dot_q8,
        dot_q4_int8: wasm::dot_q4_int8,
        dot_q8_int8: wasm::dot_q8_int8,
        q4_int8_layout: Int8Layout::Nibbles,
        matmul_q4_int8: Some(IntegerMatmul { kernel: wasm::matmul_q4_int8, layout: Int8Layout::Natural, panel_rows: wasm::PANEL_ROWS }),
        matmul_q8_int8: Some(IntegerMatmul { kernel: wasm::matmul_q8_int8, layout: Int8Layout::Natural, panel_rows: wasm::PANEL_ROWS }),
        matmul_4rows: wasm::matmul_4rows,
    }
};
static PORTABLE: RowKernels = RowKernels {
    level: if cfg!(target_arch = "aarch64") {
        "neon (auto-vectorised)"
    } else if cfg!(target_arch = "x86_64") {
        "sse2 (auto-vectorised)"
    } else {
        "portable"
    },
    q4_nibble_order: false,
    dot,
    dot_q4,
    dot_q8,
    dot_q4_int8: int8::dot_q4,
    dot_q8_int8: int8::dot_q8,
    q4_int8_layout: Int8Layout::Nibbles,
    matmul_q4_int8: None,
    matmul_q8_int8: None,
    matmul_4rows,
};

/// Set by [`RowKernels::force`]; null for the fastest available.
static FORCED: std::sync::atomic::AtomicPtr<RowKernels> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

impl RowKernels {
    /// Every set of kernels this CPU can run, fastest first.
    pub fn available() -> Vec<&'static RowKernels> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if crate::simd::has_avx512_vnni() {
                out.push(&AVX512_VNNI);
            }
            if crate::simd::has_avx512() {
                out.push(&AVX512);
            }
            if crate::simd::has_avx2() {
                out.push(&AVX2);
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        out.push(&SIMD128);
        out.push(&PORTABLE);
        out
    }

    /// The kernels every op uses: the fastest available unless [`RowKernels::force`] said otherwise.
    pub fn get() -> &'static RowKernels {
        let forced = FORCED.load(std::sync::atomic::Ordering::Relaxed);
        if !forced.is_null() {
            // SAFETY: only ever set from a `&'static RowKernels`.
            return unsafe { &*forced };
        }
        static FASTEST: std::sync::OnceLock<&'static RowKernels> = std::sync::OnceLock::new();
        FASTEST.get_or_init(|| Self::available()[0])
    }

    /// Makes every later op use `kernels` (one of [`RowKernels::available`]; `None`: the fastest
    /// again), process-wide: the checks run each SIMD level against the reference this way.
    pub fn force(kernels: Option<&'static RowKernels>) {
        FORCED.store(kernels.map_or(std::ptr::null_mut(), |k| k as *const RowKernels as *mut RowKernels), std::sync::atomic::Ordering::Relaxed);
    }

    /// The layout the integer kernels want 8-bit activations in for `dtype` weights.
    pub fn int8_layout(&self, dtype: DType) -> Int8Layout {
        if dtype == DType::Q4 {
            self.q4_int8_layout
        } else {
            Int8Layout::Natural
        }
    }

    /// The integer matmul for `dtype` weights, where these kernels have one that beats f32.
    pub fn matmul_int8(&self, dtype: DType) -> Option<IntegerMatmul> {
        match dtype {
            DType::Q4 => self.matmul_q4_int8,
            DType::Q8 => self.matmul_q8_int8,
            _ => None,
        }
    }

    /// Σ a[i]·b[i] with the chosen kernel.
    pub fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `get` chose kernels this CPU runs; the kernels check their slice lengths.
        unsafe { (self.dot)(a, b) }
    }
}

/// u32 words of one row's value and scale segments.
pub(crate) fn row_words(dtype: DType, k: usize) -> (usize, usize) {
    ((dtype.qs_row_bytes(k) / 4) as usize, (dtype.scale_row_bytes(k) / 4) as usize)
}

/// Rows ahead of the one being dotted whose weights [`matvec_rows`] prefetches.
const PREFETCH_ROWS: usize = 2;

/// `out[i] = W[row0 + i] · x` for `out.len()` rows of a `k`-wide matrix whose segments are
/// `qs`/`sc`, with the kernels `kern`; `prepared` is `x` as [`RowActivations::new`] made it for them.
#[allow(clippy::too_many_arguments)]
pub fn matvec_rows(kern: &RowKernels, dtype: DType, qs: &[u32], sc: &[u32], k: usize, x: &[f32], prepared: &RowActivations, row0: usize, out: &mut [f32]) {
    let (qw, sw) = row_words(dtype, k);
    let mut scratch = Vec::new();
    let end = row0 + out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let r = row0 + i;
        let (q, s) = (&qs[r * qw..(r + 1) * qw], &sc[r * sw..(r + 1) * sw]);
        // Decode streams each weight once from DRAM: asking for a later row while this one is
        // dotted hides the load latency the kernels otherwise stall on (perf: a quarter of the
        // Q4 kernel's samples sat on its weight load; decode +12% median here, 9 of 11 pairs).
        let ahead = r + PREFETCH_ROWS;
        if ahead < end {
            crate::simd::prefetch(&qs[ahead * qw..(ahead + 1) * qw]);
            crate::simd::prefetch(&sc[ahead * sw..(ahead + 1) * sw]);
        }
        // SAFETY: `get` chose kernels this CPU runs; the kernels check their slice lengths.
        *o = unsafe {
            match (dtype, prepared) {
                (DType::F32, _) => (kern.dot)(bytemuck::cast_slice(q), x),
                (DType::Q4, RowActivations::Int8(a)) => (kern.dot_q4_int8)(q, s, a),
                (DType::Q8, RowActivations::Int8(a)) => (kern.dot_q8_int8)(q, s, a),
                (DType::Q4, RowActivations::Q4 { ordered, group_sums }) => (kern.dot_q4)(q, s, ordered.as_deref().unwrap_or(x), group_sums),
                (DType::Q8, _) => (kern.dot_q8)(q, s, x),
                _ => {
                    scratch.resize(k, 0f32);
                    dequantize_row_fast(dtype, q, s, &mut scratch);
                    (kern.dot)(&scratch, x)
                }
            }
        };
    }
}

/// Rows `row0..row0 + rows` of `W` against `m` activation rows `x` ([m, k]): `out` is
/// [rows, m] (row-major by weight row). Four rows are decoded at a time and meet every token in
/// the chosen kernel's register tiles.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows(dtype: DType, qs: &[u32], sc: &[u32], k: usize, x: &[f32], m: usize, row0: usize, rows: usize, out: &mut [f32]) {
    let kern = RowKernels::get();
    let (qw, sw) = row_words(dtype, k);
    let mut w = vec![0f32; 4 * k];
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(4);
        for (j, wj) in w.chunks_exact_mut(k).take(n).enumerate() {
            let g = row0 + r + j;
            dequantize_row_fast(dtype, &qs[g * qw..(g + 1) * qw], &sc[g * sw..(g + 1) * sw], wj);
        }
        let o = &mut out[r * m..(r + n) * m];
        if n == 4 {
            // SAFETY: `get` chose kernels this CPU runs; the kernels check their slice lengths.
            unsafe { (kern.matmul_4rows)(&w, x, k, m, o) };
        } else {
            for (j, oj) in o.chunks_exact_mut(m).enumerate() {
                for (t, v) in oj.iter_mut().enumerate() {
                    *v = kern.dot(&w[j * k..(j + 1) * k], &x[t * k..(t + 1) * k]);
                }
            }
        }
        r += n;
    }
}

#[cfg(test)]
mod tests {
    /// The hand-written conversion (kept for the hot loops: no table, no F16C) against the `half`
    /// crate on every one of the 65,536 f16 values, subnormals, infinities and NaNs included.
    #[test]
    fn f16_to_f32_agrees_with_half_on_every_value() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = super::f16_to_f32(bits as u32);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} vs {want}");
        }
    }
}
