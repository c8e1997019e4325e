//! Every CPU op against the f64 reference (`emberlm_core::reference`, which shares no code
//! with these kernels beyond `PackedMatrix::dequantize`) on seeded random data at odd sizes.
//! Shared by the native tests (`tests/ops_vs_reference.rs`) and the wasm self-test
//! (`cpuSelfTest`, run in Chromium and Node), so the SIMD paths of each target are checked
//! where they run. Bound for dot products: |got − want| ≤ 1e-5 · Σ|w·x| + 1e-6 (f32
//! rounding over the sum); other ops 1e-6 absolute on O(1) values.

use emberlm_core::ops::{
    Activation, AttentionParams, ConvStyle, GroupScore, LatentRopeParams, MoeRouteParams, RopeLayout, RouterScoring, Routing, ShortConvParams, SsmScanParams,
};
use emberlm_core::{reference, DType, PackedMatrix};

use crate::int8::{Activations, Int8Activations};
use crate::matvec::RowKernels;
use crate::{moe, ops, CpuTensor};

/// A check's outcome: the first mismatch (or op error), named.
pub type Check = Result<(), Box<dyn std::error::Error>>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*).into());
        }
    };
}

/// Every check, by name, once per set of row kernels this CPU can run (AVX-512, AVX2,
/// simd128, portable), each named by its level.
pub fn run_all() -> Vec<(String, Check)> {
    let checks: [(&str, fn() -> Check); 10] = [
        ("matvec and matmul, every dtype, odd sizes", matvec_and_matmul_every_dtype_odd_sizes),
        ("matvec and matmul with 8-bit activations (Q4, Q8)", matvec_and_matmul_with_8_bit_activations),
        ("embedding rows of every dtype", embedding_rows_decode_exactly),
        ("rms_norm, head_rms_norm, rope, activations, softcap, argmax", norms_rope_activation_softcap_argmax),
        ("attention: prefill, decode, window, soft-cap, GQA", attention_prefill_and_decode_with_window_softcap_gqa),
        ("short_conv: prefill, decode, checkpoint, from zeros", short_conv_with_state_slots),
        ("ssm_scan: prefill, decode, checkpoint, groups", ssm_scan_with_state_slots),
        ("rms_norm in groups", group_rms_norm_parts),
        ("mixture of experts: route, decode, prefill, biases, every dtype", mixture_of_experts),
        ("MLA: per-head projections, every dtype; latent cache write", multi_head_latent_attention_ops),
    ];
    let mut out = Vec::new();
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    out.push(("simd128: f16 scales four at a time, every value".to_string(), f16_scales_four_at_a_time()));
    for kernels in RowKernels::available() {
        RowKernels::force(Some(kernels));
        out.extend(checks.iter().map(|(name, check)| (format!("{}: {name}", kernels.level), check())));
    }
    RowKernels::force(None);
    out
}

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

fn weight(dtype: DType, rows: usize, k: usize, values: &[f32]) -> Result<(CpuTensor, Vec<f32>), Box<dyn std::error::Error>> {
    let packed = PackedMatrix::pack(dtype, rows, k, values);
    let t = CpuTensor::zeroed("w", &[rows, k], dtype)?;
    t.write_rows(0, &packed)?;
    Ok((t, packed.dequantize()))
}

