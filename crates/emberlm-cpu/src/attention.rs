//! Grouped-query attention over a KV cache, causal or bidirectional (`visible_keys`) (the CPU twin of `shaders/attention.wgsl`).
//! Scores in f32, softmax with the running maximum subtracted. Both paths take the query heads
//! sharing a key/value head together, so each key and value row is loaded once for all of them:
//! a decode step ([`decode`]) one task per (key/value head, split of the keys); a prefill
//! ([`tiled`]) one task per (key/value head, a few tokens) against blocks of transposed keys.

use emberlm_core::ops::AttentionParams;
use emberlm_core::{Error, Result};

use crate::parallel::map_ranges;

/// `$body` with `const $r: usize` equal to the micro-tile width `$w` (1 to 4).
macro_rules! with_width {
    ($w:expr, $r:ident => $body:expr) => {
        match $w {
            4 => {
                const $r: usize = 4;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            _ => {
                const $r: usize = 1;
                $body
            }
        }
    };
}

/// `q`: [tokens, q_stride]; caches: [heads_kv, s_max, head_dim]; `out`: [tokens, heads_q · head_dim];
/// `sinks`: one logit per query head that joins its softmax's sum and weighs no value (GPT-OSS).
pub fn attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], sinks: Option<&[f32]>, out: &mut [f32], p: &AttentionParams) -> Result<()> {
    let (t, hq, hkv, d) = (p.tokens, p.heads_q, p.heads_kv, p.head_dim);
    if hkv == 0 || d == 0 || hq % hkv != 0 {
        return Err(Error::Shape { op: "attention", detail: format!("{hq} query heads cannot share {hkv} key/value heads") });
    }
    let s_max = k_cache.len() / (hkv * d);
    let last = p.pos0 + t;
    if last > s_max || v_cache.len() < hkv * s_max * d || q.len() < (t - 1) * p.q_stride + hq * d || out.len() < t * hq * d {
        return Err(Error::Shape {
            op: "attention",
            detail: format!("{t} tokens from position {} do not fit a cache of {s_max} or the given buffers", p.pos0),
        });
    }
    if t > 1 {
        tiled(q, k_cache, v_cache, sinks, out, p, s_max, attend_tile);
        return Ok(());
    }
    let splits = decode_splits(p);
    decode(q, k_cache, v_cache, sinks, out, p, s_max, splits, attend_keys);
    Ok(())
}

/// A decode step (one token): one task per (key/value head, split of the visible keys), its
/// rows the query heads sharing that key/value head. Each key's score is a dot product, the
/// weights are exponentiated in vectors, and the weighted values go through the prefill's
/// register-blocked value sums, each value row loaded once for every head of the group. A long
/// cache is split so every thread has work (flash-decoding); the splits' partial softmaxes merge.
#[allow(clippy::too_many_arguments)]
fn decode(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    sinks: Option<&[f32]>,
    out: &mut [f32],
    p: &AttentionParams,
    s_max: usize,
    splits: usize,
    attend: AttendKeys,
) {
    let (hq, hkv, d) = (p.heads_q, p.heads_kv, p.head_dim);
    let group = hq / hkv;
    let (lo, hi) = emberlm_core::ops::visible_keys(p.causal, p.window, p.pos0, p.pos0).into_inner();
    let per_split = (hi + 1 - lo).div_ceil(splits);
    let parts = map_ranges(hkv * splits, 1, |range| {
        range
            .map(|task| {
                let (h_kv, split) = (task / splits, task % splits);
                let j0 = (lo + split * per_split).min(hi + 1);
                let j1 = (j0 + per_split).min(hi + 1);
                let base = h_kv * s_max * d;
                let rows = KeyRows {
                    q: &q[h_kv * group * d..][..group * d],
                    keys: &k_cache[base + j0 * d..base + j1 * d],
                    values: &v_cache[base + j0 * d..base + j1 * d],
                };
                (h_kv, attend(p, &rows))
            })
            .collect::<Vec<_>>()
    });
    // Each key/value head's splits merged: weighed against the largest maximum.
    let mut merged: Vec<Option<RowState>> = (0..hkv).map(|_| None).collect();
    for (h_kv, part) in parts.into_iter().flatten() {
        merged[h_kv] = Some(match merged[h_kv].take() {
            None => part,
            Some(mut m) => {
                for g in 0..group {
                    let top = m.max[g].max(part.max[g]);
                    if top == f32::NEG_INFINITY {
                        continue;
                    }
                    let (a, b) = (crate::math::exp(m.max[g] - top), crate::math::exp(part.max[g] - top));
                    m.sum[g] = m.sum[g] * a + part.sum[g] * b;
                    for (x, &y) in m.acc[g * d..][..d].iter_mut().zip(&part.acc[g * d..][..d]) {
                        *x = *x * a + y * b;
                    }
                    m.max[g] = top;
                }
                m
            }
        });
    }
    for (h_kv, state) in merged.into_iter().enumerate() {
        let state = state.expect("every key/value head has a split");
        for g in 0..group {
            let h = h_kv * group + g;
            let inv = normalizer(state.max[g], state.sum[g], sinks.map(|s| s[h]));
            for (o, &a) in out[h * d..][..d].iter_mut().zip(&state.acc[g * d..][..d]) {
                *o = a * inv;
            }
        }
    }
}

