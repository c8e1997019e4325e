//! ggml tensor types as stored in GGUF files: block layouts, dequantisation to f32 (the
//! reference, tested against the `gguf` Python package), and loading into emberlm's GPU
//! formats. Where our format holds the file's values exactly, we repack (Q4_0/Q4_1 → q4,
//! Q8_0/Q5_0 → q8, Q4_K/Q5_K/Q6_K → q4k/q5k/q6k, F16 → f16); otherwise the rows are dequantised
//! to f32, which is exact too but larger (Q5_1, BF16).

use emberlm_core::dtype::{DType, PackedMatrix};
use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// OCP microscaling FP4 (GPT-OSS's experts): an e8m0 exponent byte, then 16 bytes of e2m1
    /// codes, value j in the low nibble of byte j and value j + 16 in the high one.
    MXFP4,
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            39 => Self::MXFP4,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::BF16 => "BF16",
            Self::MXFP4 => "MXFP4",
        }
    }

    /// (weights per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::MXFP4 => (32, 17),
        }
    }

    /// Bytes of `n` weights, which must be whole blocks.
    pub fn size_of(self, n: u64) -> Result<u64, String> {
        let (bw, bb) = self.block();
        if n % bw != 0 {
            return Err(format!("{n} weights are not whole {} blocks of {bw}", self.name()));
        }
        (n / bw).checked_mul(bb).ok_or_else(|| "size overflows".to_string())
    }

    pub fn can_dequantize(self) -> bool {
        !matches!(self, Self::Q8_1 | Self::Q2K | Self::Q3K | Self::Q8K)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K/Q5_K: the 6-bit (scale, min) of sub-block `j` packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)) as f32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32)
    }
}

/// The unscaled values of one K-quant block in weight order: 4 bits (Q4_K), 5 (Q5_K) or 6 (Q6_K,
/// still offset by 32). ggml interleaves them: each 32 bytes of `ql` hold two 32-weight runs
/// (low nibbles, then high nibbles), and the high bits come from `qh` bit planes.
fn k_block_values(ty: GgmlType, b: &[u8], q: &mut [u8; 256]) {
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let (qh, ql) = if ty == GgmlType::Q5K { (&b[16..48], &b[48..176]) } else { (&[][..], &b[16..144]) };
            for (chunk, ql) in ql.chunks_exact(32).enumerate() {
                for l in 0..32 {
                    let (h1, h2) = if qh.is_empty() { (0, 0) } else { ((qh[l] >> (2 * chunk)) & 1, (qh[l] >> (2 * chunk + 1)) & 1) };
                    q[64 * chunk + l] = (ql[l] & 0xf) | h1 << 4;
                    q[64 * chunk + 32 + l] = (ql[l] >> 4) | h2 << 4;
                }
            }
        }
        GgmlType::Q6K => {
            for half in 0..2 {
                let (ql, qh, q) = (&b[64 * half..64 * half + 64], &b[128 + 32 * half..128 + 32 * half + 32], &mut q[128 * half..]);
                for l in 0..32 {
                    q[l] = (ql[l] & 0xf) | (qh[l] & 3) << 4;
                    q[l + 32] = (ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4;
                    q[l + 64] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                    q[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                }
            }
        }
        _ => unreachable!("not a K-quant: {ty:?}"),
    }
}

/// An MXFP4 block's 32 e2m1 codes in weight order and its e8m0 exponent. ggml scales its
/// doubled code values by 2^(e − 128), which is e2m1 · 2^(e − 127).
fn mxfp4_block(b: &[u8]) -> ([u8; 32], u8) {
    let mut codes = [0u8; 32];
    for j in 0..16 {
        codes[j] = b[1 + j] & 0xf;
        codes[j + 16] = b[1 + j] >> 4;
    }
    (codes, b[0])
}