fn close(what: &str, got: &[f32], want: &[f64], scale: &[f64]) -> Check {
    ensure!(got.len() == want.len(), "{what}: {} values, want {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * scale.get(i).copied().unwrap_or(1.0) + 1e-6;
        ensure!((*g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w} (tolerance {tol:e})");
    }
    Ok(())
}

pub fn matvec_and_matmul_every_dtype_odd_sizes() -> Check {
    matvec_and_matmul(Activations::Exact)
}

/// With 8-bit activations the kernels compute Σ w̃·x̃ (dequantised weights against dequantised
/// activations): the reference gets x̃, and x̃ is checked against x (each value within half a
/// step of 8-bit rounding).
pub fn matvec_and_matmul_with_8_bit_activations() -> Check {
    matvec_and_matmul(Activations::Int8)
}

fn matvec_and_matmul(activations: Activations) -> Check {
    let mut rng = Rng(7);
    // What the reference multiplies by: x, or x rounded as the kernels round it.
    let seen = |rounds: bool, dtype: DType, x: &[f32]| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        if !rounds {
            return Ok(x.to_vec());
        }
        let rounded = Int8Activations::new(x, RowKernels::get().int8_layout(dtype)).dequantize();
        for (group, (xg, rg)) in x.chunks(32).zip(rounded.chunks(32)).enumerate() {
            let step = xg.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in xg.iter().zip(rg) {
                ensure!((a - b).abs() <= step * 0.5001, "8-bit activations of group {group}: {b} for {a} (step {step})");
            }
        }
        Ok(rounded)
    };
    for dtype in DType::ALL {
        // Q4/Q8 at 608: 19 groups, two chunks of 16 and odd tails for the kernels that take
        // 2, 4 or 16 groups at a time.
        let k = if dtype.k_multiple() == 256 { 512 } else { 608 };
        let rows = 37;
        let (w, dense) = weight(dtype, rows, k, &rng.vec(rows * k))?;
        let bias = rng.vec(rows);
        let b = CpuTensor::from_f32("b", &[rows], &bias)?;
        let name = format!("{} ({activations:?} activations)", dtype.name());
        // Decode: one row of a 3-row x, written at an offset into a wider y.
        let xs = rng.vec(3 * k);
        let x = CpuTensor::from_f32("x", &[3, k], &xs)?;
        let y = CpuTensor::zeroed("y", &[rows + 5], DType::F32)?;
        ops::matvec_into(&w, &x, 2, Some(&b), &y, 5, activations)?;
        let xrow = seen(activations.rounds(dtype), dtype, &xs[2 * k..3 * k])?;
        let want = reference::matvec(&dense, &xrow, Some(&bias), rows);
        let scale = reference::abs_dot(&dense, &xrow, rows);
        close(&format!("matvec {name}"), &y.f32s()[5..], &want, &scale)?;
        ensure!(y.f32s()[..5].iter().all(|v| *v == 0.0), "matvec {name} wrote before its offset");
        // Prefill: m = 13 tokens (tiles of 8, 4 and 1 tokens; not a multiple of the 4-token
        // block) into columns 3.. of rows of rows + 4.
        let m = 13;
        let xm = rng.vec(m * k);
        let x = CpuTensor::from_f32("x", &[m, k], &xm)?;
        let cols = rows + 4;
        let y = CpuTensor::zeroed("y", &[m, cols], DType::F32)?;
        ops::matmul_into(&x, &w, Some(&b), &y, m, cols, 3, activations)?;
        let got = y.f32s();
        for t in 0..m {
            let xt = seen(ops::matmul_rounds(dtype, activations), dtype, &xm[t * k..(t + 1) * k])?;
            let want = reference::matvec(&dense, &xt, Some(&bias), rows);
            let scale = reference::abs_dot(&dense, &xt, rows);
            close(&format!("matmul {name} token {t}"), &got[t * cols + 3..t * cols + 3 + rows], &want, &scale)?;
        }
    }
    Ok(())
}

/// The wasm kernels convert four f16 weight scales at once: bit for bit what the scalar
/// conversion (itself checked against the `half` crate natively) gives, on all 65,536 values.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub fn f16_scales_four_at_a_time() -> Check {
    for first in (0..=u16::MAX as u32).step_by(4) {
        let h = [first, first + 1, first + 2, first + 3];
        for (bits, got) in h.iter().zip(crate::wasm::f16s_to_f32(h)) {
            let want = crate::matvec::f16_to_f32(*bits);
            ensure!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "f16 {bits:#06x}: {got} vs {want}");
        }
    }
    Ok(())
}

