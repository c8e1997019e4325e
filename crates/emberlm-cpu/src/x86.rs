//! AVX2 + FMA versions of the hot row kernels (x86_64, chosen at run time by [`crate::simd`]).
//! Same arithmetic as the portable code in [`crate::matvec`] — f32 products of decoded weights
//! and activations, f32 sums — so results agree with it and with the GPU to rounding.
//!
//! A Q4 word holds weights 0–3 in the low nibbles of its bytes and 4–7 in the high nibbles:
//! broadcasting the word to 8 lanes and shifting lane l right by `NIBBLE_SHIFTS[l]` puts weight l
//! in the low 4 bits of lane l, in natural order (5 instructions per 8 weights, no shuffles).

use std::arch::x86_64::*;

use emberlm_core::dtype::GROUP_SIZE;

use crate::matvec::f16_to_f32;

const NIBBLE_SHIFTS: [i32; 8] = [0, 8, 16, 24, 4, 12, 20, 28];

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// The 8 weights of one Q4 word as f32 lanes, in natural order.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_word(word: u32, shifts: __m256i, mask: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word as i32), shifts), mask))
}

/// Σ a[i]·b[i].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// One Q4 row against `x` (natural order); `group_sums[g]` = Σ x over group g (the min term).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q4(qs: &[u32], sc: &[u32], x: &[f32], group_sums: &[f32]) -> f32 {
    let groups = sc.len();
    assert!(qs.len() >= groups * 4 && x.len() >= groups * GROUP_SIZE && group_sums.len() >= groups);
    let shifts = _mm256_loadu_si256(NIBBLE_SHIFTS.as_ptr() as *const __m256i);
    let mask = _mm256_set1_epi32(15);
    let mut total = _mm256_setzero_ps();
    let mut mins = 0f32;
    for g in 0..groups {
        let words = qs.as_ptr().add(4 * g);
        let xg = x.as_ptr().add(GROUP_SIZE * g);
        let mut a0 = _mm256_mul_ps(q4_word(*words, shifts, mask), _mm256_loadu_ps(xg));
        let mut a1 = _mm256_mul_ps(q4_word(*words.add(1), shifts, mask), _mm256_loadu_ps(xg.add(8)));
        a0 = _mm256_fmadd_ps(q4_word(*words.add(2), shifts, mask), _mm256_loadu_ps(xg.add(16)), a0);
        a1 = _mm256_fmadd_ps(q4_word(*words.add(3), shifts, mask), _mm256_loadu_ps(xg.add(24)), a1);
        let s = *sc.get_unchecked(g);
        total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(f16_to_f32(s & 0xffff)), total);
        mins += f16_to_f32(s >> 16) * *group_sums.get_unchecked(g);
    }
    hsum(total) + mins
}

/// One Q8 row against `x`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8(qs: &[u32], sc: &[u32], x: &[f32]) -> f32 {
    let groups = x.len() / GROUP_SIZE;
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups);
    let mut total = _mm256_setzero_ps();
    for g in 0..groups {
        let bytes = qs.as_ptr().add(8 * g) as *const u8;
        let xg = x.as_ptr().add(GROUP_SIZE * g);
        let w = |j: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes.add(8 * j) as *const __m128i)));
        let mut a0 = _mm256_mul_ps(w(0), _mm256_loadu_ps(xg));
        let mut a1 = _mm256_mul_ps(w(1), _mm256_loadu_ps(xg.add(8)));
        a0 = _mm256_fmadd_ps(w(2), _mm256_loadu_ps(xg.add(16)), a0);
        a1 = _mm256_fmadd_ps(w(3), _mm256_loadu_ps(xg.add(24)), a1);
        let scale = f16_to_f32((*sc.get_unchecked(g / 2) >> (16 * (g % 2))) & 0xffff);
        total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scale), total);
    }
    hsum(total)
}

