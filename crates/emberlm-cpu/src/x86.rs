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
