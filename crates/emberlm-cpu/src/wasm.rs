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

/// Four f16 values, one in the low half of each u32 lane (the high halves zero), as f32:
/// [`f16_to_f32`] four lanes wide, with the same exact arithmetic (Inf and NaN kept).
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let rest = v128_and(h, u32x4_splat(0x7fff));
    let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
    let finite = f32x4_mul(i32x4_shl(rest, 13), f32x4_splat(f32::from_bits(0x7780_0000)));
    let special = v128_or(u32x4_splat(0x7f80_0000), i32x4_shl(v128_and(rest, u32x4_splat(0x3ff)), 13));
    v128_or(v128_bitselect(special, finite, u32x4_ge(rest, u32x4_splat(0x7c00))), sign)
}

/// [`f16x4_to_f32`] on four f16 values (the low halves of `h`), for the checks.
pub fn f16s_to_f32(h: [u32; 4]) -> [f32; 4] {
    let v = f16x4_to_f32(u32x4(h[0] & 0xffff, h[1] & 0xffff, h[2] & 0xffff, h[3] & 0xffff));
    [f32x4_extract_lane::<0>(v), f32x4_extract_lane::<1>(v), f32x4_extract_lane::<2>(v), f32x4_extract_lane::<3>(v)]
}

/// Lane `i` of `v` in every lane (one shuffle once `i` is a constant).
#[inline(always)]
fn broadcast(v: v128, i: usize) -> v128 {
    match i {
        0 => i32x4_shuffle::<0, 0, 0, 0>(v, v),
        1 => i32x4_shuffle::<1, 1, 1, 1>(v, v),
        2 => i32x4_shuffle::<2, 2, 2, 2>(v, v),
        _ => i32x4_shuffle::<3, 3, 3, 3>(v, v),
    }
}

/// Σ_g d_g · x_scales[g] · dot(g) (+ Σ_g min_g · sums[g] where `sums` is given) over one row
/// of `groups` groups: the loop every quantised row dot here shares. `dot` returns group g's
/// four partial products as f32; `words(g)` the scale words of groups g..g+4, one per u32 lane,
/// and `word(g)` one group's (the tail): the f16 scale d in the low half, the f16 min in the
/// high half (zero where the format has none). Four groups' scales are converted at once in
/// SIMD: converted one by one in scalar code they cost about as many instructions as the
/// products of their groups.
#[inline(always)]
fn scaled_row(
    groups: usize,
    x_scales: Option<&[f32]>,
    sums: Option<&[f32]>,
    words: impl Fn(usize) -> v128,
    word: impl Fn(usize) -> u32,
    dot: impl Fn(usize) -> v128,
) -> f32 {
    assert!(x_scales.is_none_or(|d| d.len() >= groups) && sums.is_none_or(|s| s.len() >= groups));
    let mut total = [f32x4_splat(0.0); 2];
    let mut min_total = f32x4_splat(0.0);
    let mut g = 0;
    while g + 4 <= groups {
        let w = words(g);
        let mut s = f16x4_to_f32(v128_and(w, u32x4_splat(0xffff)));
        // SAFETY: the assert above bounds the per-group reads (g + 4 ≤ groups).
        unsafe {
            if let Some(d) = x_scales {
                s = f32x4_mul(s, v128_load(d.as_ptr().add(g) as *const v128));
            }
            if let Some(sums) = sums {
                min_total = f32x4_add(min_total, f32x4_mul(f16x4_to_f32(u32x4_shr(w, 16)), v128_load(sums.as_ptr().add(g) as *const v128)));
            }
        }
        for i in 0..4 {
            total[i % 2] = f32x4_add(total[i % 2], f32x4_mul(dot(g + i), broadcast(s, i)));
        }
        g += 4;
    }
    let mut tail = 0f32;
    for g in g..groups {
        let w = word(g);
        let s = f16_to_f32(w & 0xffff) * x_scales.map_or(1.0, |d| d[g]);
        total[0] = f32x4_add(total[0], f32x4_mul(dot(g), f32x4_splat(s)));
        if let Some(sums) = sums {
            tail += f16_to_f32(w >> 16) * sums[g];
        }
    }
    hsum(f32x4_add(total[0], total[1])) + hsum(min_total) + tail
}