/// Decodes a Q4 row into `out` (natural order).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequantize_q4(qs: &[u32], sc: &[u32], out: &mut [f32]) {
    let groups = out.len() / GROUP_SIZE;
    assert!(qs.len() >= groups * 4 && sc.len() >= groups);
    let shifts = _mm256_loadu_si256(NIBBLE_SHIFTS.as_ptr() as *const __m256i);
    let mask = _mm256_set1_epi32(15);
    for g in 0..groups {
        let s = sc[g];
        let (scale, min) = (_mm256_set1_ps(f16_to_f32(s & 0xffff)), _mm256_set1_ps(f16_to_f32(s >> 16)));
        for w in 0..4 {
            let v = _mm256_fmadd_ps(q4_word(qs[4 * g + w], shifts, mask), scale, min);
            _mm256_storeu_ps(out.as_mut_ptr().add(GROUP_SIZE * g + 8 * w), v);
        }
    }
}

/// Decodes a Q8 row into `out`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequantize_q8(qs: &[u32], sc: &[u32], out: &mut [f32]) {
    let groups = out.len() / GROUP_SIZE;
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups);
    for g in 0..groups {
        let scale = _mm256_set1_ps(f16_to_f32((sc[g / 2] >> (16 * (g % 2))) & 0xffff));
        let bytes = qs.as_ptr().add(8 * g) as *const u8;
        for j in 0..4 {
            let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes.add(8 * j) as *const __m128i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(GROUP_SIZE * g + 8 * j), _mm256_mul_ps(w, scale));
        }
    }
}

/// `out[r·m + t] = Σ w[r·k + i]·x[t·k + i]` for 4 decoded weight rows `w` ([4, k]) and `m`
/// activation rows: 4 × 3 tiles of 8-lane accumulators, so each loaded vector feeds 3 or 4 FMAs.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn matmul_4rows(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
    assert!(w.len() >= 4 * k && x.len() >= m * k && out.len() >= 4 * m);
    let k8 = k / 8 * 8;
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut t = 0;
    while t + 3 <= m {
        let mut acc = [[_mm256_setzero_ps(); 3]; 4];
        let mut i = 0;
        while i < k8 {
            let xs = [_mm256_loadu_ps(px.add(t * k + i)), _mm256_loadu_ps(px.add((t + 1) * k + i)), _mm256_loadu_ps(px.add((t + 2) * k + i))];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(pw.add(r * k + i));
                for (a, xv) in acc_r.iter_mut().zip(xs) {
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
            }
            i += 8;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, a) in acc_r.iter().enumerate() {
                let mut s = hsum(*a);
                for i in k8..k {
                    s += w[r * k + i] * x[(t + j) * k + i];
                }
                out[r * m + t + j] = s;
            }
        }
        t += 3;
    }
    for t in t..m {
        for r in 0..4 {
            out[r * m + t] = dot(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
        }
    }
}

// ---- AVX-512: 16 lanes ------------------------------------------------------------------------
//
// A Q4 group's 16 bytes widen to 16 lanes at once; the low nibbles are weights
// 0–3, 8–11, 16–19, 24–27 and the high nibbles the rest, so the activations are put in that
// order once per matvec ([`crate::matvec::nibble_order`]).

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
        acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), acc[1]);
        i += 32;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// One Q4 row against `x_nibble` ([`crate::matvec::nibble_order`] of x); `group_sums[g]` = Σ x over group g.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_q4_512(qs: &[u32], sc: &[u32], x_nibble: &[f32], group_sums: &[f32]) -> f32 {
    let groups = sc.len();
    assert!(qs.len() >= groups * 4 && x_nibble.len() >= groups * GROUP_SIZE && group_sums.len() >= groups);
    let mask = _mm512_set1_epi32(15);
    // Two running totals (even and odd groups): one would chain every group's FMA on the last.
    let mut total = [_mm512_setzero_ps(); 2];
    let mut mins = _mm256_setzero_ps();
    let mut halves = [0f32; 16];
    let mut g = 0;
    while g < groups {
        let n = (groups - g).min(8);
        // Eight groups' (scale, min) pairs converted at once.
        if n == 8 {
            _mm512_storeu_ps(halves.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(sc.as_ptr().add(g) as *const __m256i)));
        } else {
            for j in 0..n {
                halves[2 * j] = f16_to_f32(sc[g + j] & 0xffff);
                halves[2 * j + 1] = f16_to_f32(sc[g + j] >> 16);
            }
        }
        for j in 0..n {
            let gg = g + j;
            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs.as_ptr().add(4 * gg) as *const __m128i));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, mask));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
            let xg = x_nibble.as_ptr().add(GROUP_SIZE * gg);
            let acc = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
            total[j & 1] = _mm512_fmadd_ps(acc, _mm512_set1_ps(halves[2 * j]), total[j & 1]);
        }
        if n == 8 {
            let m = _mm256_setr_ps(halves[1], halves[3], halves[5], halves[7], halves[9], halves[11], halves[13], halves[15]);
            mins = _mm256_fmadd_ps(m, _mm256_loadu_ps(group_sums.as_ptr().add(g)), mins);
        } else {
            let mut tail = 0f32;
            for j in 0..n {
                tail += halves[2 * j + 1] * group_sums[g + j];
            }
            mins = _mm256_add_ps(mins, _mm256_setr_ps(tail, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
        }
        g += n;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1])) + hsum(mins)
}

