//! wasm `simd128` versions of the hot row kernels (the browser's CPU path). Same arithmetic as
//! the portable code in [`crate::matvec`] and [`crate::int8`], four lanes wide. Q4 groups
//! are widened 16 bytes at once, so activations come in [`crate::matvec::nibble_order`] as in
//! the AVX-512 kernel. Built with `relaxed-simd` too (the npm package's `*_relaxed_bg.wasm`,
//! loaded where the engine validates it), the Q4 × int8 dot product is one relaxed dot
//! instruction per 16 bytes instead of four widenings and two multiply-adds.

use core::arch::wasm32::*;

use emberlm_core::dtype::GROUP_SIZE;

use crate::int8::Int8Activations;
use crate::matvec::f16_to_f32;

#[inline(always)]
fn hsum(v: v128) -> f32 {
    f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}

#[inline(always)]
unsafe fn load(p: *const f32) -> v128 {
    v128_load(p as *const v128)
}

/// Σ a[i]·b[i].
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [f32x4_splat(0.0); 4];
    let mut i = 0;
    // SAFETY: every load reads 4 floats below `n`.
    unsafe {
        while i + 16 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = f32x4_add(*a, f32x4_mul(load(pa.add(i + 4 * j)), load(pb.add(i + 4 * j))));
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = f32x4_add(acc[0], f32x4_mul(load(pa.add(i)), load(pb.add(i))));
            i += 4;
        }
    }
    let mut s = hsum(f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3])));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// Four u8 lanes of `v` (starting at byte `4·Q`) as f32.
#[inline(always)]
fn u8_quarter<const Q: usize>(v: v128) -> v128 {
    let h = if Q < 2 { u16x8_extend_low_u8x16(v) } else { u16x8_extend_high_u8x16(v) };
    f32x4_convert_u32x4(if Q % 2 == 0 { u32x4_extend_low_u16x8(h) } else { u32x4_extend_high_u16x8(h) })
}

#[inline(always)]
fn i8_quarter<const Q: usize>(v: v128) -> v128 {
    let h = if Q < 2 { i16x8_extend_low_i8x16(v) } else { i16x8_extend_high_i8x16(v) };
    f32x4_convert_i32x4(if Q % 2 == 0 { i32x4_extend_low_i16x8(h) } else { i32x4_extend_high_i16x8(h) })
}

/// Σ over 16 widened bytes `v` times 16 activations at `x`.
#[inline(always)]
unsafe fn bytes_dot(v: v128, x: *const f32, signed: bool) -> v128 {
    let q = if signed {
        [i8_quarter::<0>(v), i8_quarter::<1>(v), i8_quarter::<2>(v), i8_quarter::<3>(v)]
    } else {
        [u8_quarter::<0>(v), u8_quarter::<1>(v), u8_quarter::<2>(v), u8_quarter::<3>(v)]
    };
    let a = f32x4_add(f32x4_mul(q[0], load(x)), f32x4_mul(q[1], load(x.add(4))));
    let b = f32x4_add(f32x4_mul(q[2], load(x.add(8))), f32x4_mul(q[3], load(x.add(12))));
    f32x4_add(a, b)
}

/// Σ_g scale_g · group(g, low nibbles, high nibbles) + min_g · sums[g] over a Q4 row: the loop
/// both Q4 kernels share; `group` returns the group's four partial dot products as f32.
#[inline(always)]
fn q4_row(qs: &[u32], sc: &[u32], sums: &[f32], group: impl Fn(usize, v128, v128) -> v128) -> f32 {
    let groups = sc.len();
    assert!(qs.len() >= groups * 4 && sums.len() >= groups);
    let mut total = f32x4_splat(0.0);
    let mut mins = 0f32;
    let low = u8x16_splat(15);
    for (g, (&s, &sum)) in sc.iter().zip(sums).enumerate() {
        // SAFETY: the assert above bounds the read.
        let bytes = unsafe { v128_load(qs.as_ptr().add(4 * g) as *const v128) };
        let acc = group(g, v128_and(bytes, low), u8x16_shr(bytes, 4));
        total = f32x4_add(total, f32x4_mul(acc, f32x4_splat(f16_to_f32(s & 0xffff))));
        mins += f16_to_f32(s >> 16) * sum;
    }
    hsum(total) + mins
}

/// One Q4 row against `x_nibble` ([`crate::matvec::nibble_order`] of x); `group_sums[g]` = Σ x over group g.
pub fn dot_q4(qs: &[u32], sc: &[u32], x_nibble: &[f32], group_sums: &[f32]) -> f32 {
    assert!(x_nibble.len() >= sc.len() * GROUP_SIZE);
    q4_row(qs, sc, group_sums, |g, low, high| {
        // SAFETY: the assert above bounds the reads.
        unsafe {
            let xg = x_nibble.as_ptr().add(GROUP_SIZE * g);
            f32x4_add(bytes_dot(low, xg, false), bytes_dot(high, xg.add(16), false))
        }
    })
}