/// A Q4 row (`sc`: one word per group, d in the low half, min in the high half): [`scaled_row`]
/// with `group` given the group's low and high nibbles.
#[inline(always)]
fn q4_row(qs: &[u32], sc: &[u32], sums: &[f32], x_scales: Option<&[f32]>, group: impl Fn(usize, v128, v128) -> v128) -> f32 {
    let groups = sc.len();
    assert!(qs.len() >= groups * 4);
    let low = u8x16_splat(15);
    scaled_row(
        groups,
        x_scales,
        Some(sums),
        // SAFETY (both): scaled_row asks for groups below `groups` (four at a time: g + 4 ≤ groups).
        |g| unsafe { v128_load(sc.as_ptr().add(g) as *const v128) },
        |g| sc[g],
        |g| {
            let bytes = unsafe { v128_load(qs.as_ptr().add(4 * g) as *const v128) };
            group(g, v128_and(bytes, low), u8x16_shr(bytes, 4))
        },
    )
}

/// A Q8 row (`sc`: two f16 scales per word): [`scaled_row`] with `group` given the group's two
/// 16-byte halves.
#[inline(always)]
fn q8_row(qs: &[u32], sc: &[u32], groups: usize, x_scales: Option<&[f32]>, group: impl Fn(usize, v128, v128) -> v128) -> f32 {
    assert!(qs.len() >= groups * 8 && sc.len() * 2 >= groups);
    scaled_row(
        groups,
        x_scales,
        None,
        // SAFETY (both): g is a multiple of 4 with g + 4 ≤ groups, so words g/2 and g/2 + 1 exist.
        |g| unsafe { u32x4_extend_low_u16x8(v128_load64_zero(sc.as_ptr().add(g / 2) as *const u64)) },
        |g| (sc[g / 2] >> (16 * (g % 2))) & 0xffff,
        |g| unsafe {
            let p = qs.as_ptr().add(8 * g) as *const v128;
            group(g, v128_load(p), v128_load(p.add(1)))
        },
    )
}