/// One Q8 row against `x`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_q8_512(qs: &[u32], sc: &[u32], x: &[f32]) -> f32 {
    let groups = x.len() / GROUP_SIZE;
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups);
    let mut total = [_mm512_setzero_ps(); 2];
    let mut scales = [0f32; 16];
    for g in 0..groups {
        if g % 16 == 0 {
            // Sixteen groups' f16 scales are contiguous halves: converted at once.
            if groups - g >= 16 {
                _mm512_storeu_ps(scales.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(sc.as_ptr().add(g / 2) as *const __m256i)));
            } else {
                for j in 0..groups - g {
                    scales[j] = f16_to_f32((sc[(g + j) / 2] >> (16 * ((g + j) % 2))) & 0xffff);
                }
            }
        }
        let bytes = qs.as_ptr().add(8 * g) as *const __m128i;
        let xg = x.as_ptr().add(GROUP_SIZE * g);
        let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bytes)));
        let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bytes.add(1))));
        let acc = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xg.add(16)), _mm512_mul_ps(w0, _mm512_loadu_ps(xg)));
        total[g & 1] = _mm512_fmadd_ps(acc, _mm512_set1_ps(scales[g % 16]), total[g & 1]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1]))
}

/// [`matmul_4rows`] with 16 lanes and 4 × 4 tiles.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn matmul_4rows_512(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
    assert!(w.len() >= 4 * k && x.len() >= m * k && out.len() >= 4 * m);
    let k16 = k / 16 * 16;
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut t = 0;
    while t + 4 <= m {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i < k16 {
            let xs = [
                _mm512_loadu_ps(px.add(t * k + i)),
                _mm512_loadu_ps(px.add((t + 1) * k + i)),
                _mm512_loadu_ps(px.add((t + 2) * k + i)),
                _mm512_loadu_ps(px.add((t + 3) * k + i)),
            ];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = _mm512_loadu_ps(pw.add(r * k + i));
                for (a, xv) in acc_r.iter_mut().zip(xs) {
                    *a = _mm512_fmadd_ps(wv, xv, *a);
                }
            }
            i += 16;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, a) in acc_r.iter().enumerate() {
                let mut s = _mm512_reduce_add_ps(*a);
                for i in k16..k {
                    s += w[r * k + i] * x[(t + j) * k + i];
                }
                out[r * m + t + j] = s;
            }
        }
        t += 4;
    }
    for t in t..m {
        for r in 0..4 {
            out[r * m + t] = dot_512(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
        }
    }
}

// ---- 8-bit activations ([`crate::int8`]) -----------------------------------------------------
//
// A group's 32 byte products are summed exactly in 32-bit lanes (AVX2: `maddubs` into 16-bit
// pairs, then `madd`; VNNI: `dpbusd`, four products per lane), converted to f32 once per group
// and scaled by d_w·d_x. Both instructions multiply unsigned bytes by signed ones: Q4 nibbles
// are unsigned already; Q8 weights are made unsigned by `sign` (AVX2: |w| against x·sign(w)) or
// by +128 (VNNI: the offset 128·Σq_x comes off per group through `sum`).

use crate::int8::Int8Activations;