/// Keys per split of a decode step's cache, at least: below that a split's fork and merge cost
/// more than its share of the work.
const DECODE_SPLIT_MIN: usize = 256;

/// How many splits a decode step's keys go in: one for a short cache (microseconds of work,
/// fork/join would cost more), else enough for two tasks per thread.
fn decode_splits(p: &AttentionParams) -> usize {
    let keys = emberlm_core::ops::visible_keys(p.causal, p.window, p.pos0, p.pos0).count();
    if p.heads_q * keys * p.head_dim < 1 << 18 {
        return 1;
    }
    (2 * crate::parallel::threads()).div_ceil(p.heads_kv).clamp(1, keys.div_ceil(DECODE_SPLIT_MIN))
}

/// One decode task: the queries of a key/value head's group (`q`: group × d, contiguous) and a
/// run of its keys and value rows.
struct KeyRows<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
}

type AttendKeys = fn(&AttentionParams, &KeyRows) -> RowState;

/// A decode task's softmax over its keys, with the instruction set's [`BlockKernels`] (as
/// [`attend_tile`]).
fn attend_keys(p: &AttentionParams, rows: &KeyRows) -> RowState {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &AttentionParams, rows: &KeyRows) -> RowState {
            attend_keys_with::<Avx2>(p, rows)
        }
        if crate::simd::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2(p, rows) };
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return attend_keys_with::<Simd128>(p, rows);
    #[allow(unreachable_code)]
    attend_keys_with::<Portable>(p, rows)
}

/// [`attend_keys`]' body: all scores of the run (dot products), each head's maximum, weights and
/// sum in vector loops, then the values in blocks of [`KEY_BLOCK`] keys.
#[inline(always)]
fn attend_keys_with<K: BlockKernels>(p: &AttentionParams, rows: &KeyRows) -> RowState {
    let d = p.head_dim;
    let (group, n) = (rows.q.len() / d, rows.keys.len() / d);
    let mut state = RowState { max: vec![f32::NEG_INFINITY; group], sum: vec![0f32; group], acc: vec![0f32; group * d] };
    if n == 0 {
        return state;
    }
    // Each head's scores in a row of n, from blocks of keys the heads of a micro-tile share.
    let mut scores = vec![0f32; group * n];
    for b0 in (0..n).step_by(KEY_BLOCK) {
        let keys = &rows.keys[b0 * d..][..KEY_BLOCK.min(n - b0) * d];
        let mut r0 = 0;
        while r0 < group {
            let w = micro_tile(group - r0);
            let q = &rows.q[r0 * d..(r0 + w) * d];
            // SAFETY: `attend_keys` picks K for the CPU it runs on; q holds w rows.
            with_width!(w, R => {
                let block = unsafe { K::key_scores::<R>(q, keys, d) };
                for (i, lanes) in block.iter().enumerate() {
                    let row = &mut scores[(r0 + i) * n + b0..][..keys.len() / d];
                    row.copy_from_slice(&lanes[..row.len()]);
                }
            });
            r0 += w;
        }
    }
    for (g, row) in scores.chunks_exact_mut(n).enumerate() {
        row.iter_mut().for_each(|s| *s *= p.scale);
        if p.softcap > 0.0 {
            row.iter_mut().for_each(|s| *s = p.softcap * crate::math::tanh(*s / p.softcap));
        }
        let top = slice_max(row);
        row.iter_mut().for_each(|s| *s = crate::math::exp(*s - top));
        state.max[g] = top;
        state.sum[g] = slice_sum(row);
    }
    for b0 in (0..n).step_by(KEY_BLOCK) {
        let nb = KEY_BLOCK.min(n - b0);
        let values = &rows.values[b0 * d..][..nb * d];
        let mut r0 = 0;
        while r0 < group {
            let w = micro_tile(group - r0);
            let acc = &mut state.acc[r0 * d..(r0 + w) * d];
            let weights_of = |i: usize| -> [f32; KEY_BLOCK] {
                let mut w = [0f32; KEY_BLOCK];
                w[..nb].copy_from_slice(&scores[(r0 + i) * n + b0..][..nb]);
                w
            };
            with_width!(w, R => weighted_values::<R, K>(&std::array::from_fn(weights_of), values, d, acc));
            r0 += w;
        }
    }
    state
}