/// One Q4 row against `x_nibble` ([`crate::matvec::nibble_order`] of x); `group_sums[g]` = Σ x over group g.
pub fn dot_q4(qs: &[u32], sc: &[u32], x_nibble: &[f32], group_sums: &[f32]) -> f32 {
    assert!(x_nibble.len() >= sc.len() * GROUP_SIZE);
    q4_row(qs, sc, group_sums, None, |g, low, high| {
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
    q8_row(qs, sc, groups, None, |g, first, second| {
        // SAFETY: `groups` comes from x's length.
        unsafe {
            let xg = x.as_ptr().add(GROUP_SIZE * g);
            f32x4_add(bytes_dot(first, xg, true), bytes_dot(second, xg.add(16), true))
        }
    })
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
    assert!(x.q.len() >= sc.len() * GROUP_SIZE);
    q4_row(qs, sc, &x.sum, Some(&x.d), |g, low, high| {
        // SAFETY: the assert above bounds the reads.
        unsafe {
            let a = x.q.as_ptr().add(GROUP_SIZE * g) as *const v128;
            f32x4_convert_i32x4(nibbles_dot_i8(high, v128_load(a.add(1)), nibbles_dot_i8(low, v128_load(a), i32x4_splat(0))))
        }
    })
}

/// One Q8 row against 8-bit activations (natural order).
pub fn dot_q8_int8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let groups = x.d.len();
    assert!(x.q.len() >= groups * GROUP_SIZE);
    q8_row(qs, sc, groups, Some(&x.d), |g, first, second| {
        // SAFETY: the assert above bounds the reads.
        unsafe {
            let a = x.q.as_ptr().add(GROUP_SIZE * g) as *const v128;
            f32x4_convert_i32x4(i32x4_add(bytes_dot_i8(first, v128_load(a), true), bytes_dot_i8(second, v128_load(a.add(1)), true)))
        }
    })
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

/// Rows per panel of the integer matmuls: one per 32-bit lane.
pub const PANEL_ROWS: usize = 4;

/// Tokens per tile of the integer matmuls: each weight register meets this many tokens before
/// the next is loaded (V8 has 16 xmm registers on x86-64: 2·4 sums, weights, activations).
const TILE_TOKENS: usize = 4;

/// The integer matmuls' kernel for the weights (known at compile time, so the panel format is).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PanelWeights {
    Q4,
    Q8,
}

impl PanelWeights {
    /// Whether a panel keeps each quad of four weights per row as bytes, met by one relaxed dot
    /// per quad and token; else as two i16x8 (rows 0–1, rows 2–3) met by two `i32x4.dot_i16x8`.
    /// Only Q4's nibbles fit the relaxed dot's 7-bit operand exactly.
    const fn byte_quads(self) -> bool {
        cfg!(target_feature = "relaxed-simd") && matches!(self, PanelWeights::Q4)
    }
}

/// Q4 rows (`qs`/`sc`: `out.len() / x.len()` whole rows) against every token's 8-bit
/// activations (`x`, [`crate::int8::Int8Layout::Natural`]): `out` is [tokens, rows].
///
/// The x86 VNNI kernel's panels ([`crate::x86`]), four lanes wide: rows go in panels of 4, one
/// per 32-bit lane, unpacked once per panel so that a register holds four consecutive weights
/// of each of the 4 rows; four activation bytes splatted from memory meet all 4 rows in one dot
/// instruction, and a group's sum per row is scaled once per token. Unlike the f32 path
/// ([`crate::matvec::matmul_rows`]), no weight is widened to f32, and each product is a byte
/// (relaxed dot, 16 per instruction) or i16 (`dot_i16x8`, 8 per instruction) multiply instead
/// of an f32 one (no FMA in simd128): fewer instructions per product on any CPU.
pub fn matmul_q4_int8(qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32]) {
    matmul_panels(PanelWeights::Q4, qs, sc, x, out)
}

/// [`matmul_q4_int8`] for Q8 rows (signed bytes, no min term), always in i16.
pub fn matmul_q8_int8(qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32]) {
    matmul_panels(PanelWeights::Q8, qs, sc, x, out)
}

fn matmul_panels(kind: PanelWeights, qs: &[u32], sc: &[u32], x: &[Int8Activations], out: &mut [f32]) {
    let m = x.len();
    let rows = if m == 0 { 0 } else { out.len() / m };
    let groups = x.first().map_or(0, |x| x.d.len());
    let group_words = if kind == PanelWeights::Q4 { 4 } else { 8 };
    let (qw, sw) = (groups * group_words, if rows == 0 { 0 } else { sc.len() / rows });
    let scale_words = if kind == PanelWeights::Q4 { groups } else { groups.div_ceil(2) };
    assert!(qs.len() >= rows * qw && out.len() == rows * m && (rows == 0 || sw >= scale_words));
    for xt in x {
        assert!(xt.q.len() >= groups * GROUP_SIZE && xt.d.len() == groups && xt.sum.len() >= groups);
    }
    let quads = if kind.byte_quads() { 8 } else { 16 };
    let mut panel = Panel { quads: vec![i32x4_splat(0); groups * quads], d: vec![f32x4_splat(0.0); groups], min: vec![f32x4_splat(0.0); groups] };
    for r0 in (0..rows).step_by(PANEL_ROWS) {
        let n = (rows - r0).min(PANEL_ROWS);
        panel.fill(kind, &qs[r0 * qw..(r0 + n) * qw], &sc[r0 * sw..(r0 + n) * sw], n, groups);
        let mut t = 0;
        while t < m {
            let dst = &mut out[t * rows + r0..];
            t += if m - t >= TILE_TOKENS {
                panel_tile::<TILE_TOKENS>(kind, &panel, &x[t..t + TILE_TOKENS], dst, rows, n)
            } else {
                panel_tile::<1>(kind, &panel, &x[t..t + 1], dst, rows, n)
            };
        }
    }
}