/// One Q4 row against 8-bit activations (nibble order), one group per step.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_int8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = sc.len();
    assert!(qs.len() >= groups * 4 && x.q.len() >= groups * GROUP_SIZE && x.d.len() >= groups && x.sum.len() >= groups);
    let low = _mm_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    let mut total = [_mm256_setzero_ps(); 2];
    let mut mins = 0f32;
    for g in 0..groups {
        let bytes = _mm_loadu_si128(qs.as_ptr().add(4 * g) as *const __m128i);
        let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
        let a = _mm256_loadu_si256(x.q.as_ptr().add(GROUP_SIZE * g) as *const __m256i);
        let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones));
        let s = sc[g];
        total[g & 1] = _mm256_fmadd_ps(dot, _mm256_set1_ps(f16_to_f32(s & 0xffff) * x.d[g]), total[g & 1]);
        mins += f16_to_f32(s >> 16) * x.sum[g];
    }
    hsum(_mm256_add_ps(total[0], total[1])) + mins
}

/// One Q8 row against 8-bit activations (natural order), one group per step.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_int8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = x.d.len();
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups && x.q.len() >= groups * GROUP_SIZE);
    let ones = _mm256_set1_epi16(1);
    let mut total = [_mm256_setzero_ps(); 2];
    for g in 0..groups {
        let w = _mm256_loadu_si256(qs.as_ptr().add(8 * g) as *const __m256i);
        let a = _mm256_loadu_si256(x.q.as_ptr().add(GROUP_SIZE * g) as *const __m256i);
        // |w| ≤ 128 and |x| ≤ 127: a pair sums to at most 32512, inside maddubs' i16.
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
        let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        let scale = f16_to_f32((sc[g / 2] >> (16 * (g % 2))) & 0xffff) * x.d[g];
        total[g & 1] = _mm256_fmadd_ps(dot, _mm256_set1_ps(scale), total[g & 1]);
    }
    hsum(_mm256_add_ps(total[0], total[1]))
}

/// Up to 16 groups' d_w·d_x from their f16 scales (`halves[j]`, already f32) into `out`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn group_scales(d_w: __m512, x: &Int8Activations, g: usize, n: usize, out: &mut [f32; 16]) {
    if n == 16 {
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(d_w, _mm512_loadu_ps(x.d.as_ptr().add(g))));
    } else {
        let mut dw = [0f32; 16];
        _mm512_storeu_ps(dw.as_mut_ptr(), d_w);
        for j in 0..n {
            out[j] = dw[j] * x.d[g + j];
        }
    }
}

/// Adds two groups' 32 products each to `total`, summed per group into lanes 0–7 and 8–15 and
/// scaled by `scales[j]` and `scales[j + 1]` (0 past the row: the tail's odd group).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn add_scaled_pair(total: &mut __m512, w: __m512i, a: __m512i, scales: &[f32; 16], j: usize, second: bool) {
    let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a));
    let s = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(scales[j]), _mm512_set1_ps(if second { scales[j + 1] } else { 0.0 }));
    *total = _mm512_fmadd_ps(dot, s, *total);
}

/// Lanes 4j..4j+3 ← lane 4·block + j of a 16-group register: a block's four group scales
/// spread over the lanes where its groups' integer sums land.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block_lanes(block: usize) -> __m512i {
    _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_set1_epi32(4 * block as i32))
}

/// One block of 4 Q4 groups (64 bytes at `w`, `groups` of them real) as unsigned nibbles: (low, high).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn q4_block(w: *const u32, groups: usize) -> (__m512i, __m512i) {
    let bytes = if groups >= 4 { _mm512_loadu_si512(w as *const __m512i) } else { _mm512_maskz_loadu_epi8((1u64 << (16 * groups)) - 1, w as *const i8) };
    let low = _mm512_set1_epi8(15);
    (_mm512_and_si512(bytes, low), _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low))
}

/// A block's 128 products with activations `a` ([`crate::int8::Int8Layout::NibbleBlocks`]): group j's sum
/// spread over lanes 4j..4j+3.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_block_dot(w: (__m512i, __m512i), a: *const i8) -> __m512i {
    let low = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.0, _mm512_loadu_si512(a as *const __m512i));
    _mm512_dpbusd_epi32(low, w.1, _mm512_loadu_si512(a.add(64) as *const __m512i))
}