pub fn embedding_rows_decode_exactly() -> Check {
    let mut rng = Rng(3);
    for dtype in DType::ALL {
        let k = if dtype.k_multiple() == 256 { 256 } else { 64 };
        let (table, dense) = weight(dtype, 11, k, &rng.vec(11 * k))?;
        let ids = CpuTensor::zeroed("ids", &[3], DType::F32)?;
        ids.words_mut().copy_from_slice(&[10, 0, 4]);
        let out = CpuTensor::zeroed("out", &[3, k], DType::F32)?;
        ops::embedding(&ids, &table, &out, 3, 0.5)?;
        for (t, id) in [10usize, 0, 4].into_iter().enumerate() {
            let want: Vec<f64> = dense[id * k..(id + 1) * k].iter().map(|v| *v as f64 * 0.5).collect();
            close(&format!("embedding {}", dtype.name()), &out.f32s()[t * k..(t + 1) * k], &want, &[])?;
        }
        ids.words_mut()[1] = 11;
        ensure!(ops::embedding(&ids, &table, &out, 3, 1.0).is_err(), "an id past the table is an error");
    }
    Ok(())
}

pub fn norms_rope_activation_softcap_argmax() -> Check {
    let mut rng = Rng(11);
    let (rows, cols) = (3, 45);
    let xs = rng.vec(rows * cols);
    let rs = rng.vec(rows * cols);
    let ws = rng.vec(cols);
    let (x, r, w) = (CpuTensor::from_f32("x", &[rows, cols], &xs)?, CpuTensor::from_f32("r", &[rows, cols], &rs)?, CpuTensor::from_f32("w", &[cols], &ws)?);
    let out = CpuTensor::zeroed("out", &[rows, cols], DType::F32)?;
    ops::rms_norm(&x, &w, Some((&r, 0.5)), &out, rows, 1e-6, 1.0)?;
    let (want, h) = reference::rms_norm(&xs, &ws, Some((&rs, 0.5)), 1e-6, 1.0);
    close("rms_norm", &out.f32s(), &want, &[])?;
    close("rms_norm residual", &r.f32s(), &h, &[])?;
    ensure!(ops::rms_norm(&x, &w, None, &x, rows, 1e-6, 0.0).is_err(), "aliasing input and output is an error, not a panic");

    // Heads 1..3 of rows of 4 heads of 10, weight offset 0.
    let (d, stride) = (10, 40);
    let qs = rng.vec(rows * stride);
    let hw = rng.vec(d);
    let q = CpuTensor::from_f32("q", &[rows, stride], &qs)?;
    ops::head_rms_norm(&q, &CpuTensor::from_f32("hw", &[d], &hw)?, rows, 2, d, stride, 1e-5, 0.0)?;
    close("head_rms_norm", &q.f32s(), &reference::head_rms_norm(&qs, &hw, 2, d, stride, 1e-5, 0.0), &[])?;

    for layout in [RopeLayout::Neox, RopeLayout::Interleaved] {
        let rot = 6; // partial rotary: 6 of 10 dimensions
        let inv = emberlm_core::rope_table::inv_freq(rot, 10_000.0, emberlm_core::rope_table::RopeScaling::None);
        let table = emberlm_core::rope_table::cos_sin(&inv, 16, 1.0);
        let q = CpuTensor::from_f32("q", &[rows, stride], &qs)?;
        ops::rope(&q, &table, rot, layout, rows, 3, d, 1, stride, 5)?;
        close("rope", &q.f32s(), &reference::rope(&qs, &table, rot, layout, rows, 3, d, 1, stride, 5), &[])?;
        ensure!(ops::rope(&q, &table, rot, layout, rows, 3, d, 1, stride, 14).is_err(), "positions past the table");
    }

    // 300 rows of 23: split over threads in the middle of a row (parts of 4096 values), and
    // gate values far into exp's clamped range.
    let (act_rows, inter) = (300, 23);
    let mut gu = rng.vec(act_rows * 2 * inter).iter().map(|v| v * 4.0).collect::<Vec<_>>();
    gu[5] = 95.0;
    gu[7] = -95.0;
    gu[2 * inter + 1] = -30.0;
    for act in [Activation::Silu, Activation::GeluTanh, Activation::SwigluOai { alpha: 1.702, limit: 7.0 }] {
        let out = CpuTensor::zeroed("act", &[act_rows, inter], DType::F32)?;
        ops::gated_activation(&CpuTensor::from_f32("gu", &[act_rows, 2 * inter], &gu)?, &out, act_rows, inter, act)?;
        let want = reference::gated_activation(&gu, inter, act);
        // Relative: f32 itself rounds 337.2 to within 2e-5.
        let scale: Vec<f64> = want.iter().map(|w| w.abs().max(1.0)).collect();
        close("gated_activation", &out.f32s(), &want, &scale)?;
    }

    let mut logits = rng.vec(33).iter().map(|v| v * 50.0).collect::<Vec<_>>();
    let t = CpuTensor::from_f32("l", &[33], &logits)?;
    ops::logit_softcap(&t, 33, 30.0)?;
    close("logit_softcap", &t.f32s(), &reference::logit_softcap(&logits, 30.0), &[])?;
    logits[3] = f32::NAN;
    logits[20] = 1e9;
    logits[25] = 1e9;
    let out = CpuTensor::zeroed("i", &[1], DType::F32)?;
    ops::argmax(&CpuTensor::from_f32("l", &[33], &logits)?, None, &out, 1, 33)?;
    ensure!(out.words()[0] == reference::argmax(&logits), "argmax {} vs the reference's {}", out.words()[0], reference::argmax(&logits));
    ensure!(out.words()[0] == 20, "argmax: lowest index on ties, NaN skipped (got {})", out.words()[0]);
    // A grammar mask: the two best columns and every third ruled out, then every column.
    for allowed in [(0..33).map(|i| i != 20 && i != 25 && i % 3 != 0).collect::<Vec<_>>(), vec![false; 33]] {
        let mask = CpuTensor::zeroed("mask", &[2], DType::F32)?;
        mask.words_mut().copy_from_slice(&emberlm_core::ops::mask_of(&allowed));
        ops::argmax(&CpuTensor::from_f32("l", &[33], &logits)?, Some(&mask), &out, 1, 33)?;
        let want = reference::masked_argmax(&logits, &allowed);
        ensure!(out.words()[0] == want, "masked argmax {} vs the reference's {want}", out.words()[0]);
    }
    Ok(())
}

