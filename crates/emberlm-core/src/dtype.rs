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
//! | Q4K   | k/8 u32 (8 × u4)      | 4 u32 per 256: (f16 d, f16 dmin), 12 B scales    | 4.5         |
//! | Q5K   | k/8 u32 + k/32 u32    | as Q4K                                           | 5.5         |
//! | Q6K   | k/8 u32 + k/16 u32    | 5 u32 per 256: f16 d (low half), 16 × i8 scales  | 6.625       |
//! | MXFP4 | k/8 u32 (8 × e2m1)    | ceil(k/128) u32: one e8m0 byte per 32            | 4.25        |
//!
//! Q8: w = q · scale (symmetric; GGUF Q8_0 maps onto it exactly).
//! Q4: w = q · scale + min with q in 0..=15 (asymmetric; GGUF Q4_1 maps onto it exactly, and Q4_0's
//! `d·(q−8)` is `scale = d, min = −8d`, also exact in f16). Weight i (0..8) of a word sits at bit
//! 8·(i%4) + 4·(i/4): low nibbles of the four bytes are weights 0–3, high nibbles 4–7, so the
//! shader decodes a word with two masks and one shift.
//!
//! The K formats are ggml's K-quants (super-blocks of 256 weights), held exactly as a GGUF file
//! stores them but with the values split into u32-aligned segments; kernels decode them in
//! registers. Each row's qs are the low 4 bits of every weight (the Q4 word layout), then for
//! Q5K one high bit per weight (weight i of the row at bit i%32 of word i/32) and for Q6K two
//! (bits 2·(i%16) of word i/16). Per super-block:
//! - Q4K/Q5K: word 0 = d | dmin << 16 (f16), words 1–3 = ggml's 12 bytes of 6-bit sub-block
//!   scales and mins (sub-blocks of 32); w = d·sc·q − dmin·m with q in 0..=15 / 0..=31.
//! - Q6K: word 0 = d (f16, low half), words 1–4 = 16 signed 8-bit scales (sub-blocks of 16);
//!   w = d·sc·(q − 32) with q in 0..=63. (ggml's block is 210 bytes; the padding of d to a
//!   word is the 0.06 bits/weight difference.)
//!
//! MXFP4 (OCP microscaling, GPT-OSS's experts): 4-bit e2m1 codes in the Q4 word layout (sign
//! bit 3; magnitude 0, 0.5, 1, 1.5, 2, 3, 4, 6) and one e8m0 exponent byte per group of 32,
//! four to a word, rows padded to whole words: w = e2m1(q) · 2^(e − 127). GGUF MXFP4 and
//! OpenAI's `*_blocks` / `*_scales` map onto it exactly.

use half::{bf16, f16};

pub const GROUP_SIZE: usize = 32;
/// Weights per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Q8,
    Q4,
    Q4K,
    Q5K,
    Q6K,
    Mxfp4,
}