/// [`dot_q4_int8`] with AVX-512 VNNI, a block of 4 groups per step (activations in
/// [`crate::int8::Int8Layout::NibbleBlocks`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4_int8_vnni(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = sc.len();
    let chunks = groups.div_ceil(16);
    assert!(qs.len() >= groups * 4 && x.q.len() >= groups.div_ceil(4) * 128 && x.d.len() >= chunks * 16 && x.sum.len() >= chunks * 16);
    let mut total = [_mm512_setzero_ps(); 2];
    for c in 0..chunks {
        let g = 16 * c;
        let n = (groups - g).min(16);
        let words = _mm512_maskz_loadu_epi32(((1u32 << n) - 1) as u16, sc.as_ptr().add(g) as *const i32);
        let d_w = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words));
        let m_w = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(words, 16)));
        // The min term: 16 groups' min·Σx̃ at once (x's padding is zero).
        total[1] = _mm512_fmadd_ps(m_w, _mm512_loadu_ps(x.sum.as_ptr().add(g)), total[1]);
        let scales = _mm512_mul_ps(d_w, _mm512_loadu_ps(x.d.as_ptr().add(g)));
        for b in 0..n.div_ceil(4) {
            let gb = g + 4 * b;
            let dot = q4_block_dot(q4_block(qs.as_ptr().add(4 * gb), groups - gb), x.q.as_ptr().add(GROUP_SIZE * gb));
            total[b & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(block_lanes(b), scales), total[b & 1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1]))
}

/// Rows per panel of the integer matmuls: one per 32-bit lane of a 512-bit register.
pub const PANEL_ROWS: usize = 16;

/// Q4 rows (`qs`/`sc`: `out.len() / x.len()` whole rows) against every token's 8-bit
/// activations (`x`, [`crate::int8::Int8Layout::Natural`]) with AVX-512 VNNI: `out` is
/// [tokens, rows] (token-major, as the matmul's output is).
///
/// Rows go in panels of 16, one per 32-bit lane (llama.cpp's repacked Q4_0 kernels do the
/// same): a panel is first unpacked into bytes laid out [group][quad of weights][row], so one
/// `dpbusd` multiplies four consecutive weights of all 16 rows by the same four activation
/// bytes, broadcast straight from memory. A group of 32 is then 8 `dpbusd` per token into one
/// integer sum per row, converted and scaled once (d_w·d_x and the min term as two FMAs), for
/// 512 products; the nibbles are split once per panel instead of once per token, and no lane
/// sums are needed at the end. Tokens go 8 at a time, so 8 independent `dpbusd` chains hide
/// its latency and each weight register is loaded once for 8 tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_q4_int8_vnni(qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32]) {
    matmul_panels(qs, sc, x, out, 4, |panel, qs, sc, n| panel.fill_q4(qs, sc, n))
}

/// [`matmul_q4_int8_vnni`] for Q8 rows: `dpbusd` wants unsigned weights, so the panel holds
/// q + 128 and the min term takes the offset back out (−128·d_w per group against Σx̃).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_q8_int8_vnni(qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32]) {
    matmul_panels(qs, sc, x, out, 8, |panel, qs, sc, n| panel.fill_q8(qs, sc, n))
}