/// `acc[i · d + c]` += Σ_jj weights[i][jj] · values[jj · d + c]: [`BlockKernels::values`] for
/// the whole chunks of d, plain loops for the rest.
#[inline(always)]
fn weighted_values<const R: usize, K: BlockKernels>(weights: &[[f32; KEY_BLOCK]; R], values: &[f32], d: usize, acc: &mut [f32]) {
    let chunks = d / VALUE_CHUNK;
    // SAFETY: the callers pick K for the CPU they run on; chunks · VALUE_CHUNK ≤ d, acc holds R rows.
    unsafe { K::values::<R>(weights, values, d, chunks, acc) };
    // Head sizes that are not a multiple of the chunk (80, say).
    let c0 = chunks * VALUE_CHUNK;
    if c0 < d {
        for (i, w) in weights.iter().enumerate() {
            let row = &mut acc[i * d..][..d];
            for (&wj, v) in w.iter().zip(values.chunks_exact(d)) {
                for (a, &x) in row[c0..].iter_mut().zip(&v[c0..]) {
                    *a += wj * x;
                }
            }
        }
    }
}

/// The largest value of a slice, in [`KEY_BLOCK`] lanes (vectorises; `f32::max` chained does not).
#[inline(always)]
fn slice_max(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; KEY_BLOCK];
    let (chunks, rest) = v.as_chunks::<KEY_BLOCK>();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    for (m, &x) in lanes.iter_mut().zip(rest) {
        *m = if x > *m { x } else { *m };
    }
    lane_max(&lanes)
}

/// The sum of a slice, in [`KEY_BLOCK`] lanes.
#[inline(always)]
fn slice_sum(v: &[f32]) -> f32 {
    let mut lanes = [0f32; KEY_BLOCK];
    let (chunks, rest) = v.as_chunks::<KEY_BLOCK>();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m += x;
        }
    }
    for (m, &x) in lanes.iter_mut().zip(rest) {
        *m += x;
    }
    lane_sum(&lanes)
}

/// What a row's weighted sum is multiplied by: 1 / sum, or with a sink logit `s` joining the
/// softmax: e^(m−M) / (sum·e^(m−M) + e^(s−M)), M = max(m, s).
fn normalizer(max: f32, sum: f32, sink: Option<f32>) -> f32 {
    match sink {
        Some(s) => {
            let top = max.max(s);
            let keep = crate::math::exp(max - top);
            keep / (sum * keep + crate::math::exp(s - top))
        }
        None => 1.0 / sum,
    }
}

/// Keys per block of [`tiled`]: a row's scores for a block fill one 512-bit register (two of
/// 256, four of 128).
const KEY_BLOCK: usize = 16;
/// Tokens per task of [`tiled`], each with every query head of its key/value head.
const TILE_TOKENS: usize = 4;
/// Rows (token, query head) a micro-tile takes at once: their scores for a key block and their
/// partial value sums stay in registers, so each key and value vector loaded serves them all
/// (4 rows × 16 floats are 8 of AVX2's 16 registers; wasm has 16 of 128 bits, so 2 rows there).
#[cfg(not(target_arch = "wasm32"))]
const ROW_BLOCK: usize = 4;
#[cfg(target_arch = "wasm32")]
const ROW_BLOCK: usize = 2;
/// Value dimensions summed per pass of a micro-tile: [`KEY_BLOCK`] floats of registers a row.
const VALUE_CHUNK: usize = 16;

/// The width of the next micro-tile with `left` rows to go: [`ROW_BLOCK`], or what is left (a
/// group of 3 heads is one tile of 3, not 3 of 1).
fn micro_tile(left: usize) -> usize {
    left.min(ROW_BLOCK)
}

/// Keys `j0..j0 + n` of one key/value head: `kt` holds them transposed (`kt[c · KEY_BLOCK + jj]`:
/// dimension c of key j0 + jj; lanes past `n` zero), `values` their value rows.
struct KeyBlock<'a> {
    kt: &'a [f32],
    values: &'a [f32],
    j0: usize,
    n: usize,
}