/// Up to 4 rows unpacked for the integer matmuls, per group: the 8 quads of four consecutive
/// weights as `[row 0 | row 1 | row 2 | row 3]` bytes (or each widened to two i16x8, rows 0–1
/// and rows 2–3), and the rows' f32 scales `d` and Q4 `min` terms. Missing rows are zeros.
struct Panel {
    quads: Vec<v128>,
    d: Vec<v128>,
    min: Vec<v128>,
}

/// `v[r]` word `w` → lane `r` of the result's vector `w` (a 4×4 transpose of u32s).
#[inline(always)]
fn transpose(v: [v128; 4]) -> [v128; 4] {
    let t0 = i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]);
    let t1 = i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]);
    let t2 = i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]);
    let t3 = i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]);
    [i32x4_shuffle::<0, 1, 4, 5>(t0, t2), i32x4_shuffle::<2, 3, 6, 7>(t0, t2), i32x4_shuffle::<0, 1, 4, 5>(t1, t3), i32x4_shuffle::<2, 3, 6, 7>(t1, t3)]
}

impl Panel {
    /// Unpacks `n` ≤ 4 rows' segments (`qs`/`sc`, whole rows) of `groups` groups.
    fn fill(&mut self, kind: PanelWeights, qs: &[u32], sc: &[u32], n: usize, groups: usize) {
        let (qw, sw) = (qs.len() / n, sc.len() / n);
        // Four u32s of row r's words at `at` (zeros past the last row).
        let words = |r: usize, at: usize| if r < n { load4(&qs[r * qw + at..r * qw + at + 4]) } else { i32x4_splat(0) };
        let low = u8x16_splat(15);
        let per_group = self.quads.len() / groups.max(1);
        // Group g's scale word (Q8: its half of the word) of each row, one row per lane.
        let scale_words = |g: usize| {
            let word = |r: usize| match kind {
                _ if r >= n => 0,
                PanelWeights::Q4 => sc[r * sw + g],
                PanelWeights::Q8 => (sc[r * sw + g / 2] >> (16 * (g % 2))) & 0xffff,
            };
            u32x4(word(0), word(1), word(2), word(3))
        };
        for g in 0..groups {
            let mut bytes = [i32x4_splat(0); 8];
            match kind {
                PanelWeights::Q4 => {
                    // Word w of a Q4 group holds weights 8w..8w+3 in its low nibbles and
                    // 8w+4..8w+7 in its high ones: quads 2w and 2w + 1.
                    let v = transpose([words(0, 4 * g), words(1, 4 * g), words(2, 4 * g), words(3, 4 * g)]);
                    for (w, vw) in v.into_iter().enumerate() {
                        bytes[2 * w] = v128_and(vw, low);
                        bytes[2 * w + 1] = v128_and(u8x16_shr(vw, 4), low);
                    }
                }
                PanelWeights::Q8 => {
                    // Word w of a Q8 group is quad w.
                    let a = transpose([words(0, 8 * g), words(1, 8 * g), words(2, 8 * g), words(3, 8 * g)]);
                    let b = transpose([words(0, 8 * g + 4), words(1, 8 * g + 4), words(2, 8 * g + 4), words(3, 8 * g + 4)]);
                    bytes[..4].copy_from_slice(&a);
                    bytes[4..].copy_from_slice(&b);
                }
            }
            let quads = &mut self.quads[g * per_group..(g + 1) * per_group];
            if kind.byte_quads() {
                quads.copy_from_slice(&bytes);
            } else {
                // Nibbles are below 128, so the signed widening serves Q4 as well as Q8.
                for (q, b) in bytes.iter().enumerate() {
                    quads[2 * q] = i16x8_extend_low_i8x16(*b);
                    quads[2 * q + 1] = i16x8_extend_high_i8x16(*b);
                }
            }
            let words = scale_words(g);
            self.d[g] = f16x4_to_f32(v128_and(words, u32x4_splat(0xffff)));
            // Q8 has no min term: its high halves are zero here, and 0 converts to 0.
            self.min[g] = f16x4_to_f32(u32x4_shr(words, 16));
        }
    }
}

