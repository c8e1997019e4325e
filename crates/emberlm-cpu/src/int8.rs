//! Activations rounded to 8 bits for integer dot products against Q4 and Q8 weights, as
//! llama.cpp does on CPUs (its Q8_0/Q8_1 activations): each group of 32 values becomes 32 `i8`
//! and one f32 scale (`max|x| / 127`), so a group's products are exact integer sums (AVX-512
//! VNNI does 64 byte multiplies per instruction, where f32 FMAs do 16) and only the per-group
//! scaling is floating point.
//!
//! What a row dot computes is exactly defined: Σ w̃ᵢ·x̃ᵢ, the dequantised weights against the
//! dequantised activations ([`Int8Activations::dequantize`]), up to f32 rounding of the group
//! terms. That is what the checks hold the kernels to, against the f64 reference. The rounding
//! of x costs accuracy (SmolLM2's logits move by up to ~0.4 from transformers', against ~1e-4
//! with f32 activations; teacher-forced argmax agrees at 96–98% of positions), so it is a choice
//! ([`Activations`]); the CPU backend makes it by default for Q4/Q8 weights.

use emberlm_core::dtype::GROUP_SIZE;
use emberlm_core::DType;

use crate::matvec::f16_to_f32;

/// How the CPU backend meets Q4 and Q8 weights with activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activations {
    /// f32 activations: the same arithmetic as the GPU kernels, agreeing with them and with
    /// transformers to f32 rounding.
    Exact,
    /// Activations rounded to 8 bits per group of 32 and integer dot products (llama.cpp's
    /// choice): faster; logits within ~0.4 of exact on SmolLM2. Other weight formats stay exact.
    #[default]
    Int8,
}

impl Activations {
    /// Whether a matvec over `dtype` weights rounds its activations (a matmul: see
    /// [`crate::ops::matmul_rounds`]).
    pub fn rounds(self, dtype: DType) -> bool {
        self == Activations::Int8 && matches!(dtype, DType::Q4 | DType::Q8)
    }
}

/// Where a group's 32 rounded values sit, as each kernel loads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Layout {
    /// Natural order per group (Q8).
    Natural,
    /// Per group: the 16 values meeting its low nibbles ([`crate::matvec::nibble_order`]), then
    /// the 16 meeting its high nibbles (Q4, a group per step).
    Nibbles,
    /// Per block of 4 groups: their four low-nibble halves, then their four high-nibble halves, so
    /// a block's 64 weight bytes meet 64 activation bytes per instruction once split into low and
    /// high nibbles (Q4 with AVX-512 VNNI). Padded with zeros to whole blocks, and `d`/`sum` to
    /// whole 16-group chunks.
    NibbleBlocks,
}

/// One token's activations rounded to 8 bits, laid out for a kernel ([`Int8Layout`]).
pub struct Int8Activations {
    pub q: Vec<i8>,
    /// Per group: the scale `d`, x̃ᵢ = d·qᵢ.
    pub d: Vec<f32>,
    /// Per group: Σ x̃ᵢ = d·Σqᵢ (Q4's min term; Q8's +128 offset in the VNNI kernel).
    pub sum: Vec<f32>,
    layout: Int8Layout,
    groups: usize,
}