pub fn attention_prefill_and_decode_with_window_softcap_gqa() -> Check {
    let mut rng = Rng(5);
    let (hq, hkv, s_max) = (6, 2, 40);
    // Head sizes below, across and at whole chunks of the prefill's value sums (16 floats).
    for d in [12, 40, 64] {
        // The last two with GPT-OSS's sinks: prefill in a window, and decode.
        for (i, (tokens, pos0, window, softcap, causal)) in [
            (7, 0, 0, 0.0, true),
            (1, 30, 0, 0.0, true),
            (5, 20, 8, 0.0, true),
            (3, 9, 0, 20.0, true),
            (9, 0, 0, 0.0, false),
            (12, 0, 6, 0.0, false),
            (6, 10, 8, 0.0, true),
            (1, 30, 0, 0.0, true),
        ]
        .into_iter()
        .enumerate()
        {
            let sinks = (i >= 6).then(|| rng.vec(hq).iter().map(|v| 2.0 * v).collect::<Vec<f32>>());
            let stride = (hq + 2 * hkv) * d + 4;
            let q = rng.vec(tokens * stride);
            let k = rng.vec(hkv * s_max * d);
            let v = rng.vec(hkv * s_max * d);
            let p = AttentionParams { tokens, heads_q: hq, heads_kv: hkv, head_dim: d, pos0, window, causal, scale: 0.3, softcap, q_stride: stride };
            let out = CpuTensor::zeroed("o", &[tokens, hq * d], DType::F32)?;
            let t = |n: &str, x: &[f32]| CpuTensor::from_f32(n, &[x.len()], x);
            let sinks_t = sinks.as_deref().map(|s| t("sinks", s)).transpose()?;
            ops::attention(&t("q", &q)?, &t("k", &k)?, &t("v", &v)?, sinks_t.as_ref(), &out, &p)?;
            let shape = reference::AttentionShape { tokens, hq, hkv, d, s_max, pos0, window, causal, scale: 0.3, softcap: softcap as f64, q_stride: stride };
            let want = reference::attention_with_sinks(&q, &k, &v, &shape, sinks.as_deref());
            close(&format!("attention d={d} t={tokens} pos0={pos0} causal={causal} sinks={}", sinks.is_some()), &out.f32s(), &want, &[])?;
        }
    }
    Ok(())
}

