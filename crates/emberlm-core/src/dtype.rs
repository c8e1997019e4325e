//! Storage dtypes and their packed GPU layouts. Activations are always f32; weights may be
//! stored smaller. Everything is packed into `u32` words so no kernel needs `shader-f16` or 8-bit
//! storage: f16 is unpacked with `unpack2x16float`, int4/int8 with shifts.
//!
//! Row-major `[rows, k]` matrices; each row's words are contiguous. Quantised formats keep the
//! values ("qs") and the per-group scales as two segments (structure of arrays), so the
//! matvec inner loop streams qs words back to back.
//!
//! | dtype | qs per row            | scales per row                                   | bits/weight |
//! |-------|-----------------------|--------------------------------------------------|-------------|
//! | F32   | k f32                 | —                                                | 32          |
//! | F16   | k/2 u32 (2 × f16)     | —                                                | 16          |
//! | Q8    | k/4 u32 (4 × i8)      | ceil(k/64) u32, 2 × f16 scale, group 32          | 8.5         |
//! | Q4    | k/8 u32 (8 × u4)      | k/32 u32: f16 scale (low) + f16 min (high)       | 5           |
//!
//! Q8: w = q · scale (symmetric; GGUF Q8_0 maps onto it exactly).
//! Q4: w = q · scale + min with q in 0..=15 (asymmetric; GGUF Q4_1 maps onto it exactly, and Q4_0's
//! `d·(q−8)` is `scale = d, min = −8d`, also exact in f16). Weight i (0..8) of a word sits at bit
//! 8·(i%4) + 4·(i/4): low nibbles of the four bytes are weights 0–3, high nibbles 4–7, so the
//! shader decodes a word with two masks and one shift.

use half::{bf16, f16};

pub const GROUP_SIZE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Q8,
    Q4,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
        }
    }

    /// The row-length multiple this layout needs.
    pub fn k_multiple(self) -> usize {
        match self {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::Q8 | DType::Q4 => GROUP_SIZE,
        }
    }

    /// Bytes of the value segment for one row of length `k`.
    pub fn qs_row_bytes(self, k: usize) -> u64 {
        (match self {
            DType::F32 => k * 4,
            DType::F16 => k * 2,
            DType::Q8 => k,
            DType::Q4 => k / 2,
        }) as u64
    }

    /// Bytes of the scale segment for one row of length `k` (0 for unquantised dtypes).
    pub fn scale_row_bytes(self, k: usize) -> u64 {
        (match self {
            DType::F32 | DType::F16 => 0,
            DType::Q8 => k.div_ceil(2 * GROUP_SIZE) * 4,
            DType::Q4 => k / GROUP_SIZE * 4,
        }) as u64
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8 | DType::Q4)
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "q8" => Ok(DType::Q8),
            "q4" => Ok(DType::Q4),
            other => Err(format!("unknown dtype `{other}` (expected f32, f16, q8 or q4)")),
        }
    }
}

/// A matrix packed for upload: `qs` then (for quantised dtypes) `scales`, both as u32 words.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub k: usize,
    pub qs: Vec<u32>,
    pub scales: Vec<u32>,
}