/// R rows of a tile: their queries transposed and scaled (`qt[c · R + i]`: dimension c of row i
/// times the attention scale), their visible keys (inclusive), and their softmax state —
/// running maximum, sum, and weighted values (`acc`, R rows of d).
struct Rows<'a, const R: usize> {
    qt: &'a [f32],
    bounds: &'a [(usize, usize)],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    acc: &'a mut [f32],
}

/// The two loops of a micro-tile that carry the arithmetic, written for one instruction set.
trait BlockKernels {
    /// `scores[i][jj]` = Σ_c qt[c · R + i] · kt[c · KEY_BLOCK + jj], c < d.
    ///
    /// # Safety
    /// The CPU has the implementation's instruction set; `qt` holds d · R floats, `kt` d · KEY_BLOCK.
    unsafe fn scores<const R: usize>(qt: &[f32], kt: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R];
    /// `acc[i · d + c]` += Σ_jj weights[i][jj] · values[jj · d + c] for the first
    /// `chunks · VALUE_CHUNK` dimensions c, over the block's `values.len() / d` keys.
    ///
    /// # Safety
    /// As for `scores`; `acc` holds R · d floats, `chunks · VALUE_CHUNK ≤ d`.
    unsafe fn values<const R: usize>(weights: &[[f32; KEY_BLOCK]; R], values: &[f32], d: usize, chunks: usize, acc: &mut [f32]);
    /// `scores[i][jj]` = Σ_c q[i · d + c] · keys[jj · d + c]: a decode step's dot products of R
    /// query rows with a block of at most [`KEY_BLOCK`] keys as stored (rows of d), each key
    /// loaded once for the R rows; lanes past the block's keys 0.
    ///
    /// # Safety
    /// As for `scores`; `q` holds R · d floats, `keys` a whole number of rows.
    unsafe fn key_scores<const R: usize>(q: &[f32], keys: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R];
}

/// Plain loops, for the auto-vectoriser (x86 without AVX2, other targets).
struct Portable;
impl BlockKernels for Portable {
    unsafe fn scores<const R: usize>(qt: &[f32], kt: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R] {
        let mut scores = [[0f32; KEY_BLOCK]; R];
        for (qc, kc) in qt[..d * R].chunks_exact(R).zip(kt.chunks_exact(KEY_BLOCK)) {
            for (row, &qv) in scores.iter_mut().zip(qc) {
                for (s, &k) in row.iter_mut().zip(kc) {
                    *s += qv * k;
                }
            }
        }
        scores
    }

    unsafe fn key_scores<const R: usize>(q: &[f32], keys: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R] {
        let mut scores = [[0f32; KEY_BLOCK]; R];
        for (jj, key) in keys.chunks_exact(d).enumerate() {
            for (row, qi) in scores.iter_mut().zip(q.chunks_exact(d)) {
                row[jj] = crate::matvec::dot(qi, key);
            }
        }
        scores
    }

    unsafe fn values<const R: usize>(weights: &[[f32; KEY_BLOCK]; R], values: &[f32], d: usize, chunks: usize, acc: &mut [f32]) {
        for (i, w) in weights.iter().enumerate() {
            let row = &mut acc[i * d..][..chunks * VALUE_CHUNK];
            for (&wj, v) in w.iter().zip(values.chunks_exact(d)) {
                for (a, &x) in row.iter_mut().zip(v) {
                    *a += wj * x;
                }
            }
        }
    }
}