/// The integer matmuls' common part: `qs` has `group_words` words per group and row; `fill`
/// unpacks `n` rows' segments into the panel.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn matmul_panels(qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32], group_words: usize, fill: impl Fn(&mut Panel, &[u32], &[u32], usize)) {
    let m = x.len();
    let rows = if m == 0 { 0 } else { out.len() / m };
    let groups = x.first().map_or(0, |x| x.d.len());
    let (qw, sw) = (groups * group_words, if rows == 0 { 0 } else { sc.len() / rows });
    assert!(qs.len() >= rows * qw && out.len() == rows * m);
    for xt in x {
        assert!(xt.q.len() >= groups * GROUP_SIZE && xt.d.len() == groups && xt.sum.len() >= groups);
    }
    let mut panel = Panel { words: vec![0u32; groups * 8 * PANEL_ROWS], d: vec![0f32; groups * PANEL_ROWS], min: vec![0f32; groups * PANEL_ROWS], groups };
    for r0 in (0..rows).step_by(PANEL_ROWS) {
        let n = (rows - r0).min(PANEL_ROWS);
        fill(&mut panel, &qs[r0 * qw..(r0 + n) * qw], &sc[r0 * sw..(r0 + n) * sw], n);
        let keep = ((1u32 << n) - 1) as u16;
        let mut t = 0;
        while t < m {
            let dst = out.as_mut_ptr().add(t * rows + r0);
            t += match m - t {
                left if left >= 8 => panel_tile::<8>(&panel, &x[t..t + 8], dst, rows, keep),
                left if left >= 4 => panel_tile::<4>(&panel, &x[t..t + 4], dst, rows, keep),
                _ => panel_tile::<1>(&panel, &x[t..t + 1], dst, rows, keep),
            };
        }
    }
}

/// Up to 16 rows unpacked for the integer matmuls: `words[(g·8 + quad)·16 + row]` holds the
/// row's weights 4·quad..4·quad+3 of group g as four unsigned bytes; per [group][row], the
/// f32 scale `d` and the term `min` that meets Σx̃. Missing rows are zeros (every slot is
/// written on each fill).
struct Panel {
    words: Vec<u32>,
    d: Vec<f32>,
    min: Vec<f32>,
    groups: usize,
}

impl Panel {
    /// The panel's lanes: row i of the panel in lane i, `stride` words apart in the source.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_offsets(stride: usize) -> __m512i {
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride as i32))
    }

    /// Word `at` of each of the `keep` rows, `rows` apart (masked-off lanes read nothing, stay 0).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn gather(rows: __m512i, keep: u16, at: *const u32) -> __m512i {
        _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), keep, rows, at as *const i32)
    }

    /// From `n` Q4 rows, gathering each group's words of the 16 rows (a Q4 word holds weights
    /// 0–3 of its pair of quads in its low nibbles and 4–7 in its high ones, so word w of a
    /// group gives quads 2w and 2w + 1). Scalar, this cost the kernel as much as its products
    /// on a 60-token prefill.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn fill_q4(&mut self, qs: &[u32], sc: &[u32], n: usize) {
        let groups = self.groups;
        assert!(n <= PANEL_ROWS && qs.len() >= n * groups * 4 && sc.len() >= n * groups);
        let keep = ((1u32 << n) - 1) as u16;
        let (words, scales) = (Self::row_offsets(groups * 4), Self::row_offsets(groups));
        let nibbles = _mm512_set1_epi32(0x0f0f_0f0f);
        let out = self.words.as_mut_ptr() as *mut __m512i;
        for g in 0..groups {
            for w in 0..4 {
                let v = Self::gather(words, keep, qs.as_ptr().add(g * 4 + w));
                _mm512_storeu_si512(out.add(g * 8 + 2 * w), _mm512_and_si512(v, nibbles));
                _mm512_storeu_si512(out.add(g * 8 + 2 * w + 1), _mm512_and_si512(_mm512_srli_epi32(v, 4), nibbles));
            }
            let s = Self::gather(scales, keep, sc.as_ptr().add(g));
            _mm512_storeu_ps(self.d.as_mut_ptr().add(g * PANEL_ROWS), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(s)));
            _mm512_storeu_ps(self.min.as_mut_ptr().add(g * PANEL_ROWS), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(s, 16))));
        }
    }

    /// From `n` Q8 rows (8 words per group, word w = quad w; f16 scales two to a word),
    /// bytes offset by +128 (missing rows stay 0 with d = 0, so they add nothing).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn fill_q8(&mut self, qs: &[u32], sc: &[u32], n: usize) {
        let groups = self.groups;
        let sw = groups.div_ceil(2);
        assert!(n <= PANEL_ROWS && qs.len() >= n * groups * 8 && sc.len() >= n * sw);
        let keep = ((1u32 << n) - 1) as u16;
        let (words, scales) = (Self::row_offsets(groups * 8), Self::row_offsets(sw));
        let flip = _mm512_set1_epi8(-128);
        let out = self.words.as_mut_ptr() as *mut __m512i;
        for g in 0..groups {
            for w in 0..8 {
                let v = Self::gather(words, keep, qs.as_ptr().add(g * 8 + w));
                _mm512_storeu_si512(out.add(g * 8 + w), _mm512_xor_si512(v, flip));
            }
            let s = Self::gather(scales, keep, sc.as_ptr().add(g / 2));
            let half = if g % 2 == 0 { s } else { _mm512_srli_epi32(s, 16) };
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(half));
            _mm512_storeu_ps(self.d.as_mut_ptr().add(g * PANEL_ROWS), d);
            _mm512_storeu_ps(self.min.as_mut_ptr().add(g * PANEL_ROWS), _mm512_mul_ps(d, _mm512_set1_ps(-128.0)));
        }
    }
}