impl PackedMatrix {
    /// Packs row-major f32 values into `dtype`, quantising if needed.
    pub fn pack(dtype: DType, rows: usize, k: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * k, "PackedMatrix::pack: values.len() != rows * k");
        assert!(k % dtype.k_multiple() == 0, "{} rows need k % {} == 0", dtype.name(), dtype.k_multiple());
        let (qs, scales) = match dtype {
            DType::F32 => (bytemuck::cast_slice(values).to_vec(), Vec::new()),
            DType::F16 => (pack_f16(values), Vec::new()),
            DType::Q8 => quantize_q8(rows, k, values),
            DType::Q4 => quantize_q4(rows, k, values),
        };
        Self { dtype, rows, k, qs, scales }
    }

    /// Q4 from already-quantised groups: `q[i]` in 0..=15 per weight (row-major), and per
    /// group of 32 the f16 bits of (scale, min). Used to repack GGUF Q4_0/Q4_1 exactly.
    pub fn q4_from_groups(rows: usize, k: usize, q: &[u8], scale_min: &[(u16, u16)]) -> Self {
        assert!(k % GROUP_SIZE == 0 && q.len() == rows * k && scale_min.len() == rows * k / GROUP_SIZE);
        let mut qs = vec![0u32; rows * k / 8];
        for (i, &v) in q.iter().enumerate() {
            qs[i / 8] |= ((v & 0xf) as u32) << q4_shift(i % 8);
        }
        let scales = scale_min.iter().map(|&(s, m)| s as u32 | (m as u32) << 16).collect();
        Self { dtype: DType::Q4, rows, k, qs, scales }
    }

    /// Q8 from already-quantised groups: `q[i]` per weight and the f16 bits of each group's
    /// scale. Used to repack GGUF Q8_0 (and Q5_0, whose values fit in int8) exactly.
    pub fn q8_from_groups(rows: usize, k: usize, q: &[i8], scales: &[u16]) -> Self {
        let groups = k / GROUP_SIZE;
        assert!(k % GROUP_SIZE == 0 && q.len() == rows * k && scales.len() == rows * groups);
        let sc_words = k.div_ceil(2 * GROUP_SIZE);
        let mut qs = vec![0u32; rows * k / 4];
        for (i, &v) in q.iter().enumerate() {
            qs[i / 4] |= (v as u8 as u32) << (8 * (i % 4));
        }
        let mut packed_scales = vec![0u32; rows * sc_words];
        for r in 0..rows {
            for g in 0..groups {
                packed_scales[r * sc_words + g / 2] |= (scales[r * groups + g] as u32) << (16 * (g % 2));
            }
        }
        Self { dtype: DType::Q8, rows, k, qs, scales: packed_scales }
    }

    /// The exact values the GPU sees (the dequantised weights).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.k];
        for r in 0..self.rows {
            self.dequantize_row(r, &mut out[r * self.k..(r + 1) * self.k]);
        }
        out
    }

    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let k = self.k;
        let qs_words = (self.dtype.qs_row_bytes(k) / 4) as usize;
        let sc_words = (self.dtype.scale_row_bytes(k) / 4) as usize;
        let qs = &self.qs[row * qs_words..(row + 1) * qs_words];
        let sc = &self.scales[row * sc_words..(row + 1) * sc_words];
        match self.dtype {
            DType::F32 => out.copy_from_slice(bytemuck::cast_slice(qs)),
            DType::F16 => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = unpack_f16(qs[i / 2], i % 2);
                }
            }
            DType::Q8 => {
                for (i, o) in out.iter_mut().enumerate() {
                    let g = i / GROUP_SIZE;
                    let q = ((qs[i / 4] >> (8 * (i % 4))) & 0xff) as u8 as i8;
                    *o = q as f32 * unpack_f16(sc[g / 2], g % 2);
                }
            }
            DType::Q4 => {
                for (i, o) in out.iter_mut().enumerate() {
                    let g = i / GROUP_SIZE;
                    let q = (qs[i / 8] >> q4_shift(i % 8)) & 0xf;
                    *o = q as f32 * unpack_f16(sc[g], 0) + unpack_f16(sc[g], 1);
                }
            }
        }
    }

    pub fn qs_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.qs)
    }

    pub fn scale_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.scales)
    }
}

/// Bit position of weight `i` (0..8) inside a Q4 word.
fn q4_shift(i: usize) -> u32 {
    (8 * (i % 4) + 4 * (i / 4)) as u32
}

/// Half `half` (0 = low 16 bits) of a packed word, as `unpack2x16float` reads it.
pub fn unpack_f16(word: u32, half: usize) -> f32 {
    f16::from_bits((word >> (16 * half)) as u16).to_f32()
}

pub fn pack_f16_pair(lo: f32, hi: f32) -> u32 {
    f16::from_f32(lo).to_bits() as u32 | (f16::from_f32(hi).to_bits() as u32) << 16
}

pub fn pack_f16(values: &[f32]) -> Vec<u32> {
    values.chunks(2).map(|p| pack_f16_pair(p[0], *p.get(1).unwrap_or(&0.0))).collect()
}