/// The rolling state through its slots: slot 1 is the source, slot 0 the destination, slot 2 the
/// checkpoint; the states are copied inputs, so they must match exactly.
pub fn short_conv_with_state_slots() -> Check {
    let mut rng = Rng(7);
    let ch = 37;
    let cases = [(1, 3, true, false), (2, 3, true, true), (9, 3, false, true), (4, 8, true, false)];
    for style in [ConvStyle::GatedBcx, ConvStyle::Silu] {
        for (tokens, kernel, from_state, bias) in cases {
            let slot = (kernel - 1) * ch;
            let mut p = ShortConvParams {
                tokens,
                channels: ch,
                kernel,
                style,
                in_stride: 0,
                in_offset: 2,
                src_slot: from_state.then_some(1),
                dst_slot: 0,
                snap_slot: Some(2),
            };
            p.in_stride = p.in_width() + 3;
            let (input, w, b, st) = (rng.vec(tokens * p.in_stride), rng.vec(ch * kernel), rng.vec(ch), rng.vec(3 * slot));
            let state = CpuTensor::from_f32("state", &[3 * slot], &st)?;
            let out = CpuTensor::zeroed("out", &[tokens, ch], DType::F32)?;
            let t = |n: &str, x: &[f32]| CpuTensor::from_f32(n, &[x.len()], x);
            let bias_t = t("bias", &b)?;
            ops::short_conv(&t("input", &input)?, &t("w", &w)?, bias.then_some(&bias_t), &state, &out, &p)?;
            let (want, after, before_last) = reference::short_conv(&input, &w, bias.then_some(&b[..]), from_state.then(|| &st[slot..2 * slot]), &p);
            let what = format!("short_conv {style:?} t={tokens} kernel={kernel}");
            close(&what, &out.f32s(), &want, &[])?;
            let got = state.f32s();
            ensure!(got[..slot] == after[..], "{what}: the state after the step differs");
            ensure!(got[slot..2 * slot] == st[slot..2 * slot], "{what}: the source slot changed");
            ensure!(got[2 * slot..] == before_last[..], "{what}: the checkpoint differs");
        }
    }
    Ok(())
}