/// Four u32s from a slice of at least four.
#[inline(always)]
fn load4(words: &[u32]) -> v128 {
    assert!(words.len() >= 4);
    // SAFETY: checked just above.
    unsafe { v128_load(words.as_ptr() as *const v128) }
}

/// a·b + c: one fused instruction in the relaxed build where the CPU has FMA (rounded once or
/// twice, as the engine chooses: f32 sums of group terms carry that difference anyway).
#[inline(always)]
pub(crate) fn madd(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    return f32x4_relaxed_madd(a, b, c);
    #[cfg(not(target_feature = "relaxed-simd"))]
    return f32x4_add(f32x4_mul(a, b), c);
}

/// A panel against `T` tokens: `dst[j·rows + r]` ← row r · token j for the panel's `n` rows.
/// Returns `T`.
#[inline(always)]
fn panel_tile<const T: usize>(kind: PanelWeights, p: &Panel, x: &[Int8Activations], dst: &mut [f32], rows: usize, n: usize) -> usize {
    assert!(x.len() >= T && dst.len() >= (T - 1) * rows + n);
    let groups = p.d.len();
    assert!(p.min.len() >= groups);
    let per_group = p.quads.len() / groups.max(1);
    let mut acc = [f32x4_splat(0.0); T];
    let mut q = [std::ptr::null::<u32>(); T];
    for j in 0..T {
        assert!(x[j].q.len() >= groups * GROUP_SIZE && x[j].d.len() >= groups && x[j].sum.len() >= groups);
        q[j] = x[j].q.as_ptr() as *const u32;
    }
    for g in 0..groups {
        let w = &p.quads[g * per_group..(g + 1) * per_group];
        let mut sums = [i32x4_splat(0); T];
        // SAFETY: the asserts above bound every activation read (8 words per group).
        unsafe {
            if kind.byte_quads() {
                for (quad, wq) in w.iter().enumerate() {
                    for j in 0..T {
                        sums[j] = nibbles_dot_i8(*wq, v128_load32_splat(q[j].add(8 * g + quad)), sums[j]);
                    }
                }
            } else {
                // Lanes of `pairs[j]`: rows 0–1 and rows 2–3, each a row's two halves of a quad.
                let mut pairs = [[i32x4_splat(0); 2]; T];
                for (quad, halves) in w.chunks_exact(2).enumerate() {
                    let (w01, w23) = (halves[0], halves[1]);
                    for j in 0..T {
                        // The quad's four activations as i16, twice: one copy per row of a pair.
                        let a = i16x8_extend_low_i8x16(v128_load32_splat(q[j].add(8 * g + quad)));
                        pairs[j][0] = i32x4_add(pairs[j][0], i32x4_dot_i16x8(w01, a));
                        pairs[j][1] = i32x4_add(pairs[j][1], i32x4_dot_i16x8(w23, a));
                    }
                }
                for j in 0..T {
                    let [a, b] = pairs[j];
                    sums[j] = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(a, b), i32x4_shuffle::<1, 3, 5, 7>(a, b));
                }
            }
        }
        // SAFETY: the asserts above bound `g` for the panel's and every token's per-group terms.
        let (d_w, min_w) = unsafe { (*p.d.get_unchecked(g), *p.min.get_unchecked(g)) };
        for j in 0..T {
            let (d_x, sum_x) = unsafe { (*x[j].d.get_unchecked(g), *x[j].sum.get_unchecked(g)) };
            acc[j] = madd(f32x4_convert_i32x4(sums[j]), f32x4_mul(d_w, f32x4_splat(d_x)), acc[j]);
            if kind == PanelWeights::Q4 {
                acc[j] = madd(min_w, f32x4_splat(sum_x), acc[j]);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let lanes = [f32x4_extract_lane::<0>(*a), f32x4_extract_lane::<1>(*a), f32x4_extract_lane::<2>(*a), f32x4_extract_lane::<3>(*a)];
        dst[j * rows..j * rows + n].copy_from_slice(&lanes[..n]);
    }
    T
}