impl Int8Activations {
    /// Rounds `x` (a multiple of 32 long) into `layout`.
    pub fn new(x: &[f32], layout: Int8Layout) -> Self {
        let groups = x.len() / GROUP_SIZE;
        let (q_groups, d_groups) = match layout {
            Int8Layout::NibbleBlocks => (groups.next_multiple_of(4), groups.next_multiple_of(16)),
            _ => (groups, groups),
        };
        let mut out = Self { q: vec![0; q_groups * GROUP_SIZE], d: vec![0.0; d_groups], sum: vec![0.0; d_groups], layout, groups };
        for (g, src) in x.chunks_exact(GROUP_SIZE).enumerate() {
            // Eight running maxima and a natural-order pass vectorise; the layout's order is a
            // fixed shuffle afterwards.
            let mut lanes = [0f32; 8];
            for c in src.chunks_exact(8) {
                for l in 0..8 {
                    lanes[l] = lanes[l].max(c[l].abs());
                }
            }
            let d = lanes.iter().fold(0f32, |m, v| m.max(*v)) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut natural = [0i8; GROUP_SIZE];
            let mut total = 0i32;
            for (q, v) in natural.iter_mut().zip(src) {
                *q = round_to_i8(v * inv);
                total += *q as i32;
            }
            for slot in 0..GROUP_SIZE {
                out.q[place(layout, g, slot)] = natural[source(layout, slot)];
            }
            out.d[g] = d;
            out.sum[g] = d * total as f32;
        }
        out
    }

    /// x̃ in natural order (for the checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.groups * GROUP_SIZE];
        for (g, o) in out.chunks_exact_mut(GROUP_SIZE).enumerate() {
            for slot in 0..GROUP_SIZE {
                o[source(self.layout, slot)] = self.q[place(self.layout, g, slot)] as f32 * self.d[g];
            }
        }
        out
    }
}

/// `v` (|v| ≤ 127 up to rounding) to the nearest integer, ties to even, as i8. Adding 1.5·2²³
/// leaves no fraction bits, so the FPU rounds; unlike `f32::round` this needs no libm call
/// (SSE2 has no rounding instruction) and vectorises. A NaN becomes 0.
#[inline(always)]
fn round_to_i8(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8
}

/// The position in its group of the value a group's `slot` (0..32) holds.
#[inline(always)]
fn source(layout: Int8Layout, slot: usize) -> usize {
    if layout == Int8Layout::Natural {
        return slot;
    }
    let h = slot % 16;
    8 * (h / 4) + h % 4 + if slot >= 16 { 4 } else { 0 }
}

/// Where group `g`'s `slot` goes in [`Int8Activations::q`].
#[inline(always)]
fn place(layout: Int8Layout, g: usize, slot: usize) -> usize {
    match layout {
        Int8Layout::NibbleBlocks => 128 * (g / 4) + 64 * (slot / 16) + 16 * (g % 4) + slot % 16,
        _ => GROUP_SIZE * g + slot,
    }
}

/// One Q4 row against rounded activations, portable: Σ_g d_w·d_x·Σ qw·qx + min·Σx̃.
pub fn dot_q4(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let mut total = 0f32;
    for (g, (words, &s)) in qs.chunks_exact(4).zip(sc).enumerate() {
        let bytes = bytemuck::cast::<[u32; 4], [u8; 16]>(words.try_into().unwrap());
        let q = &x.q[GROUP_SIZE * g..GROUP_SIZE * (g + 1)];
        let mut dot = 0i32;
        for j in 0..16 {
            dot += (bytes[j] & 15) as i32 * q[j] as i32 + (bytes[j] >> 4) as i32 * q[16 + j] as i32;
        }
        total += f16_to_f32(s & 0xffff) * x.d[g] * dot as f32 + f16_to_f32(s >> 16) * x.sum[g];
    }
    total
}

/// One Q8 row against rounded activations, portable: Σ_g d_w·d_x·Σ qw·qx.
pub fn dot_q8(qs: &[u32], sc: &[u32], x: &Int8Activations) -> f32 {
    let mut total = 0f32;
    for (g, words) in qs.chunks_exact(8).enumerate() {
        let bytes = bytemuck::cast::<[u32; 8], [u8; 32]>(words.try_into().unwrap());
        let q = &x.q[GROUP_SIZE * g..GROUP_SIZE * (g + 1)];
        let mut dot = 0i32;
        for j in 0..32 {
            dot += bytes[j] as i8 as i32 * q[j] as i32;
        }
        total += f16_to_f32((sc[g / 2] >> (16 * (g % 2))) & 0xffff) * x.d[g] * dot as f32;
    }
    total
}