/// Dequantises whole blocks of `ty` from `data` into `out` (out.len() weights).
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (bw, bb) = ty.block();
    let (bw, bb) = (bw as usize, bb as usize);
    if out.len() % bw != 0 || data.len() != out.len() / bw * bb {
        return Err(format!("{} bytes do not hold {} {} weights", data.len(), out.len(), ty.name()));
    }
    for (b, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(bw)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => y[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            GgmlType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xf) as f32 - 8.0) * d;
                    y[j + 16] = ((b[2 + j] >> 4) as f32 - 8.0) * d;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xf) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (d, m, qh, qs) = if ty == GgmlType::Q5_0 {
                    (f16_at(b, 0), -16.0 * f16_at(b, 0), u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22])
                } else {
                    (f16_at(b, 0), f16_at(b, 2), u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24])
                };
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    let q0 = (qs[j] as u32 & 0xf) | h0;
                    let q1 = (qs[j] as u32 >> 4) | h1;
                    if ty == GgmlType::Q5_0 {
                        y[j] = (q0 as f32 - 16.0) * d;
                        y[j + 16] = (q1 as f32 - 16.0) * d;
                    } else {
                        y[j] = q0 as f32 * d + m;
                        y[j + 16] = q1 as f32 * d + m;
                    }
                }
            }
            GgmlType::Q8_0 => {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = b[2 + j] as i8 as f32 * d;
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let mut q = [0u8; 256];
                k_block_values(ty, b, &mut q);
                for (i, (y, q)) in y.iter_mut().zip(q).enumerate() {
                    let (sc, m) = scale_min_k4(i / 32, &b[4..16]);
                    *y = d * sc * q as f32 - dmin * m;
                }
            }
            GgmlType::Q6K => {
                let d = f16_at(b, 208);
                let mut q = [0u8; 256];
                k_block_values(ty, b, &mut q);
                for (i, (y, q)) in y.iter_mut().zip(q).enumerate() {
                    *y = d * (b[192 + i / 16] as i8) as f32 * (q as i32 - 32) as f32;
                }
            }
            GgmlType::MXFP4 => {
                let (codes, e) = mxfp4_block(b);
                for (y, q) in y.iter_mut().zip(codes) {
                    *y = emberlm_core::dtype::mxfp4_value(q, e);
                }
            }
            GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => {
                return Err(format!("dequantising {} is not supported yet", ty.name()));
            }
        }
    }
    Ok(())
}

/// The dtype a GGUF tensor is loaded as when held exactly: the file's own precision, nothing lost.
pub fn exact_dtype(ty: GgmlType) -> DType {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => DType::Q4,
        GgmlType::Q8_0 | GgmlType::Q5_0 => DType::Q8,
        GgmlType::Q4K => DType::Q4K,
        GgmlType::Q5K => DType::Q5K,
        GgmlType::Q6K => DType::Q6K,
        GgmlType::MXFP4 => DType::Mxfp4,
        GgmlType::F16 => DType::F16,
        _ => DType::F32,
    }
}