/// A SIMD register of `N` f32 lanes: what [`Simd`] needs of an instruction set, so the kernels
/// are written once. Every function needs the CPU to have the instruction set.
trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a · b + c` (fused where the instruction set has it).
    unsafe fn madd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;
}

/// Registers a block of [`KEY_BLOCK`] floats takes (the arrays below hold up to 4: 128-bit lanes).
const fn per_block<V: Lanes>() -> usize {
    KEY_BLOCK / V::N
}

/// The [`BlockKernels`] written against [`Lanes`]: a row's 16 scores or value dimensions in
/// `KEY_BLOCK / N` registers, the query scalar or weight broadcast across them.
struct Simd<V>(std::marker::PhantomData<V>);

impl<V: Lanes> BlockKernels for Simd<V> {
    #[inline(always)]
    unsafe fn scores<const R: usize>(qt: &[f32], kt: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R] {
        let (q, k, per) = (qt[..d * R].as_ptr(), kt[..d * KEY_BLOCK].as_ptr(), per_block::<V>());
        let mut acc = [[V::zero(); 4]; R];
        for c in 0..d {
            let mut ks = [V::zero(); 4];
            for (l, kv) in ks.iter_mut().enumerate().take(per) {
                *kv = V::load(k.add(c * KEY_BLOCK + l * V::N));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let qv = V::splat(*q.add(c * R + i));
                for (a, &kv) in a.iter_mut().zip(&ks).take(per) {
                    *a = V::madd(qv, kv, *a);
                }
            }
        }
        let mut scores = [[0f32; KEY_BLOCK]; R];
        for (s, a) in scores.iter_mut().zip(&acc) {
            for (l, &x) in a.iter().enumerate().take(per) {
                x.store(s.as_mut_ptr().add(l * V::N));
            }
        }
        scores
    }

    #[inline(always)]
    unsafe fn values<const R: usize>(weights: &[[f32; KEY_BLOCK]; R], values: &[f32], d: usize, chunks: usize, acc: &mut [f32]) {
        let (keys, per) = (values.len() / d, per_block::<V>());
        let (v, out) = (values.as_ptr(), acc[..R * d].as_mut_ptr());
        for chunk in 0..chunks {
            let c0 = chunk * VALUE_CHUNK;
            let mut sums = [[V::zero(); 4]; R];
            for jj in 0..keys {
                let mut vs = [V::zero(); 4];
                for (l, x) in vs.iter_mut().enumerate().take(per) {
                    *x = V::load(v.add(jj * d + c0 + l * V::N));
                }
                for (sum, w) in sums.iter_mut().zip(weights) {
                    let wj = V::splat(w[jj]);
                    for (s, &x) in sum.iter_mut().zip(&vs).take(per) {
                        *s = V::madd(wj, x, *s);
                    }
                }
            }
            for (i, sum) in sums.iter().enumerate() {
                for (l, &x) in sum.iter().enumerate().take(per) {
                    let o = out.add(i * d + c0 + l * V::N);
                    V::add(V::load(o), x).store(o);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn key_scores<const R: usize>(q: &[f32], keys: &[f32], d: usize) -> [[f32; KEY_BLOCK]; R] {
        let (qp, whole) = (q[..R * d].as_ptr(), d / V::N * V::N);
        let mut scores = [[0f32; KEY_BLOCK]; R];
        for (jj, key) in keys.chunks_exact(d).enumerate() {
            let kp = key.as_ptr();
            let mut acc = [V::zero(); R];
            for c in (0..whole).step_by(V::N) {
                let k = V::load(kp.add(c));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = V::madd(V::load(qp.add(i * d + c)), k, *a);
                }
            }
            for (i, (row, a)) in scores.iter_mut().zip(acc).enumerate() {
                // The lanes' sum, then the dimensions past the last whole register.
                let mut sum = a.sum();
                for (c, &k) in key.iter().enumerate().skip(whole) {
                    sum += *qp.add(i * d + c) * k;
                }
                row[jj] = sum;
            }
        }
        scores
    }
}

/// AVX2 with FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
type Avx2 = Simd<std::arch::x86_64::__m256>;
#[cfg(target_arch = "x86_64")]
impl Lanes for std::arch::x86_64::__m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        std::arch::x86_64::_mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::arch::x86_64::_mm256_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        use std::arch::x86_64::*;
        let half = _mm_add_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps::<1>(self));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }
}

/// simd128: 4 lanes (fused multiply-adds in the relaxed build).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type Simd128 = Simd<std::arch::wasm32::v128>;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes for std::arch::wasm32::v128 {
    const N: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::wasm32::f32x4_splat(0.0)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        std::arch::wasm32::f32x4_splat(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        std::arch::wasm32::v128_load(p as *const Self)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::arch::wasm32::v128_store(p as *mut Self, self)
    }
    #[inline(always)]
    unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
        crate::wasm::madd(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        std::arch::wasm32::f32x4_add(a, b)
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        use std::arch::wasm32::*;
        let pair = f32x4_add(self, i32x4_shuffle::<2, 3, 0, 1>(self, self));
        f32x4_extract_lane::<0>(pair) + f32x4_extract_lane::<1>(pair)
    }
}

/// One task of [`tiled`]: its rows' transposed queries and visible keys (as in [`Rows`]; the
/// R rows of a micro-tile from row r0 transposed from `qt[r0 · d]` on), and its key/value head's
/// keys transposed in blocks (`kt`, from block `first_block` on) and value rows (`values`, from
/// key 0), keys up to `keys_end`.
struct Tile<'a> {
    qt: &'a [f32],
    bounds: &'a [(usize, usize)],
    kt: &'a [f32],
    first_block: usize,
    keys_end: usize,
    values: &'a [f32],
}

/// The softmax state of a tile's rows: running maximum, sum, and weighted values.
struct RowState {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

type AttendTile = fn(&AttentionParams, &Tile, std::ops::RangeInclusive<usize>, &mut RowState);

/// Folds key blocks `blocks` into a tile's rows, with the instruction set's [`BlockKernels`]:
/// AVX2+FMA where the CPU has them, simd128 in wasm, plain loops elsewhere.
fn attend_tile(p: &AttentionParams, tile: &Tile, blocks: std::ops::RangeInclusive<usize>, state: &mut RowState) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &AttentionParams, tile: &Tile, blocks: std::ops::RangeInclusive<usize>, state: &mut RowState) {
            attend_tile_with::<Avx2>(p, tile, blocks, state)
        }
        if crate::simd::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2(p, tile, blocks, state) };
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return attend_tile_with::<Simd128>(p, tile, blocks, state);
    #[allow(unreachable_code)]
    attend_tile_with::<Portable>(p, tile, blocks, state)
}

/// [`attend_tile`]'s body: each block against the rows [`ROW_BLOCK`] at a time ([`micro_tile`]).
#[inline(always)]
fn attend_tile_with<K: BlockKernels>(p: &AttentionParams, tile: &Tile, blocks: std::ops::RangeInclusive<usize>, state: &mut RowState) {
    let d = p.head_dim;
    let bounds = tile.bounds;
    for b in blocks {
        let j0 = b * KEY_BLOCK;
        let n = KEY_BLOCK.min(tile.keys_end - j0);
        let block = KeyBlock { kt: &tile.kt[(b - tile.first_block) * d * KEY_BLOCK..][..d * KEY_BLOCK], values: &tile.values[j0 * d..][..n * d], j0, n };
        let mut r0 = 0;
        while r0 < bounds.len() {
            let w = micro_tile(bounds.len() - r0);
            let (r1, span) = (r0 + w, r0 * d..(r0 + w) * d);
            let (max, sum, acc) = (&mut state.max[r0..r1], &mut state.sum[r0..r1], &mut state.acc[span.clone()]);
            let rows = (&tile.qt[span], &bounds[r0..r1]);
            with_width!(w, R => attend_rows::<R, K>(p, Rows { qt: rows.0, bounds: rows.1, max, sum, acc }, &block));
            r0 = r1;
        }
    }
}

/// R rows against one key block: their scores ([`BlockKernels::scores`]), the streaming softmax
/// (the running sum and values rescaled when a row's maximum grows), then the weighted values
/// ([`BlockKernels::values`], the dimensions past the last whole chunk in plain loops).
#[inline(always)]
fn attend_rows<const R: usize, K: BlockKernels>(p: &AttentionParams, rows: Rows<R>, block: &KeyBlock) {
    let d = p.head_dim;
    // SAFETY: `attend_tile` picks K for the CPU it runs on; the sizes are the tile's.
    let mut scores = unsafe { K::scores::<R>(rows.qt, block.kt, d) };
    let mut weights = [[0f32; KEY_BLOCK]; R];
    for (i, (row, w)) in scores.iter_mut().zip(&mut weights).enumerate() {
        if p.softcap > 0.0 {
            row.iter_mut().for_each(|s| *s = p.softcap * crate::math::tanh(*s / p.softcap));
        }
        // Only blocks across a row's first or last visible key (the diagonal, a window's edge)
        // or the keys' end need a mask.
        let (lo, hi) = rows.bounds[i];
        if block.n < KEY_BLOCK || block.j0 < lo || block.j0 + KEY_BLOCK - 1 > hi {
            for (jj, s) in row.iter_mut().enumerate() {
                let j = block.j0 + jj;
                *s = if jj < block.n && j >= lo && j <= hi { *s } else { f32::NEG_INFINITY };
            }
        }
        let block_max = lane_max(row);
        if block_max == f32::NEG_INFINITY {
            continue; // weights stay 0
        }
        let top = rows.max[i].max(block_max);
        if top > rows.max[i] {
            // The sum and values so far were weighed against the old maximum.
            let rescale = crate::math::exp(rows.max[i] - top);
            rows.max[i] = top;
            rows.sum[i] *= rescale;
            rows.acc[i * d..][..d].iter_mut().for_each(|a| *a *= rescale);
        }
        for (w, &s) in w.iter_mut().zip(row.iter()) {
            // exp clamps its argument (e^-87, not 0): masked keys weigh nothing.
            *w = if s == f32::NEG_INFINITY { 0.0 } else { crate::math::exp(s - top) };
        }
        rows.sum[i] += lane_sum(w);
    }
    weighted_values::<R, K>(&weights, block.values, d, rows.acc);
}

/// The largest of a block's scores, halving the lanes each round (a vector max, not a chain).
#[inline(always)]
fn lane_max(v: &[f32; KEY_BLOCK]) -> f32 {
    let mut m = *v;
    let mut width = KEY_BLOCK / 2;
    while width > 0 {
        for l in 0..width {
            m[l] = if m[l + width] > m[l] { m[l + width] } else { m[l] };
        }
        width /= 2;
    }
    m[0]
}

/// The sum of a block's weights, halving the lanes each round.
#[inline(always)]
fn lane_sum(v: &[f32; KEY_BLOCK]) -> f32 {
    let mut m = *v;
    let mut width = KEY_BLOCK / 2;
    while width > 0 {
        for l in 0..width {
            m[l] += m[l + width];
        }
        width /= 2;
    }
    m[0]
}

/// A prefill: one task per (key/value head, tile of tokens); its rows are the tile's tokens ×
/// the query heads sharing that key/value head. The keys are transposed once, in blocks of
/// [`KEY_BLOCK`] ([`transposed_keys`]), for every tile to read, and each block a tile sees is
/// folded into its rows' streaming softmax ([`attend_tile`]).
/// `attend`: [`attend_tile`] (a test passes one instruction set's kernels).
#[allow(clippy::too_many_arguments)]
fn tiled(q: &[f32], k_cache: &[f32], v_cache: &[f32], sinks: Option<&[f32]>, out: &mut [f32], p: &AttentionParams, s_max: usize, attend: AttendTile) {
    let (t, hq, hkv, d) = (p.tokens, p.heads_q, p.heads_kv, p.head_dim);
    let last = p.pos0 + t - 1;
    let group = hq / hkv;
    let tiles = t.div_ceil(TILE_TOKENS);
    let visible = |tok: usize| emberlm_core::ops::visible_keys(p.causal, p.window, p.pos0 + tok, last).into_inner();
    // The first token sees the earliest key (a window's start only moves forward).
    let first_block = visible(0).0 / KEY_BLOCK;
    let kt = transposed_keys(k_cache, p, s_max, first_block, last + 1);
    let head_blocks = kt.len() / hkv.max(1);
    let parts = map_ranges(hkv * tiles, 1, |range| {
        let mut outs = Vec::with_capacity(range.len());
        for task in range {
            let (h_kv, tile) = (task / tiles, task % tiles);
            let tokens = tile * TILE_TOKENS..((tile + 1) * TILE_TOKENS).min(t);
            let rows: Vec<(usize, usize)> = tokens.clone().flat_map(|tok| (0..group).map(move |g| (tok, h_kv * group + g))).collect();
            let bounds: Vec<(usize, usize)> = rows.iter().map(|&(tok, _)| visible(tok)).collect();
            let (lo, hi) = (bounds.iter().map(|b| b.0).min().unwrap_or(0), bounds.iter().map(|b| b.1).max().unwrap_or(0));
            let qt = transposed_queries(q, p, &rows);
            let head = Tile {
                qt: &qt,
                bounds: &bounds,
                kt: &kt[h_kv * head_blocks..][..head_blocks],
                first_block,
                keys_end: last + 1,
                values: &v_cache[h_kv * s_max * d..][..(last + 1) * d],
            };
            let mut state = RowState { max: vec![f32::NEG_INFINITY; rows.len()], sum: vec![0f32; rows.len()], acc: vec![0f32; rows.len() * d] };
            attend(p, &head, lo / KEY_BLOCK..=hi / KEY_BLOCK, &mut state);
            let RowState { max, sum, mut acc } = state;
            for (r, &(_, h)) in rows.iter().enumerate() {
                let inv = normalizer(max[r], sum[r], sinks.map(|s| s[h]));
                acc[r * d..][..d].iter_mut().for_each(|a| *a *= inv);
            }
            outs.push((rows, acc));
        }
        outs
    });
    for (rows, acc) in parts.into_iter().flatten() {
        for ((tok, h), o) in rows.into_iter().zip(acc.chunks_exact(d)) {
            out[(tok * hq + h) * d..][..d].copy_from_slice(o);
        }
    }
}

/// Every key/value head's keys from block `first_block` to key `keys_end`, transposed in blocks
/// of [`KEY_BLOCK`]: block b of head h at `(h · blocks + b − first_block) · d · KEY_BLOCK`, its
/// row c holding dimension c of its keys, one per lane (lanes past `keys_end` zero). Once per
/// prefill, so tiles share it instead of each transposing the keys it sees.
fn transposed_keys(k_cache: &[f32], p: &AttentionParams, s_max: usize, first_block: usize, keys_end: usize) -> Vec<f32> {
    let (hkv, d) = (p.heads_kv, p.head_dim);
    let blocks = keys_end.div_ceil(KEY_BLOCK) - first_block;
    let mut kt = vec![0f32; hkv * blocks * d * KEY_BLOCK];
    for (hb, dst) in kt.chunks_exact_mut(d * KEY_BLOCK).enumerate() {
        let (h, b) = (hb / blocks, first_block + hb % blocks);
        let keys = b * KEY_BLOCK..((b + 1) * KEY_BLOCK).min(keys_end);
        for (jj, key) in k_cache[(h * s_max + keys.start) * d..(h * s_max + keys.end) * d].chunks_exact(d).enumerate() {
            for (c, &x) in key.iter().enumerate() {
                dst[c * KEY_BLOCK + jj] = x;
            }
        }
    }
    kt
}

/// The rows' queries times the attention scale, each micro-tile of rows takes at
/// once (width w: [`micro_tile`]) transposed from its first row's `r0 · d` on:
/// dimension c of its row i at `r0 · d + c · w + i`.
fn transposed_queries(q: &[f32], p: &AttentionParams, rows: &[(usize, usize)]) -> Vec<f32> {
    let d = p.head_dim;
    let mut qt = vec![0f32; rows.len() * d];
    let mut r0 = 0;
    while r0 < rows.len() {
        let w = micro_tile(rows.len() - r0);
        for (i, &(tok, h)) in rows[r0..r0 + w].iter().enumerate() {
            for (c, &x) in q[tok * p.q_stride + h * d..][..d].iter().enumerate() {
                qt[r0 * d + c * w + i] = x * p.scale;
            }
        }
        r0 += w;
    }
    qt
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain loops (what CPUs without AVX2 run) and the kernels this CPU runs give the same
    /// prefill and decode steps, and the prefill equals the decode steps of its tokens: head
    /// sizes with and without a part past the last whole value chunk, rows in micro-tiles and
    /// alone, a partial last key block, a long cache decoded whole and in three splits.
    #[test]
    fn every_instruction_set_and_path_gives_the_same_attention() {
        let (hq, hkv, tokens) = (6, 2, 9);
        for (d, s_max, pos0) in [(40, 40, 22), (64, 40, 22), (64, 720, 700)] {
            let fill = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect() };
            let (q, k, v) = (fill(tokens * hq * d, 1), fill(hkv * s_max * d, 2), fill(hkv * s_max * d, 3));
            let p =
                AttentionParams { tokens, heads_q: hq, heads_kv: hkv, head_dim: d, pos0, window: 0, causal: true, scale: 0.2, softcap: 0.0, q_stride: hq * d };
            let prefill = |attend: AttendTile| {
                let mut out = vec![0f32; tokens * hq * d];
                tiled(&q, &k, &v, None, &mut out, &p, s_max, attend);
                out
            };
            let steps = |splits: usize, attend: AttendKeys| {
                let mut out = vec![0f32; tokens * hq * d];
                for tok in 0..tokens {
                    let one = AttentionParams { tokens: 1, pos0: pos0 + tok, ..p };
                    decode(&q[tok * hq * d..], &k, &v, None, &mut out[tok * hq * d..], &one, s_max, splits, attend);
                }
                out
            };
            let native = prefill(attend_tile);
            let others = [
                ("plain-loop prefill", prefill(attend_tile_with::<Portable>)),
                ("decode steps", steps(1, attend_keys)),
                ("plain-loop decode steps", steps(1, attend_keys_with::<Portable>)),
                ("decode steps in 3 splits", steps(3, attend_keys)),
            ];
            for (what, other) in others {
                let gap = native.iter().zip(&other).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(gap < 1e-5, "d={d} pos0={pos0}: the {what} are {gap} off the prefill");
            }
        }
    }
}
