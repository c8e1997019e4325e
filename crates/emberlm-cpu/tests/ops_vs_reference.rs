//! Every CPU op against the f64 CPU reference (`emberlm_core::reference`, which shares no code
//! with these kernels beyond `PackedMatrix::dequantize`) on seeded random data at odd sizes.
//! Bound for dot products: |got − want| ≤ 1e-5 · Σ|w·x| + 1e-6 (f32 rounding over the sum).

use emberlm_core::ops::{Activation, AttentionParams, RopeLayout};
use emberlm_core::{reference, DType, PackedMatrix};
use emberlm_cpu::{ops, CpuDevice, CpuTensor};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn weight(dtype: DType, rows: usize, k: usize, values: &[f32]) -> (CpuTensor, Vec<f32>) {
    let packed = PackedMatrix::pack(dtype, rows, k, values);
    let t = CpuTensor::zeroed("w", &[rows, k], dtype).unwrap();
    t.write_rows(0, &packed).unwrap();
    (t, packed.dequantize())
}

fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * scale.get(i).copied().unwrap_or(1.0) + 1e-6;
        assert!((*g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w} (tolerance {tol:e})");
    }
}

#[test]
fn matvec_and_matmul_every_dtype_odd_sizes() {
    CpuDevice::new(Some(2));
    let mut rng = Rng(7);
    for dtype in DType::ALL {
        let k = if dtype.k_multiple() == 256 { 512 } else { 96 };
        let rows = 37;
        let (w, dense) = weight(dtype, rows, k, &rng.vec(rows * k));
        let bias = rng.vec(rows);
        let b = CpuTensor::from_f32("b", &[rows], &bias).unwrap();
        // Decode: one row of a 3-row x, written at an offset into a wider y.
        let xs = rng.vec(3 * k);
        let x = CpuTensor::from_f32("x", &[3, k], &xs).unwrap();
        let y = CpuTensor::zeroed("y", &[rows + 5], DType::F32).unwrap();
        ops::matvec_into(&w, &x, 2, Some(&b), &y, 5).unwrap();
        let xrow = &xs[2 * k..3 * k];
        let want = reference::matvec(&dense, xrow, Some(&bias), rows);
        let scale = reference::abs_dot(&dense, xrow, rows);
        assert_close(&format!("matvec {}", dtype.name()), &y.f32s()[5..], &want, &scale);
        assert!(y.f32s()[..5].iter().all(|v| *v == 0.0), "matvec {} wrote before its offset", dtype.name());
        // Prefill: m = 7 tokens (not a multiple of the 4-token block) into columns 3.. of rows of rows + 4.
        let m = 7;
        let xm = rng.vec(m * k);
        let x = CpuTensor::from_f32("x", &[m, k], &xm).unwrap();
        let cols = rows + 4;
        let y = CpuTensor::zeroed("y", &[m, cols], DType::F32).unwrap();
        ops::matmul_into(&x, &w, Some(&b), &y, m, cols, 3).unwrap();
        let got = y.f32s();
        for t in 0..m {
            let xt = &xm[t * k..(t + 1) * k];
            let want = reference::matvec(&dense, xt, Some(&bias), rows);
            let scale = reference::abs_dot(&dense, xt, rows);
            assert_close(&format!("matmul {} token {t}", dtype.name()), &got[t * cols + 3..t * cols + 3 + rows], &want, &scale);
        }
    }
}

#[test]
fn embedding_rows_decode_exactly() {
    let mut rng = Rng(3);
    for dtype in DType::ALL {
        let k = if dtype.k_multiple() == 256 { 256 } else { 64 };
        let (table, dense) = weight(dtype, 11, k, &rng.vec(11 * k));
        let ids = CpuTensor::zeroed("ids", &[3], DType::F32).unwrap();
        ids.words_mut().copy_from_slice(&[10, 0, 4]);
        let out = CpuTensor::zeroed("out", &[3, k], DType::F32).unwrap();
        ops::embedding(&ids, &table, &out, 3, 0.5).unwrap();
        for (t, id) in [10usize, 0, 4].into_iter().enumerate() {
            let want: Vec<f64> = dense[id * k..(id + 1) * k].iter().map(|v| *v as f64 * 0.5).collect();
            assert_close(&format!("embedding {}", dtype.name()), &out.f32s()[t * k..(t + 1) * k], &want, &[]);
        }
        ids.words_mut()[1] = 11;
        assert!(ops::embedding(&ids, &table, &out, 3, 1.0).is_err(), "an id past the table is an error");
    }
}