/// One Q8 row against `x`.
pub fn dot_q8(qs: &[u32], sc: &[u32], x: &[f32]) -> f32 {
    let groups = x.len() / GROUP_SIZE;
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups);
    let mut total = f32x4_splat(0.0);
    for g in 0..groups {
        // SAFETY: the assert above bounds every read.
        unsafe {
            let p = qs.as_ptr().add(8 * g) as *const v128;
            let xg = x.as_ptr().add(GROUP_SIZE * g);
            let acc = f32x4_add(bytes_dot(v128_load(p), xg, true), bytes_dot(v128_load(p.add(1)), xg.add(16), true));
            let scale = f16_to_f32((*sc.get_unchecked(g / 2) >> (16 * (g % 2))) & 0xffff);
            total = f32x4_add(total, f32x4_mul(acc, f32x4_splat(scale)));
        }
    }
    hsum(total)
}

/// Σ over 16 weight bytes `w` (signed for Q8, unsigned nibbles for Q4) times 16 signed
/// activation bytes `a`, exact, in four i32 lanes: widened to i16 and multiplied in pairs.
#[inline(always)]
fn bytes_dot_i8(w: v128, a: v128, signed: bool) -> v128 {
    let (wl, wh) = if signed { (i16x8_extend_low_i8x16(w), i16x8_extend_high_i8x16(w)) } else { (u16x8_extend_low_u8x16(w), u16x8_extend_high_u8x16(w)) };
    i32x4_add(i32x4_dot_i16x8(wl, i16x8_extend_low_i8x16(a)), i32x4_dot_i16x8(wh, i16x8_extend_high_i8x16(a)))
}

/// Σ over 16 nibble weights `w` (0..=15) times 16 signed activation bytes `a`, exact, in four
/// i32 lanes, plus `acc`.
#[inline(always)]
fn nibbles_dot_i8(w: v128, a: v128, acc: v128) -> v128 {
    // The weights are below 128, where the relaxed instruction's second operand reads the
    // same signed or unsigned, and its i16 pair sums (at most 2·15·127) cannot saturate: the
    // result is exact on every engine.
    #[cfg(target_feature = "relaxed-simd")]
    return i32x4_relaxed_dot_i8x16_i7x16_add(a, w, acc);
    #[cfg(not(target_feature = "relaxed-simd"))]
    return i32x4_add(acc, bytes_dot_i8(w, a, false));
}

/// One Q4 row against 8-bit activations ([`crate::int8`], nibble order).
pub fn dot_q4_int8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    assert!(x.q.len() >= sc.len() * GROUP_SIZE && x.d.len() >= sc.len());
    q4_row(qs, sc, &x.sum, |g, low, high| {
        // SAFETY: the assert above bounds the reads.
        unsafe {
            let a = x.q.as_ptr().add(GROUP_SIZE * g) as *const v128;
            let dot = nibbles_dot_i8(high, v128_load(a.add(1)), nibbles_dot_i8(low, v128_load(a), i32x4_splat(0)));
            f32x4_mul(f32x4_convert_i32x4(dot), f32x4_splat(*x.d.get_unchecked(g)))
        }
    })
}

/// One Q8 row against 8-bit activations (natural order).
pub fn dot_q8_int8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = x.d.len();
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups && x.q.len() >= groups * GROUP_SIZE);
    let mut total = f32x4_splat(0.0);
    for g in 0..groups {
        // SAFETY: the assert above bounds every read.
        unsafe {
            let p = qs.as_ptr().add(8 * g) as *const v128;
            let a = x.q.as_ptr().add(GROUP_SIZE * g) as *const v128;
            let dot = i32x4_add(bytes_dot_i8(v128_load(p), v128_load(a), true), bytes_dot_i8(v128_load(p.add(1)), v128_load(a.add(1)), true));
            let scale = f16_to_f32((*sc.get_unchecked(g / 2) >> (16 * (g % 2))) & 0xffff) * *x.d.get_unchecked(g);
            total = f32x4_add(total, f32x4_mul(f32x4_convert_i32x4(dot), f32x4_splat(scale)));
        }
    }
    hsum(total)
}

/// `out[r·m + t] = Σ w[r·k + i]·x[t·k + i]` for 4 decoded weight rows and `m` activation rows,
/// in 4 × 2 tiles of 4-lane accumulators.
pub fn matmul_4rows(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
    assert!(w.len() >= 4 * k && x.len() >= m * k && out.len() >= 4 * m);
    let k4 = k / 4 * 4;
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut t = 0;
    while t + 2 <= m {
        let mut acc = [[f32x4_splat(0.0); 2]; 4];
        let mut i = 0;
        // SAFETY: the assert above bounds every read (i + 4 ≤ k4 ≤ k).
        unsafe {
            while i < k4 {
                let xs = [load(px.add(t * k + i)), load(px.add((t + 1) * k + i))];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = load(pw.add(r * k + i));
                    acc_r[0] = f32x4_add(acc_r[0], f32x4_mul(wv, xs[0]));
                    acc_r[1] = f32x4_add(acc_r[1], f32x4_mul(wv, xs[1]));
                }
                i += 4;
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, a) in acc_r.iter().enumerate() {
                let mut s = hsum(*a);
                for i in k4..k {
                    s += w[r * k + i] * x[(t + j) * k + i];
                }
                out[r * m + t + j] = s;
            }
        }
        t += 2;
    }
    for t in t..m {
        for r in 0..4 {
            out[r * m + t] = dot(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
        }
    }
}