impl DType {
    pub const ALL: [DType; 8] = [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q4K, DType::Q5K, DType::Q6K, DType::Mxfp4];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::Q4K => "q4k",
            DType::Q5K => "q5k",
            DType::Q6K => "q6k",
            DType::Mxfp4 => "mxfp4",
        }
    }

    /// The row-length multiple this layout needs.
    pub fn k_multiple(self) -> usize {
        match self {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::Q8 | DType::Q4 | DType::Mxfp4 => GROUP_SIZE,
            DType::Q4K | DType::Q5K | DType::Q6K => SUPER_BLOCK,
        }
    }

    /// Bytes of the value segment for one row of length `k`.
    pub fn qs_row_bytes(self, k: usize) -> u64 {
        (match self {
            DType::F32 => k * 4,
            DType::F16 => k * 2,
            DType::Q8 => k,
            DType::Q4 | DType::Q4K | DType::Mxfp4 => k / 2,
            DType::Q5K => k / 2 + k / 8,
            DType::Q6K => k / 2 + k / 4,
        }) as u64
    }

    /// u32 words of the per-super-block header in the scale segment (K formats).
    pub fn super_block_words(self) -> usize {
        match self {
            DType::Q4K | DType::Q5K => 4,
            DType::Q6K => 5,
            _ => 0,
        }
    }

    /// Bytes of the scale segment for one row of length `k` (0 for unquantised dtypes).
    pub fn scale_row_bytes(self, k: usize) -> u64 {
        (match self {
            DType::F32 | DType::F16 => 0,
            DType::Q8 => k.div_ceil(2 * GROUP_SIZE) * 4,
            DType::Q4 => k / GROUP_SIZE * 4,
            DType::Mxfp4 => k.div_ceil(4 * GROUP_SIZE) * 4,
            DType::Q4K | DType::Q5K | DType::Q6K => k / SUPER_BLOCK * self.super_block_words() * 4,
        }) as u64
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16)
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
            "q4k" | "q4_k" => Ok(DType::Q4K),
            "q5k" | "q5_k" => Ok(DType::Q5K),
            "q6k" | "q6_k" => Ok(DType::Q6K),
            "mxfp4" => Ok(DType::Mxfp4),
            other => Err(format!("unknown dtype `{other}` (expected f32, f16, q8, q4, q4k, q5k, q6k or mxfp4)")),
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
            DType::Q4K | DType::Q5K | DType::Q6K => return quantize_k(dtype, rows, k, values),
            DType::Mxfp4 => return quantize_mxfp4(rows, k, values),
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

    /// A K format from already-quantised values: `q[i]` per weight (row-major, up to 4/5/6
    /// bits) and each super-block's header words (see the module docs). Used to repack GGUF
    /// Q4_K/Q5_K/Q6_K exactly and by the K quantiser.
    pub fn k_from_blocks(dtype: DType, rows: usize, k: usize, q: &[u8], headers: &[u32]) -> Self {
        let hw = dtype.super_block_words();
        assert!(hw > 0 && k % SUPER_BLOCK == 0 && q.len() == rows * k && headers.len() == rows * k / SUPER_BLOCK * hw);
        let row_words = (dtype.qs_row_bytes(k) / 4) as usize;
        let mut qs = vec![0u32; rows * row_words];
        for (row_q, row_qs) in q.chunks_exact(k).zip(qs.chunks_exact_mut(row_words)) {
            let (nibbles, high) = row_qs.split_at_mut(k / 8);
            for (i, &v) in row_q.iter().enumerate() {
                nibbles[i / 8] |= ((v & 0xf) as u32) << q4_shift(i % 8);
                match dtype {
                    DType::Q5K => high[i / 32] |= ((v >> 4) as u32 & 1) << (i % 32),
                    DType::Q6K => high[i / 16] |= ((v >> 4) as u32 & 3) << (2 * (i % 16)),
                    _ => {}
                }
            }
        }
        Self { dtype, rows, k, qs, scales: headers.to_vec() }
    }

    /// MXFP4 from its codes: `q[i]` the e2m1 code (0..=15) per weight (row-major) and `e[g]` the
    /// e8m0 exponent of each group of 32. Used to repack GGUF MXFP4 and OpenAI's blocks exactly.
    pub fn mxfp4_from_blocks(rows: usize, k: usize, q: &[u8], e: &[u8]) -> Self {
        let groups = k / GROUP_SIZE;
        assert!(k % GROUP_SIZE == 0 && q.len() == rows * k && e.len() == rows * groups);
        let mut qs = vec![0u32; rows * k / 8];
        for (i, &v) in q.iter().enumerate() {
            qs[i / 8] |= ((v & 0xf) as u32) << q4_shift(i % 8);
        }
        let sc_words = groups.div_ceil(4);
        let mut scales = vec![0u32; rows * sc_words];
        for r in 0..rows {
            for g in 0..groups {
                scales[r * sc_words + g / 4] |= (e[r * groups + g] as u32) << (8 * (g % 4));
            }
        }
        Self { dtype: DType::Mxfp4, rows, k, qs, scales }
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
            DType::Mxfp4 => {
                for (i, o) in out.iter_mut().enumerate() {
                    let g = i / GROUP_SIZE;
                    let q = (qs[i / 8] >> q4_shift(i % 8)) & 0xf;
                    *o = mxfp4_value(q as u8, header_byte(sc, g));
                }
            }
            DType::Q4K | DType::Q5K | DType::Q6K => {
                let hw = self.dtype.super_block_words();
                let high = &qs[k / 8..];
                for (i, o) in out.iter_mut().enumerate() {
                    let header = &sc[i / SUPER_BLOCK * hw..][..hw];
                    let low = (qs[i / 8] >> q4_shift(i % 8)) & 0xf;
                    *o = match self.dtype {
                        DType::Q6K => {
                            let q = low | ((high[i / 16] >> (2 * (i % 16))) & 3) << 4;
                            let s = header_byte(&header[1..], (i % SUPER_BLOCK) / 16) as i8;
                            unpack_f16(header[0], 0) * s as f32 * (q as f32 - 32.0)
                        }
                        _ => {
                            let q = if self.dtype == DType::Q5K { low | ((high[i / 32] >> (i % 32)) & 1) << 4 } else { low };
                            let (s, m) = k_scale_min(&header[1..], (i % SUPER_BLOCK) / 32);
                            unpack_f16(header[0], 0) * s as f32 * q as f32 - unpack_f16(header[0], 1) * m as f32
                        }
                    };
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

/// The magnitudes of the e2m1 codes 0..=7 (code 8 + c is −E2M1[c]).
pub const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// An MXFP4 weight: e2m1 code `q` (0..=15) times 2^(e − 127). Exact in f32 for every code and
/// exponent (e = 0 gives a subnormal scale, 2^−127).
pub fn mxfp4_value(q: u8, e: u8) -> f32 {
    let magnitude = E2M1[(q & 7) as usize] as f64 * 2f64.powi(e as i32 - 127);
    (if q & 8 != 0 { -magnitude } else { magnitude }) as f32
}

/// MXFP4 from f32, as gguf-py's quantiser fits it: per group of 32 the exponent that puts the
/// largest magnitude in [4, 8) (e = floor(log2 amax) − 2 + 127), then each weight's nearest code.
fn quantize_mxfp4(rows: usize, k: usize, values: &[f32]) -> PackedMatrix {
    let mut q = vec![0u8; rows * k];
    let mut e = vec![0u8; rows * k / GROUP_SIZE];
    for ((x, qg), eg) in values.chunks_exact(GROUP_SIZE).zip(q.chunks_exact_mut(GROUP_SIZE)).zip(e.iter_mut()) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *eg = if amax > 0.0 { (amax.log2().floor() as i32 - 2 + 127).clamp(1, 254) as u8 } else { 0 };
        for (v, qv) in x.iter().zip(qg.iter_mut()) {
            *qv = (0..16u8).min_by(|&a, &b| (mxfp4_value(a, *eg) - v).abs().total_cmp(&(mxfp4_value(b, *eg) - v).abs())).unwrap_or(0);
        }
    }
    PackedMatrix::mxfp4_from_blocks(rows, k, &q, &e)
}

/// Byte `i` of little-endian words.
fn header_byte(words: &[u32], i: usize) -> u8 {
    (words[i / 4] >> (8 * (i % 4))) as u8
}

/// Q4K/Q5K: the 6-bit (scale, min) of sub-block `j` (0..8) from ggml's 12 packed bytes: the
/// first four sub-blocks use the low 6 bits of bytes 0–3 / 4–7; the last four a nibble of bytes
/// 8–11 plus the spare top 2 bits of bytes 0–3 / 4–7.
pub fn k_scale_min(words: &[u32], j: usize) -> (u8, u8) {
    let b = |i| header_byte(words, i);
    if j < 4 {
        (b(j) & 63, b(j + 4) & 63)
    } else {
        ((b(j + 4) & 0xf) | ((b(j - 4) >> 6) << 4), (b(j + 4) >> 4) | ((b(j) >> 6) << 4))
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

/// K formats from f32: a plain min/max (Q4K/Q5K) or absmax (Q6K) fit per sub-block, then the
/// sub-block scales quantised against the super-block's f16 `d` (and `dmin`). llama.cpp searches
/// for better scales; this converter serves unquantised checkpoints and the kernel tests.
fn quantize_k(dtype: DType, rows: usize, k: usize, values: &[f32]) -> PackedMatrix {
    let mut q = vec![0u8; rows * k];
    let mut headers = Vec::with_capacity(rows * k / SUPER_BLOCK * dtype.super_block_words());
    let steps = |s: f32, d: f32, hi: f32| if d > 0.0 { (s / d).round().clamp(-hi, hi) } else { 0.0 };
    for (x, qb) in values.chunks_exact(SUPER_BLOCK).zip(q.chunks_exact_mut(SUPER_BLOCK)) {
        let mut bytes = [0u8; 16];
        if dtype == DType::Q6K {
            let fits: Vec<f32> = x.chunks_exact(16).map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0).collect();
            let d = round_f16(fits.iter().fold(0f32, |m, &v| m.max(v)) / 127.0);
            for (j, g) in x.chunks_exact(16).enumerate() {
                let sc = steps(fits[j], d, 127.0);
                bytes[j] = sc as i8 as u8;
                for (i, v) in g.iter().enumerate() {
                    qb[16 * j + i] = (steps(*v, d * sc, 32.0).min(31.0) + 32.0) as u8;
                }
            }
            headers.push(f16::from_f32(d).to_bits() as u32);
        } else {
            let levels = if dtype == DType::Q5K { 31.0 } else { 15.0 };
            let fits: Vec<(f32, f32)> = x
                .chunks_exact(GROUP_SIZE)
                .map(|g| {
                    let lo = g.iter().copied().fold(0f32, f32::min);
                    let hi = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    ((hi - lo) / levels, -lo)
                })
                .collect();
            let d = round_f16(fits.iter().fold(0f32, |m, f| m.max(f.0)) / 63.0);
            let dmin = round_f16(fits.iter().fold(0f32, |m, f| m.max(f.1)) / 63.0);
            for (j, g) in x.chunks_exact(GROUP_SIZE).enumerate() {
                let (sc, m) = (steps(fits[j].0, d, 63.0) as u8, steps(fits[j].1, dmin, 63.0) as u8);
                if j < 4 {
                    bytes[j] |= sc;
                    bytes[j + 4] |= m;
                } else {
                    bytes[j + 4] = (sc & 0xf) | (m & 0xf) << 4;
                    bytes[j - 4] |= (sc >> 4) << 6;
                    bytes[j] |= (m >> 4) << 6;
                }
                let offset = dmin * m as f32;
                for (i, v) in g.iter().enumerate() {
                    qb[GROUP_SIZE * j + i] = steps(v + offset, d * sc as f32, levels).max(0.0) as u8;
                }
            }
            headers.push(f16::from_f32(d).to_bits() as u32 | (f16::from_f32(dmin).to_bits() as u32) << 16);
        }
        let words = if dtype == DType::Q6K { 4 } else { 3 };
        headers.extend(bytes.chunks_exact(4).take(words).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    PackedMatrix::k_from_blocks(dtype, rows, k, &q, &headers)
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

    /// The K quantiser keeps every weight within half a step of its sub-block plus the
    /// rounding of the 6/8-bit scales, and the packed words decode as ggml's formula says.
    #[test]
    fn k_formats_round_trip() {
        let k = 512;
        let values: Vec<f32> = (0..3 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0 * if i % 300 < 40 { 0.01 } else { 1.0 }).collect();
        for (dtype, tol) in [(DType::Q4K, 0.25), (DType::Q5K, 0.12), (DType::Q6K, 0.06)] {
            let packed = PackedMatrix::pack(dtype, 3, k, &values);
            assert_eq!(packed.qs.len() * 4, 3 * dtype.qs_row_bytes(k) as usize);
            assert_eq!(packed.scales.len() * 4, 3 * dtype.scale_row_bytes(k) as usize);
            let back = packed.dequantize();
            for (i, (a, b)) in values.iter().zip(&back).enumerate() {
                assert!((a - b).abs() <= tol, "{dtype:?} {i}: {a} vs {b}");
            }
        }
        // Sub-block 5 of a Q4K super-block: scale 0b101101, min 0b010011 split across bytes.
        let mut bytes = [0u8; 12];
        bytes[9] = 0b1101 | 0b0011 << 4;
        bytes[1] = 0b10 << 6;
        bytes[5] = 0b01 << 6;
        let words: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(k_scale_min(&words, 5), (0b101101, 0b010011));
    }

    /// Every code at exponents around 1, at the subnormal end and at the top decodes to OCP's
    /// e2m1 table times 2^(e − 127); the packed words keep codes and exponents where the
    /// kernels look for them (the Q4 nibble order, four exponents to a word).
    #[test]
    fn mxfp4_codes_and_exponents() {
        let fp4 = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];
        for e in [0u8, 1, 120, 127, 128, 200, 254] {
            for (q, want) in fp4.iter().enumerate() {
                let scale = 2f64.powi(e as i32 - 127);
                assert_eq!(mxfp4_value(q as u8, e), (*want as f64 * scale) as f32, "code {q} exponent {e}");
            }
        }
        let (rows, k) = (2, 160); // five groups: exponents padded to two words a row
        let q: Vec<u8> = (0..rows * k).map(|i| (i * 7 % 16) as u8).collect();
        let e: Vec<u8> = (0..rows * k / 32).map(|g| 120 + g as u8).collect();
        let packed = PackedMatrix::mxfp4_from_blocks(rows, k, &q, &e);
        assert_eq!(packed.scales.len() * 4, rows * DType::Mxfp4.scale_row_bytes(k) as usize);
        let back = packed.dequantize();
        for (i, v) in back.iter().enumerate() {
            assert_eq!(*v, mxfp4_value(q[i], e[i / 32]), "weight {i}");
        }
        // The quantiser: values on the grid come back exactly.
        let grid: Vec<f32> = (0..64).map(|i| fp4[i % 16] * 0.25).collect();
        assert_eq!(PackedMatrix::pack(DType::Mxfp4, 1, 64, &grid).dequantize(), grid);
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