#[test]
fn norms_rope_activation_softcap_argmax() {
    let mut rng = Rng(11);
    let (rows, cols) = (3, 45);
    let xs = rng.vec(rows * cols);
    let rs = rng.vec(rows * cols);
    let ws = rng.vec(cols);
    let (x, r, w) = (
        CpuTensor::from_f32("x", &[rows, cols], &xs).unwrap(),
        CpuTensor::from_f32("r", &[rows, cols], &rs).unwrap(),
        CpuTensor::from_f32("w", &[cols], &ws).unwrap(),
    );
    let out = CpuTensor::zeroed("out", &[rows, cols], DType::F32).unwrap();
    ops::rms_norm(&x, &w, Some(&r), &out, rows, 1e-6, 1.0).unwrap();
    let (want, h) = reference::rms_norm(&xs, &ws, Some(&rs), 1e-6, 1.0);
    assert_close("rms_norm", &out.f32s(), &want, &[]);
    assert_close("rms_norm residual", &r.f32s(), &h, &[]);
    assert!(ops::rms_norm(&x, &w, None, &x, rows, 1e-6, 0.0).is_err(), "aliasing input and output is an error, not a panic");

    // Heads 1..3 of rows of 4 heads of 10, weight offset 0.
    let (d, stride) = (10, 40);
    let qs = rng.vec(rows * stride);
    let hw = rng.vec(d);
    let q = CpuTensor::from_f32("q", &[rows, stride], &qs).unwrap();
    ops::head_rms_norm(&q, &CpuTensor::from_f32("hw", &[d], &hw).unwrap(), rows, 2, 1, stride, 1e-5, 0.0).unwrap();
    assert_close("head_rms_norm", &q.f32s(), &reference::head_rms_norm(&qs, &hw, 2, 1, stride, 1e-5, 0.0), &[]);

    for layout in [RopeLayout::Neox, RopeLayout::Interleaved] {
        let rot = 6; // partial rotary: 6 of 10 dimensions
        let inv = emberlm_core::rope_table::inv_freq(rot, 10_000.0, emberlm_core::rope_table::RopeScaling::None);
        let table = emberlm_core::rope_table::cos_sin(&inv, 16, 1.0);
        let q = CpuTensor::from_f32("q", &[rows, stride], &qs).unwrap();
        ops::rope(&q, &table, rot, layout, rows, 3, d, 1, stride, 5).unwrap();
        assert_close("rope", &q.f32s(), &reference::rope(&qs, &table, rot, layout, rows, 3, d, 1, stride, 5), &[]);
        assert!(ops::rope(&q, &table, rot, layout, rows, 3, d, 1, stride, 14).is_err(), "positions past the table");
    }

    let inter = 23;
    let gu = rng.vec(rows * 2 * inter).iter().map(|v| v * 4.0).collect::<Vec<_>>();
    for act in [Activation::Silu, Activation::GeluTanh] {
        let out = CpuTensor::zeroed("act", &[rows, inter], DType::F32).unwrap();
        ops::gated_activation(&CpuTensor::from_f32("gu", &[rows, 2 * inter], &gu).unwrap(), &out, rows, inter, act).unwrap();
        assert_close("gated_activation", &out.f32s(), &reference::gated_activation(&gu, inter, act), &[]);
    }

    let mut logits = rng.vec(33).iter().map(|v| v * 50.0).collect::<Vec<_>>();
    let t = CpuTensor::from_f32("l", &[33], &logits).unwrap();
    ops::logit_softcap(&t, 33, 30.0).unwrap();
    assert_close("logit_softcap", &t.f32s(), &reference::logit_softcap(&logits, 30.0), &[]);
    logits[3] = f32::NAN;
    logits[20] = 1e9;
    logits[25] = 1e9;
    let out = CpuTensor::zeroed("i", &[1], DType::F32).unwrap();
    ops::argmax(&CpuTensor::from_f32("l", &[33], &logits).unwrap(), &out, 1, 33).unwrap();
    assert_eq!(out.words()[0], reference::argmax(&logits));
    assert_eq!(out.words()[0], 20, "lowest index on ties, NaN skipped");
}

#[test]
fn attention_prefill_and_decode_with_window_softcap_gqa() {
    CpuDevice::new(Some(2));
    let mut rng = Rng(5);
    let (hq, hkv, d, s_max) = (6, 2, 12, 40);
    for (tokens, pos0, window, softcap) in [(7, 0, 0, 0.0), (1, 30, 0, 0.0), (5, 20, 8, 0.0), (3, 9, 0, 20.0)] {
        let stride = (hq + 2 * hkv) * d + 4;
        let q = rng.vec(tokens * stride);
        let k = rng.vec(hkv * s_max * d);
        let v = rng.vec(hkv * s_max * d);
        let p = AttentionParams { tokens, heads_q: hq, heads_kv: hkv, head_dim: d, pos0, window, scale: 0.3, softcap, q_stride: stride };
        let out = CpuTensor::zeroed("o", &[tokens, hq * d], DType::F32).unwrap();
        let t = |n: &str, x: &[f32]| CpuTensor::from_f32(n, &[x.len()], x).unwrap();
        ops::attention(&t("q", &q), &t("k", &k), &t("v", &v), &out, &p).unwrap();
        let shape = reference::AttentionShape { tokens, hq, hkv, d, s_max, pos0, window, scale: 0.3, softcap: softcap as f64, q_stride: stride };
        assert_close(&format!("attention t={tokens} pos0={pos0}"), &out.f32s(), &reference::attention(&q, &k, &v, &shape), &[]);
    }
}