/// Packs `rows` rows of a `ty` tensor with row length `k` into `dtype`. When `dtype` is
/// `exact_dtype(ty)`, the file's values are kept bit for bit; otherwise they are dequantised
/// and re-quantised (a conversion the caller asked for).
pub fn pack_rows(ty: GgmlType, data: &[u8], rows: usize, k: usize, dtype: DType) -> Result<PackedMatrix, String> {
    let (bw, bb) = ty.block();
    let blocks = rows * k / bw as usize;
    if data.len() != blocks * bb as usize {
        return Err(format!("{} bytes do not hold {rows} rows of {k} {} weights", data.len(), ty.name()));
    }
    let bb = bb as usize;
    match (ty, dtype) {
        (GgmlType::Q4_0 | GgmlType::Q4_1, DType::Q4) => {
            let mut q = vec![0u8; rows * k];
            let mut sm = Vec::with_capacity(blocks);
            for (i, b) in data.chunks_exact(bb).enumerate() {
                let (d_bits, qs) = (u16::from_le_bytes([b[0], b[1]]), if ty == GgmlType::Q4_0 { &b[2..18] } else { &b[4..20] });
                let min_bits = if ty == GgmlType::Q4_0 {
                    // d·(q − 8) = q·d + (−8d); −8d is exact in f16 (a power-of-two multiple).
                    f16::from_f32(-8.0 * f16::from_bits(d_bits).to_f32()).to_bits()
                } else {
                    u16::from_le_bytes([b[2], b[3]])
                };
                sm.push((d_bits, min_bits));
                for j in 0..16 {
                    q[32 * i + j] = qs[j] & 0xf;
                    q[32 * i + j + 16] = qs[j] >> 4;
                }
            }
            Ok(PackedMatrix::q4_from_groups(rows, k, &q, &sm))
        }
        (GgmlType::Q8_0 | GgmlType::Q5_0, DType::Q8) => {
            let mut q = vec![0i8; rows * k];
            let mut scales = Vec::with_capacity(blocks);
            for (i, b) in data.chunks_exact(bb).enumerate() {
                scales.push(u16::from_le_bytes([b[0], b[1]]));
                if ty == GgmlType::Q8_0 {
                    for j in 0..32 {
                        q[32 * i + j] = b[2 + j] as i8;
                    }
                } else {
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    for j in 0..16 {
                        q[32 * i + j] = (((b[6 + j] as u32 & 0xf) | (((qh >> j) << 4) & 0x10)) as i32 - 16) as i8;
                        q[32 * i + j + 16] = (((b[6 + j] as u32 >> 4) | ((qh >> (j + 12)) & 0x10)) as i32 - 16) as i8;
                    }
                }
            }
            Ok(PackedMatrix::q8_from_groups(rows, k, &q, &scales))
        }
        (GgmlType::Q4K, DType::Q4K) | (GgmlType::Q5K, DType::Q5K) | (GgmlType::Q6K, DType::Q6K) => {
            let mut q = vec![0u8; rows * k];
            let mut headers = Vec::with_capacity(blocks * dtype.super_block_words());
            let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            for (b, q) in data.chunks_exact(bb).zip(q.chunks_exact_mut(256)) {
                k_block_values(ty, b, q.try_into().expect("256 weights"));
                if ty == GgmlType::Q6K {
                    // Ours: d first (padded to a word), then the 16 scale bytes as they are.
                    headers.push(u16::from_le_bytes([b[208], b[209]]) as u32);
                    headers.extend((0..4).map(|i| word(b, 192 + 4 * i)));
                } else {
                    // d, dmin and the 12 scale bytes are already our four header words.
                    headers.extend((0..4).map(|i| word(b, 4 * i)));
                }
            }
            Ok(PackedMatrix::k_from_blocks(dtype, rows, k, &q, &headers))
        }
        (GgmlType::MXFP4, DType::Mxfp4) => {
            let mut q = vec![0u8; rows * k];
            let mut e = Vec::with_capacity(blocks);
            for (b, q) in data.chunks_exact(bb).zip(q.chunks_exact_mut(32)) {
                let (codes, exponent) = mxfp4_block(b);
                q.copy_from_slice(&codes);
                e.push(exponent);
            }
            Ok(PackedMatrix::mxfp4_from_blocks(rows, k, &q, &e))
        }
        (GgmlType::F16, DType::F16) => {
            let qs = data.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
            Ok(PackedMatrix { dtype: DType::F16, rows, k, qs, scales: Vec::new() })
        }
        _ => {
            if !ty.can_dequantize() {
                return Err(format!("GGUF type {} is not supported yet", ty.name()));
            }
            let mut values = vec![0f32; rows * k];
            dequantize(ty, data, &mut values)?;
            if k % dtype.k_multiple() != 0 {
                return Err(format!("row length {k} does not fit {}", dtype.name()));
            }
            Ok(PackedMatrix::pack(dtype, rows, k, &values))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repacking is exact: the packed matrix dequantises to the same values as ggml's formula.
    #[test]
    fn repacked_blocks_dequantise_like_ggml() {
        let mut seed = 12345u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        for (ty, dtype) in [(GgmlType::Q4_0, DType::Q4), (GgmlType::Q4_1, DType::Q4), (GgmlType::Q8_0, DType::Q8), (GgmlType::Q5_0, DType::Q8)] {
            let (rows, k) = (3, 64);
            let (_, bb) = ty.block();
            let mut data: Vec<u8> = (0..rows * k / 32 * bb as usize).map(|_| next()).collect();
            // Keep the f16 scales finite and modest.
            for b in data.chunks_exact_mut(bb as usize) {
                b[1] = 0x2c;
                if matches!(ty, GgmlType::Q4_1) {
                    b[3] = 0xac;
                }
            }
            let mut want = vec![0f32; rows * k];
            dequantize(ty, &data, &mut want).unwrap();
            let got = pack_rows(ty, &data, rows, k, dtype).unwrap().dequantize();
            assert_eq!(got, want, "{ty:?}");
        }
    }
}