/// Mamba2's scan against the f64 recurrence: outputs scaled by their terms' magnitudes, the
/// state after the step, the checkpoint (several tokens) and the untouched source slot.
pub fn ssm_scan_with_state_slots() -> Check {
    let mut rng = Rng(11);
    for (tokens, heads, head_dim, state_n, groups, from_state) in
        [(1, 4, 8, 16, 2, true), (1, 2, 8, 4, 1, false), (9, 4, 6, 8, 2, true), (20, 3, 5, 7, 1, false)]
    {
        let inner = heads * head_dim;
        let p = SsmScanParams {
            tokens,
            heads,
            head_dim,
            state: state_n,
            groups,
            proj_stride: inner + heads + 3,
            dt_offset: inner + 1,
            dt_min: 0.0,
            dt_max: f32::MAX,
            src_slot: from_state.then_some(1),
            dst_slot: 0,
            snap_slot: (tokens > 1).then_some(2),
        };
        let slot = p.slot_len();
        let (xbc, proj, st) = (rng.vec(tokens * p.xbc_stride()), rng.vec(tokens * p.proj_stride), rng.vec(3 * slot));
        // A in [-4.5, -0.5], D in [-1, 1], dt_bias in [-2, 0].
        let mut hp: Vec<f32> = rng.vec(heads).iter().map(|v| v * 2.0 - 2.5).collect();
        hp.extend(rng.vec(heads));
        hp.extend(rng.vec(heads).iter().map(|v| v - 1.0));
        let t = |n: &str, x: &[f32]| CpuTensor::from_f32(n, &[x.len()], x);
        let state = t("state", &st)?;
        let out = CpuTensor::zeroed("out", &[tokens, inner], DType::F32)?;
        ops::ssm_scan(&t("xbc", &xbc)?, &t("proj", &proj)?, &t("heads", &hp)?, &state, &out, &p)?;
        let [want, mag, after, before_last] = reference::ssm_scan(&xbc, &proj, &hp, from_state.then(|| &st[slot..2 * slot]), &p);
        let what = format!("ssm_scan t={tokens} heads={heads} groups={groups}");
        close(&what, &out.f32s(), &want, &mag)?;
        let got = state.f32s();
        close(&format!("{what} state after"), &got[..slot], &after, &[])?;
        ensure!(got[slot..2 * slot] == st[slot..2 * slot], "{what}: the source slot changed");
        if tokens > 1 {
            close(&format!("{what} checkpoint"), &got[2 * slot..], &before_last, &[])?;
        } else {
            ensure!(got[2 * slot..] == st[2 * slot..], "{what}: a one-token step wrote the checkpoint");
        }
    }
    Ok(())
}

/// Each row's groups normalised apart, each with its part of the weight.
pub fn group_rms_norm_parts() -> Check {
    let mut rng = Rng(13);
    let (rows, groups, cols) = (3, 4, 10);
    let (x, w) = (rng.vec(rows * groups * cols), rng.vec(groups * cols));
    let out = CpuTensor::zeroed("out", &[rows, groups * cols], DType::F32)?;
    ops::group_rms_norm(&CpuTensor::from_f32("x", &[x.len()], &x)?, &CpuTensor::from_f32("w", &[w.len()], &w)?, &out, rows, groups, 1e-5)?;
    let want: Vec<f64> = x
        .chunks(cols)
        .enumerate()
        .flat_map(|(i, part)| {
            let rms = (part.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64 + 1e-5).sqrt();
            let wp = &w[(i % groups) * cols..][..cols];
            part.iter().zip(wp).map(move |(&v, &wv)| v as f64 / rms * wv as f64).collect::<Vec<_>>()
        })
        .collect();
    let got = out.f32s().to_vec();
    close("group_rms_norm", &got, &want, &[])
}