/// bf16 bits to f32 (exact); safetensors bf16 weights are widened on load.
pub fn bf16_to_f32(bits: u16) -> f32 {
    bf16::from_bits(bits).to_f32()
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Symmetric int8, absmax per group of 32; the scale is rounded to f16 before quantising so the
/// stored scale is the one the values were fitted to.
fn quantize_q8(rows: usize, k: usize, values: &[f32]) -> (Vec<u32>, Vec<u32>) {
    let groups = k / GROUP_SIZE;
    let sc_words = k.div_ceil(2 * GROUP_SIZE);
    let mut qs = vec![0u32; rows * k / 4];
    let mut scales = vec![0u32; rows * sc_words];
    for r in 0..rows {
        let row = &values[r * k..(r + 1) * k];
        for g in 0..groups {
            let group = &row[g * GROUP_SIZE..(g + 1) * GROUP_SIZE];
            let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = round_f16(amax / 127.0);
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (i, v) in group.iter().enumerate() {
                let q = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8 as u32;
                let idx = r * k + g * GROUP_SIZE + i;
                qs[idx / 4] |= q << (8 * (idx % 4));
            }
            let bits = f16::from_f32(scale).to_bits() as u32;
            scales[r * sc_words + g / 2] |= bits << (16 * (g % 2));
        }
    }
    (qs, scales)
}

/// Asymmetric 4-bit, min/max per group of 32, scale and min rounded to f16 first.
fn quantize_q4(rows: usize, k: usize, values: &[f32]) -> (Vec<u32>, Vec<u32>) {
    let groups = k / GROUP_SIZE;
    let mut qs = vec![0u32; rows * k / 8];
    let mut scales = vec![0u32; rows * groups];
    for r in 0..rows {
        for g in 0..groups {
            let start = r * k + g * GROUP_SIZE;
            let group = &values[start..start + GROUP_SIZE];
            let lo = group.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let min = round_f16(lo);
            let scale = round_f16((hi - min) / 15.0);
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (i, v) in group.iter().enumerate() {
                let q = ((v - min) * inv).round().clamp(0.0, 15.0) as u32;
                let idx = start + i;
                qs[idx / 8] |= q << q4_shift(idx % 8);
            }
            scales[r * groups + g] = pack_f16_pair(scale, min);
        }
    }
    (qs, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_round_trip_error_is_within_half_a_step() {
        let k = 64;
        let values: Vec<f32> = (0..2 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let packed = PackedMatrix::pack(DType::Q4, 2, k, &values);
        let back = packed.dequantize();
        for g in 0..(2 * k / GROUP_SIZE) {
            let scale = unpack_f16(packed.scales[g], 0);
            for i in g * GROUP_SIZE..(g + 1) * GROUP_SIZE {
                // half a step, plus the f16 rounding of min.
                assert!((values[i] - back[i]).abs() <= 0.5 * scale + 2e-3, "{i}: {} vs {}", values[i], back[i]);
            }
        }
    }

    #[test]
    fn q8_round_trip_and_odd_group_count() {
        let k = 96; // three groups: scales are padded to two words per row
        let values: Vec<f32> = (0..3 * k).map(|i| ((i * 13 % 61) as f32 - 30.0) / 7.0).collect();
        let packed = PackedMatrix::pack(DType::Q8, 3, k, &values);
        assert_eq!(packed.scales.len(), 3 * 2);
        let back = packed.dequantize();
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= 30.0 / 7.0 / 127.0 * 0.5 + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn f16_and_bf16_conversions_are_exact_for_representable_values() {
        let values = [1.0f32, -2.5, 0.0, 65504.0];
        let packed = PackedMatrix::pack(DType::F16, 1, 4, &values);
        assert_eq!(packed.dequantize(), values);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc020), -2.5);
    }

    #[test]
    fn constant_group_quantises_exactly() {
        let values = vec![0.75f32; 32];
        for dtype in [DType::Q4, DType::Q8] {
            let back = PackedMatrix::pack(dtype, 1, 32, &values).dequantize();
            assert!(back.iter().all(|v| (v - 0.75).abs() < 1e-3), "{dtype:?}: {back:?}");
        }
    }
}