/// A panel against `T` tokens: `dst[j·rows + i]` ← row i · token j for the rows in `keep`.
/// Returns `T`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn panel_tile<const T: usize>(p: &Panel, x: &[Int8Activations], dst: *mut f32, rows: usize, keep: u16) -> usize {
    let mut acc = [_mm512_setzero_ps(); T];
    let mut q = [std::ptr::null::<i32>(); T];
    for j in 0..T {
        q[j] = x[j].q.as_ptr() as *const i32;
    }
    let w = p.words.as_ptr() as *const __m512i;
    for g in 0..p.groups {
        let mut sums = [_mm512_setzero_si512(); T];
        for quad in 0..8 {
            let wq = _mm512_loadu_si512(w.add(g * 8 + quad));
            for j in 0..T {
                sums[j] = _mm512_dpbusd_epi32(sums[j], wq, _mm512_set1_epi32(*q[j].add(g * 8 + quad)));
            }
        }
        let d_w = _mm512_loadu_ps(p.d.as_ptr().add(g * PANEL_ROWS));
        let min_w = _mm512_loadu_ps(p.min.as_ptr().add(g * PANEL_ROWS));
        for j in 0..T {
            let scale = _mm512_mul_ps(d_w, _mm512_set1_ps(*x[j].d.get_unchecked(g)));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[j]), scale, acc[j]);
            acc[j] = _mm512_fmadd_ps(min_w, _mm512_set1_ps(*x[j].sum.get_unchecked(g)), acc[j]);
        }
    }
    for j in 0..T {
        _mm512_mask_storeu_ps(dst.add(j * rows), keep, acc[j]);
    }
    T
}

/// [`dot_q8_int8`] with AVX-512 VNNI: two groups per `dpbusd`, weights offset by +128.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_int8_vnni(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = x.d.len();
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups && x.q.len() >= groups * GROUP_SIZE && x.sum.len() >= groups);
    let flip = _mm512_set1_epi8(-128);
    let mut total = [_mm512_setzero_ps(); 2];
    let mut offset = _mm512_setzero_ps();
    let mut scales = [0f32; 16];
    let mut g = 0;
    while g < groups {
        let n = (groups - g).min(16);
        let keep = (1u32 << n).wrapping_sub(1) as u16;
        // Sixteen f16 scales are eight words; masked by halves.
        let halves = _mm256_maskz_loadu_epi16(keep, sc.as_ptr().add(g / 2) as *const i16);
        let d_w = _mm512_cvtph_ps(halves);
        offset = _mm512_fmadd_ps(d_w, _mm512_maskz_loadu_ps(keep, x.sum.as_ptr().add(g)), offset);
        group_scales(d_w, x, g, n, &mut scales);
        let mut j = 0;
        while j < n {
            let second = j + 1 < n;
            let mask = if second { u64::MAX } else { 0xffff_ffff };
            let w = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, qs.as_ptr().add(8 * (g + j)) as *const i8), flip);
            let a = _mm512_maskz_loadu_epi8(mask, x.q.as_ptr().add(GROUP_SIZE * (g + j)));
            // Masked-off bytes became 128 by the flip, but meet zero activations.
            add_scaled_pair(&mut total[(j / 2) & 1], w, a, &scales, j, second);
            j += 2;
        }
        g += n;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1])) - 128.0 * _mm512_reduce_add_ps(offset)
}