/// `moe_route`, `expert_gated_matvec` and `expert_matvec` against `reference::moe_route` (ids
/// exact) and `reference::moe_mlp`, one token and a prompt, with and without biases and
/// renormalised weights, DeepSeek's routers (V2: groups by their best expert, scaled; V3:
/// sigmoid, a selection bias, groups by their best two) adding to a shared expert's output;
/// the scale is each output's magnitude (its terms' absolute sum).
pub fn mixture_of_experts() -> Check {
    let mut rng = Rng(17);
    let v2 = Routing { groups: 3, groups_used: 2, scale: 16.0, ..Routing::default() };
    // V3's comes with a choice bias.
    let v3 = Routing { scoring: RouterScoring::Sigmoid, groups: 3, groups_used: 2, group_score: GroupScore::TopTwoSum, scale: 2.5 };
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let (experts, top_k, hidden, inter) = (6, 2 + i % 2, 64usize.next_multiple_of(dtype.k_multiple()), 40usize.next_multiple_of(dtype.k_multiple()));
        for tokens in [1, 7] {
            let (normalize, bias) = ((i + tokens) % 2 == 0, i % 3 != 1);
            let routing = [Routing::default(), v2, v3][(i + tokens) % 3];
            let accumulate = routing != Routing::default();
            let p = MoeRouteParams { routing, ..MoeRouteParams::new(tokens, experts, top_k, normalize) };
            let selection = rng.vec(experts).iter().map(|v| v * 0.2).collect::<Vec<f32>>();
            let selection_t = CpuTensor::from_f32("selection bias", &[experts], &selection)?;
            let logits = rng.vec(tokens * experts);
            let x = rng.vec(tokens * hidden);
            let gate_up = PackedMatrix::pack(dtype, experts * 2 * inter, hidden, &rng.vec(experts * 2 * inter * hidden));
            let down = PackedMatrix::pack(dtype, experts * hidden, inter, &rng.vec(experts * hidden * inter));
            let (b_gu, b_down) = (rng.vec(experts * 2 * inter), rng.vec(experts * hidden));
            let weight = |name: &str, rows: usize, k: usize, packed: &PackedMatrix| -> Result<CpuTensor, Box<dyn std::error::Error>> {
                let t = CpuTensor::zeroed(name, &[experts, rows, k], dtype)?;
                t.write_rows(0, packed)?;
                Ok(t)
            };
            let (gate_up_t, down_t) = (weight("gate|up", 2 * inter, hidden, &gate_up)?, weight("down", hidden, inter, &down)?);
            let route = CpuTensor::zeroed("route", &[p.route_len()], DType::F32)?;
            let act = CpuTensor::zeroed("act", &[tokens * top_k, inter], DType::F32)?;
            let y0 = if accumulate { rng.vec(tokens * hidden) } else { vec![0.0; tokens * hidden] };
            let y = CpuTensor::from_f32("y", &[tokens, hidden], &y0)?;
            let b_gu_t = CpuTensor::from_f32("gate|up bias", &[b_gu.len()], &b_gu)?;
            let b_down_t = CpuTensor::from_f32("down bias", &[b_down.len()], &b_down)?;
            let selection_bias = routing == v3;
            let selection_t = selection_bias.then_some(&selection_t);
            moe::moe_route(&CpuTensor::from_f32("logits", &[tokens, experts], &logits)?, selection_t, &route, &p)?;
            let x_t = CpuTensor::from_f32("x", &[tokens, hidden], &x)?;
            moe::expert_gated_matvec(&gate_up_t, &x_t, &route, bias.then_some(&b_gu_t), &act, tokens, top_k, Activation::Silu, Activations::Exact)?;
            moe::expert_matvec(&down_t, &act, &route, bias.then_some(&b_down_t), &y, tokens, top_k, accumulate, Activations::Exact)?;
            let routes = reference::moe_route_with(&logits, &p, selection_bias.then_some(&selection[..]));
            let got_route = route.words().to_vec();
            let (gu, dn) = (gate_up.dequantize(), down.dequantize());
            let (mut want, mut scale) = (Vec::new(), Vec::new());
            for (t, picks) in routes.iter().enumerate() {
                for (j, &(e, w)) in picks.iter().enumerate() {
                    let (got_e, got_w) = (got_route[t * 2 * top_k + j], f32::from_bits(got_route[t * 2 * top_k + top_k + j]));
                    ensure!(
                        got_e == e && (got_w as f64 - w).abs() <= 1e-6 * routing.scale as f64,
                        "{} {routing:?} token {t} pick {j}: expert {got_e} weight {got_w}, reference {e} {w}",
                        dtype.name()
                    );
                }
                let biases = bias.then_some((&b_gu[..], &b_down[..]));
                let (out, mag) = reference::moe_mlp(&x[t * hidden..(t + 1) * hidden], picks, &gu, &dn, biases, inter, hidden, Activation::Silu);
                let y0 = &y0[t * hidden..(t + 1) * hidden];
                want.extend(out.iter().zip(y0).map(|(o, &y)| o + y as f64));
                scale.extend(mag.iter().zip(y0).map(|(m, y)| m + y.abs() as f64));
            }
            close(&format!("moe {} tokens={tokens}", dtype.name()), &y.f32s(), &want, &scale)?;
        }
    }
    Ok(())
}

/// `head_linear` (strided heads from an offset, values between heads untouched) against
/// per-head `reference::matvec`, one token and several, every dtype; `latent_rope_append`
/// against `reference::rope` on both layouts.
pub fn multi_head_latent_attention_ops() -> Check {
    let mut rng = Rng(29);
    for dtype in DType::ALL {
        let k = 24usize.next_multiple_of(dtype.k_multiple());
        for tokens in [1, 5] {
            let (heads, rows) = (3, 20);
            let p = reference::gapped_head_layout(tokens, heads, rows, k);
            let (w, wd) = weight(dtype, heads * rows, k, &rng.vec(heads * rows * k))?;
            let xs = rng.vec(tokens * p.x_stride);
            let y = CpuTensor::zeroed("y", &[tokens, p.y_stride], DType::F32)?;
            ops::head_linear(&w, &CpuTensor::from_f32("x", &[tokens, p.x_stride], &xs)?, &y, &p, Activations::Exact)?;
            let (want, scale) = reference::head_linear(&wd, &xs, rows, k, &p);
            close(&format!("head_linear {} tokens={tokens}", dtype.name()), &y.f32s(), &want, &scale)?;
        }
    }
    let (tokens, heads, rope, latent, pos0) = (3, 2, 8, 16, 4);
    let d = latent + rope;
    let p = reference::gapped_latent_layout(tokens, heads, latent, 8, rope, pos0);
    let inv = emberlm_core::rope_table::inv_freq(rope, 10_000.0, emberlm_core::rope_table::RopeScaling::None);
    let table = emberlm_core::rope_table::cos_sin(&inv, pos0 + tokens, 1.0);
    for layout in [RopeLayout::Neox, RopeLayout::Interleaved] {
        let (qs, kvs, query0, cache0) =
            (rng.vec(tokens * p.q_stride), rng.vec(tokens * p.kv_stride), rng.vec(tokens * heads * d), rng.vec((pos0 + tokens + 1) * d));
        let query = CpuTensor::from_f32("query", &[tokens, heads * d], &query0)?;
        let cache = CpuTensor::from_f32("cache", &[cache0.len()], &cache0)?;
        let (q, kv) = (CpuTensor::from_f32("q", &[tokens, p.q_stride], &qs)?, CpuTensor::from_f32("kv", &[tokens, p.kv_stride], &kvs)?);
        ops::latent_rope_append(&q, &kv, &table, rope, layout, &query, &cache, &p)?;
        let (want_query, want_cache) = reference::latent_rope_append(&qs, &kvs, &query0, &cache0, &table, rope, layout, &p);
        close(&format!("latent_rope_append {layout:?} query"), &query.f32s(), &want_query, &[])?;
        close(&format!("latent_rope_append {layout:?} cache"), &cache.f32s(), &want_cache, &[])?;
        ensure!(
            ops::latent_rope_append(&q, &kv, &table, rope, layout, &query, &cache, &LatentRopeParams { pos0: pos0 + 1, ..p }).is_err(),
            "positions past the table"
        );
    }
    Ok(())
}
