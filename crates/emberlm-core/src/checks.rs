//! Kernel-vs-reference checks on seeded random data, shared by the native tests and the wasm
//! self-test so the browser runs exactly what `cargo test` runs. Each check builds a one-op
//! plan, runs it, reads the result back and compares with `reference` under a tolerance
//! stated (and justified) at the check.

use crate::device::GpuDevice;
use crate::dtype::{DType, PackedMatrix};
use crate::error::Result;
use crate::ops::{self, Activation, AttentionParams, RopeLayout};
use crate::plan::Plan;
use crate::reference;
use crate::rope_table::{self, RopeScaling, RopeTable};
use crate::tensor::Tensor;

/// f32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    /// Largest |gpu − reference|.
    pub max_abs_err: f64,
    /// Largest error / tolerance over all elements; ≤ 1 passes.
    pub worst_ratio: f64,
    pub passed: bool,
    /// The first failing element, if any.
    pub detail: String,
}

/// Deterministic xorshift64* so GPU and reference see the same data on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Compares element-wise with a per-element tolerance.
pub fn compare(name: String, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) -> CheckResult {
    let mut max_abs_err = 0f64;
    let mut worst_ratio = 0f64;
    let mut detail = String::new();
    if got.len() != want.len() {
        detail = format!("length {} != {}", got.len(), want.len());
        worst_ratio = f64::INFINITY;
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        let ratio = err / tol(i);
        max_abs_err = max_abs_err.max(err);
        if ratio > 1.0 && detail.is_empty() {
            detail = format!("element {i}: gpu {g} vs reference {w} (tolerance {:.3e})", tol(i));
        }
        worst_ratio = worst_ratio.max(ratio);
    }
    CheckResult { name, max_abs_err, worst_ratio, passed: worst_ratio <= 1.0, detail }
}

fn exact(name: String, ok: bool, detail: String) -> CheckResult {
    let bad = if ok { 0.0 } else { f64::INFINITY };
    CheckResult { name, max_abs_err: bad, worst_ratio: bad, passed: ok, detail: if ok { String::new() } else { detail } }
}

async fn run(plan: Plan<'_>) -> Result<()> {
    let dev = plan.dev;
    let mut exe = plan.finish()?;
    exe.run(dev)
}

fn features(dev: &GpuDevice) -> &'static str {
    if dev.caps.subgroups {
        "subgroups"
    } else {
        "shared-memory"
    }
}

/// Dot-product kernels (matvec, matmul): the worst-case bound for an f32 sum of k products,
/// γ_(k+2) · Σ|w·x| (Higham, Accuracy and Stability, §3.1), the +2 covering the product and
/// the dequantisation (q·scale + min may or may not be fused on the GPU).
fn dot_tolerance(k: usize, abs_dot: f64) -> f64 {
    (k + 2) as f64 * U * abs_dot + 1e-30
}

/// `k` (and the embedding's `hidden`) is rounded up to the dtype's row multiple: the K formats
/// need whole super-blocks of 256 weights.
pub async fn check_matvec(dev: &GpuDevice, dtype: DType, n: usize, k: usize, bias: bool, seed: u64) -> Result<CheckResult> {
    let k = k.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let w = PackedMatrix::pack(dtype, n, k, &rng.vec(n * k, -1.0, 1.0));
    let x_host = rng.vec(k, -1.0, 1.0);
    let b_host = rng.vec(n, -1.0, 1.0);
    let wt = Tensor::from_packed(dev, "w", &[n, k], &w)?;
    let x = Tensor::from_f32(dev, "x", &[k], &x_host)?;
    let y = Tensor::new_zeroed(dev, "y", &[n], DType::F32)?;
    let b = Tensor::from_f32(dev, "bias", &[n], &b_host)?;
    let mut plan = Plan::new(dev);
    ops::matvec(&mut plan, &wt, &x, bias.then_some(&b), &y)?;
    run(plan).await?;
    let got = y.read_f32(dev).await?;
    let wd = w.dequantize();
    let want = reference::matvec(&wd, &x_host, bias.then_some(&b_host[..]), n);
    let scale = reference::abs_dot(&wd, &x_host, n);
    let name = format!("matvec {} {n}x{k}{} ({}, {} chunks)", dtype.name(), if bias { " +bias" } else { "" }, features(dev), wt.chunks.len());
    Ok(compare(name, &got, &want, |i| dot_tolerance(k, scale[i] + if bias { b_host[i].abs() as f64 } else { 0.0 })))
}

/// A folded RMSNorm's weight (Gemma's `1 + w` form on odd seeds) and what it makes of `x`, in
/// f64 rounded to f32: the reference side of the NORMED matvec checks.
struct HostNorm {
    weight: Vec<f32>,
    eps: f32,
    offset: f32,
}

impl HostNorm {
    fn new(rng: &mut Rng, k: usize, seed: u64) -> Self {
        Self { weight: rng.vec(k, -1.5, 1.5), eps: 1e-5, offset: (seed % 2) as f32 }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mean_sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (mean_sq + self.eps as f64).sqrt();
        x.iter().zip(&self.weight).map(|(&v, &w)| (v as f64 * inv * (w as f64 + self.offset as f64)) as f32).collect()
    }

    fn op<'a>(&self, weight: &'a Tensor) -> ops::InputNorm<'a> {
        ops::InputNorm { weight, eps: self.eps, offset: self.offset }
    }
}

/// A dot product through a folded norm: the sums' bound for ~2k terms covers the norm's own
/// sum of squares (γ_k relative, k/2 of it through the square root), the weight's offset and
/// product, `inverseSqrt`'s few ulp and the reference's rounding of the normalised x.
fn folded_dot_tolerance(k: usize, abs_dot: f64) -> f64 {
    dot_tolerance(2 * k + 16, abs_dot)
}

/// `matvec_with` on one token: with `normed`, of x normalised by a folded RMSNorm; with
/// `accumulate`, added (scaled) into what `y` holds; [`dot_tolerance`] (or
/// [`folded_dot_tolerance`]) plus the final add's rounding.
#[allow(clippy::too_many_arguments)]
pub async fn check_matvec_folded(
    dev: &GpuDevice,
    dtype: DType,
    n: usize,
    k: usize,
    bias: bool,
    normed: bool,
    accumulate: Option<f32>,
    seed: u64,
) -> Result<CheckResult> {
    let k = k.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let w = PackedMatrix::pack(dtype, n, k, &rng.vec(n * k, -1.0, 1.0));
    // A residual stream's scale, not the unit range: the norm must undo it.
    let x_host: Vec<f32> = rng.vec(k, -1.0, 1.0).iter().map(|v| v * 7.0).collect();
    let b_host = rng.vec(n, -1.0, 1.0);
    let y0 = rng.vec(n, -3.0, 3.0);
    let norm = HostNorm::new(&mut rng, k, seed);
    let wt = Tensor::from_packed(dev, "w", &[n, k], &w)?;
    let x = Tensor::from_f32(dev, "x", &[k], &x_host)?;
    let y = Tensor::from_f32(dev, "y", &[n], &y0)?;
    let b = Tensor::from_f32(dev, "bias", &[n], &b_host)?;
    let nw = Tensor::from_f32(dev, "norm", &[k], &norm.weight)?;
    let ends = ops::MatvecEnds { norm: normed.then(|| norm.op(&nw)), accumulate };
    let mut plan = Plan::new(dev);
    ops::matvec_with(&mut plan, &wt, &x, 0, bias.then_some(&b), &y, 0, ends)?;
    run(plan).await?;
    let got = y.read_f32(dev).await?;
    let wd = w.dequantize();
    let xn = if normed { norm.apply(&x_host) } else { x_host.clone() };
    let dot = reference::matvec(&wd, &xn, bias.then_some(&b_host[..]), n);
    let scale = reference::abs_dot(&wd, &xn, n);
    let s = accumulate.unwrap_or(0.0) as f64;
    let want: Vec<f64> = match accumulate {
        Some(_) => dot.iter().zip(&y0).map(|(d, &y)| y as f64 + s * d).collect(),
        None => dot.clone(),
    };
    let name = format!(
        "matvec {} {n}x{k}{}{}{}",
        dtype.name(),
        if bias { " +bias" } else { "" },
        if normed { " normed" } else { "" },
        accumulate.map_or(String::new(), |s| format!(" accumulate x{s}"))
    );
    Ok(compare(name, &got, &want, |i| {
        let abs = scale[i] + if bias { b_host[i].abs() as f64 } else { 0.0 };
        let dot_tol = if normed { folded_dot_tolerance(k, abs) } else { dot_tolerance(k, abs) };
        match accumulate {
            Some(_) => s.abs() * dot_tol + 2.0 * U * (y0[i].abs() as f64 + (s * dot[i]).abs()),
            None => dot_tol,
        }
    }))
}

/// `gated_matvec` on fused [gate | up] weights: each output is act(g)·u for two dot products
/// within [`dot_tolerance`] ([`folded_dot_tolerance`] through a folded norm), through the
/// activation (relative 1e-5, as `gated_activation`):
/// |d(act(g)·u)| ≤ |act'(g)|·|u|·δg + |act(g)|·δu, with |act'| ≤ 1.2 for SiLU and GELU.
#[allow(clippy::too_many_arguments)]
pub async fn check_gated_matvec(
    dev: &GpuDevice,
    dtype: DType,
    act: Activation,
    inter: usize,
    k: usize,
    bias: bool,
    normed: bool,
    seed: u64,
) -> Result<CheckResult> {
    let k = k.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let w = PackedMatrix::pack(dtype, 2 * inter, k, &rng.vec(2 * inter * k, -1.0, 1.0));
    let x_host = rng.vec(2 * k, -1.0, 1.0);
    let b_host = rng.vec(2 * inter, -1.0, 1.0);
    let norm = HostNorm::new(&mut rng, k, seed);
    let wt = Tensor::from_packed(dev, "gate|up", &[2 * inter, k], &w)?;
    let x = Tensor::from_f32(dev, "x", &[2, k], &x_host)?;
    let out = Tensor::new_zeroed(dev, "out", &[inter], DType::F32)?;
    let b = Tensor::from_f32(dev, "bias", &[2 * inter], &b_host)?;
    let nw = Tensor::from_f32(dev, "norm", &[k], &norm.weight)?;
    let mut plan = Plan::new(dev);
    // The second token row: exercises x_row.
    ops::gated_matvec(&mut plan, &wt, &x, 1, bias.then_some(&b), &out, act, normed.then(|| norm.op(&nw)))?;
    run(plan).await?;
    let got = out.read_f32(dev).await?;
    let wd = w.dequantize();
    let xi = if normed { norm.apply(&x_host[k..]) } else { x_host[k..].to_vec() };
    let gate_up = reference::matvec(&wd, &xi, bias.then_some(&b_host[..]), 2 * inter);
    let scale = reference::abs_dot(&wd, &xi, 2 * inter);
    let gate_up_f32: Vec<f32> = gate_up.iter().map(|&v| v as f32).collect();
    let want = reference::gated_activation(&gate_up_f32, inter, act);
    let name = format!("gated_matvec {act:?} {} {inter}x{k}{}{}", dtype.name(), if bias { " +bias" } else { "" }, if normed { " normed" } else { "" });
    let tolerance = if normed { folded_dot_tolerance } else { dot_tolerance };
    Ok(compare(name, &got, &want, |i| {
        let (g, u) = (gate_up[i], gate_up[inter + i]);
        let bias_of = |r: usize| if bias { b_host[r].abs() as f64 } else { 0.0 };
        let (dg, du) = (tolerance(k, scale[i] + bias_of(i)), tolerance(k, scale[inter + i] + bias_of(inter + i)));
        // GPT-OSS's form multiplies by up + 1 (clamped).
        let u = if matches!(act, Activation::SwigluOai { .. }) { u.abs() + 1.0 } else { u.abs() };
        1.2 * u * dg + reference::activation(act, g).abs() * du + 1e-5 * want[i].abs() + 1e-7
    }))
}

pub async fn check_matmul(dev: &GpuDevice, dtype: DType, m: usize, n: usize, k: usize, bias: bool, seed: u64) -> Result<CheckResult> {
    let k = k.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let w = PackedMatrix::pack(dtype, n, k, &rng.vec(n * k, -1.0, 1.0));
    let x_host = rng.vec(m * k, -1.0, 1.0);
    let b_host = rng.vec(n, -1.0, 1.0);
    let wt = Tensor::from_packed(dev, "w", &[n, k], &w)?;
    let x = Tensor::from_f32(dev, "x", &[m, k], &x_host)?;
    let y = Tensor::new_zeroed(dev, "y", &[m, n], DType::F32)?;
    let b = Tensor::from_f32(dev, "bias", &[n], &b_host)?;
    let mut plan = Plan::new(dev);
    ops::matmul(&mut plan, &x, &wt, bias.then_some(&b), &y, m)?;
    run(plan).await?;
    let got = y.read_f32(dev).await?;
    let wd = w.dequantize();
    let want = reference::matmul(&x_host, &wd, bias.then_some(&b_host[..]), m, n, k);
    let scale: Vec<f64> = (0..m).flat_map(|i| reference::abs_dot(&wd, &x_host[i * k..(i + 1) * k], n)).collect();
    let name = format!("matmul {} {m}x{n}x{k}{} ({} chunks)", dtype.name(), if bias { " +bias" } else { "" }, wt.chunks.len());
    Ok(compare(name, &got, &want, |i| dot_tolerance(k, scale[i] + if bias { b_host[i % n].abs() as f64 } else { 0.0 })))
}

/// Two projections written side by side into one output row (`matvec_into`/`matmul_into`),
/// the second with a bias: how q, k, v (and gate, up) share one fused activation row.
pub async fn check_fused_projections(dev: &GpuDevice, dtype: DType, m: usize, via_matvec: bool, seed: u64) -> Result<CheckResult> {
    let (k, n1, n2) = (64usize.next_multiple_of(dtype.k_multiple()), 24, 13);
    let mut rng = Rng::new(seed);
    let w1 = PackedMatrix::pack(dtype, n1, k, &rng.vec(n1 * k, -1.0, 1.0));
    let w2 = PackedMatrix::pack(dtype, n2, k, &rng.vec(n2 * k, -1.0, 1.0));
    let x_host = rng.vec(m * k, -1.0, 1.0);
    let b_host = rng.vec(n2, -1.0, 1.0);
    let (t1, t2) = (Tensor::from_packed(dev, "w1", &[n1, k], &w1)?, Tensor::from_packed(dev, "w2", &[n2, k], &w2)?);
    let x = Tensor::from_f32(dev, "x", &[m, k], &x_host)?;
    let b = Tensor::from_f32(dev, "bias", &[n2], &b_host)?;
    let y = Tensor::new_zeroed(dev, "y", &[m, n1 + n2], DType::F32)?;
    let mut plan = Plan::new(dev);
    if via_matvec {
        // One token row at a time: exercises matvec's x_row as well as its y_offset.
        for i in 0..m {
            ops::matvec_into(&mut plan, &t1, &x, i, None, &y, i * (n1 + n2))?;
            ops::matvec_into(&mut plan, &t2, &x, i, Some(&b), &y, i * (n1 + n2) + n1)?;
        }
    } else {
        ops::matmul_into(&mut plan, &x, &t1, None, &y, m, n1 + n2, 0)?;
        ops::matmul_into(&mut plan, &x, &t2, Some(&b), &y, m, n1 + n2, n1)?;
    }
    run(plan).await?;
    let got = y.read_f32(dev).await?;
    let (d1, d2) = (w1.dequantize(), w2.dequantize());
    let mut want = Vec::new();
    let mut scale = Vec::new();
    for i in 0..m {
        let xi = &x_host[i * k..(i + 1) * k];
        want.extend(reference::matvec(&d1, xi, None, n1));
        want.extend(reference::matvec(&d2, xi, Some(&b_host), n2));
        scale.extend(reference::abs_dot(&d1, xi, n1));
        scale.extend(reference::abs_dot(&d2, xi, n2).iter().zip(&b_host).map(|(s, b)| s + b.abs() as f64));
    }
    let name = format!("fused projections {} m={m} ({})", dtype.name(), if via_matvec { "matvec" } else { "matmul" });
    Ok(compare(name, &got, &want, |i| dot_tolerance(k, scale[i])))
}

#[derive(Debug, Clone, Copy)]
pub struct AttentionCase {
    pub tokens: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub pos0: usize,
    pub window: usize,
    pub softcap: f32,
    pub causal: bool,
    /// GPT-OSS's per-head sink logits (random in [-2, 2]).
    pub sinks: bool,
}

/// Keys for positions `0..pos0 + tokens` are random; the queries are the last `tokens`.
/// Tolerance 2e-5 absolute on outputs bounded by max|v| = 1: a score error δ changes a weight
/// by a factor e^δ, and δ ≤ γ_d·Σ|q·k| ≈ 1e-5 here; WGSL's exp is within (3 + 2|x|) ulp
/// (≈ 1e-5 relative for |x| ≤ 40); the running rescaling adds a few roundings per key block.
pub async fn check_attention(dev: &GpuDevice, case: AttentionCase, seed: u64) -> Result<CheckResult> {
    let AttentionCase { tokens, hq, hkv, d, pos0, window, softcap, causal, sinks } = case;
    let s_max = pos0 + tokens + 3; // spare capacity: the kernel must not read past the length
    let mut rng = Rng::new(seed);
    let q_host = rng.vec(tokens * hq * d, -1.0, 1.0);
    let k_host = rng.vec(hkv * s_max * d, -1.0, 1.0);
    let v_host = rng.vec(hkv * s_max * d, -1.0, 1.0);
    let q = Tensor::from_f32(dev, "q", &[tokens, hq * d], &q_host)?;
    let kc = Tensor::from_f32(dev, "k cache", &[hkv * s_max * d], &k_host)?;
    let vc = Tensor::from_f32(dev, "v cache", &[hkv * s_max * d], &v_host)?;
    let out = Tensor::new_zeroed(dev, "out", &[tokens, hq * d], DType::F32)?;
    let sinks_host = rng.vec(hq, -2.0, 2.0);
    let sinks_t = Tensor::from_f32(dev, "sinks", &[hq], &sinks_host)?;
    let scale = 1.0 / (d as f32).sqrt();
    let params = AttentionParams { tokens, heads_q: hq, heads_kv: hkv, head_dim: d, pos0, window, causal, scale, softcap, q_stride: hq * d };
    let mut plan = Plan::new(dev);
    let op_count = ops::attention_with_sinks(&mut plan, &q, &kc, &vc, sinks.then_some(&sinks_t), &out, &params)?.len();
    run(plan).await?;
    let got = out.read_f32(dev).await?;
    let shape = reference::AttentionShape { tokens, hq, hkv, d, s_max, pos0, window, causal, scale: scale as f64, softcap: softcap as f64, q_stride: hq * d };
    let want = reference::attention_with_sinks(&q_host, &k_host, &v_host, &shape, sinks.then_some(&sinks_host[..]));
    let mode = if op_count > 1 { "split decode" } else { "single pass" };
    let mode = if causal { mode } else { "bidirectional" };
    let name =
        format!("attention t={tokens} hq={hq} hkv={hkv} d={d} pos0={pos0} window={window} softcap={softcap}{} ({mode})", if sinks { " sinks" } else { "" });
    Ok(compare(name, &got, &want, |_| 2e-5))
}

/// Tolerance: sum of squares γ_cols relative, inverseSqrt within 2 ulp (Vulkan), two products.
/// The residual's input joins it times 0.5 (exact), as Granite's blocks do by their multiplier.
pub async fn check_rms_norm(dev: &GpuDevice, rows: usize, cols: usize, residual: bool, offset: f32, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let x_host = rng.vec(rows * cols, -2.0, 2.0);
    let r_host = rng.vec(rows * cols, -2.0, 2.0);
    let w_host = rng.vec(cols, -1.0, 1.0);
    let x = Tensor::from_f32(dev, "x", &[rows, cols], &x_host)?;
    let r = Tensor::from_f32(dev, "residual", &[rows, cols], &r_host)?;
    let w = Tensor::from_f32(dev, "weight", &[cols], &w_host)?;
    let out = Tensor::new_zeroed(dev, "out", &[rows, cols], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::rms_norm(&mut plan, &x, &w, residual.then_some((&r, 0.5)), &out, rows, 1e-6, offset)?;
    run(plan).await?;
    let (want, want_residual) = reference::rms_norm(&x_host, &w_host, residual.then_some((&r_host[..], 0.5)), 1e-6, offset as f64);
    let mut got = out.read_f32(dev).await?;
    let mut want = want;
    if residual {
        // The residual stream is an output too: check it in the same comparison.
        got.extend(r.read_f32(dev).await?);
        want.extend(want_residual);
    }
    let name = format!("rms_norm {rows}x{cols}{} offset={offset}", if residual { " +residual" } else { "" });
    let rtol = (cols + 8) as f64 * U;
    Ok(compare(name, &got, &want, |i| rtol * want[i].abs() + 1e-6))
}

/// q and k heads normalised in place inside fused rows, the other heads (v) untouched.
pub async fn check_head_rms_norm(dev: &GpuDevice, tokens: usize, heads: usize, d: usize, first: usize, offset: f32, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let row_stride = first + (heads + 1) * d;
    let x_host = rng.vec(tokens * row_stride, -2.0, 2.0);
    let w_host = rng.vec(d, -1.0, 1.0);
    let x = Tensor::from_f32(dev, "x", &[tokens, row_stride], &x_host)?;
    let w = Tensor::from_f32(dev, "weight", &[d], &w_host)?;
    let mut plan = Plan::new(dev);
    ops::head_rms_norm(&mut plan, &x, &w, tokens, heads, first, row_stride, 1e-6, offset)?;
    run(plan).await?;
    let got = x.read_f32(dev).await?;
    let want = reference::head_rms_norm(&x_host, &w_host, heads, first, row_stride, 1e-6, offset as f64);
    let name = format!("head_rms_norm {tokens}x{heads}x{d} from column {first} offset={offset}");
    let rtol = (d + 8) as f64 * U;
    Ok(compare(name, &got, &want, |i| rtol * want[i].abs() + 1e-6))
}

pub async fn check_logit_softcap(dev: &GpuDevice, len: usize, cap: f32, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let x_host = rng.vec(len, -4.0 * cap, 4.0 * cap);
    let x = Tensor::from_f32(dev, "x", &[len], &x_host)?;
    let mut plan = Plan::new(dev);
    ops::logit_softcap(&mut plan, &x, len, cap)?;
    run(plan).await?;
    let got = x.read_f32(dev).await?;
    let want = reference::logit_softcap(&x_host, cap as f64);
    // WGSL's tanh has no stated precision; a few ulp of the cap is what GPUs deliver.
    Ok(compare(format!("logit_softcap {len} cap={cap}"), &got, &want, |_| 64.0 * U * cap as f64))
}

#[derive(Debug, Clone, Copy)]
pub struct RopeCase {
    pub layout: RopeLayout,
    pub tokens: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub d: usize,
    pub rot_dims: usize,
    pub pos0: usize,
}

/// Rows of [q | k | v] heads plus one spare head (which must stay as it was). Each rotated
/// value is a·c ∓ b·s from table values: three roundings, so 3u·(|a·c| + |b·s|) ≤ 3u·(|a|+|b|);
/// the cache slots past this step's positions, the k and v heads left in the rows and the
/// copied values must be bit-exact.
pub async fn check_rope_kv_append(dev: &GpuDevice, case: RopeCase, seed: u64) -> Result<CheckResult> {
    let RopeCase { layout, tokens, heads_q, heads_kv, d, rot_dims, pos0 } = case;
    let mut rng = Rng::new(seed);
    let row_stride = (heads_q + 2 * heads_kv + 1) * d;
    let s_max = pos0 + tokens + 2;
    let qkv_host = rng.vec(tokens * row_stride, -2.0, 2.0);
    let k_host = rng.vec(heads_kv * s_max * d, -1.0, 1.0);
    let v_host = rng.vec(heads_kv * s_max * d, -1.0, 1.0);
    let freqs = rope_table::inv_freq(rot_dims, 10_000.0, RopeScaling::None);
    let table = RopeTable::new(dev, &freqs, pos0 + tokens, 1.0)?;
    let table_host = rope_table::cos_sin(&freqs, pos0 + tokens, 1.0);
    let qkv = Tensor::from_f32(dev, "qkv", &[tokens, row_stride], &qkv_host)?;
    let k_cache = Tensor::from_f32(dev, "k cache", &[heads_kv * s_max * d], &k_host)?;
    let v_cache = Tensor::from_f32(dev, "v cache", &[heads_kv * s_max * d], &v_host)?;
    let mut plan = Plan::new(dev);
    ops::rope_kv_append(&mut plan, &qkv, &table, layout, tokens, heads_q, heads_kv, d, row_stride, &k_cache, &v_cache, pos0)?;
    run(plan).await?;
    let mut got = qkv.read_f32(dev).await?;
    got.extend(k_cache.read_f32(dev).await?);
    got.extend(v_cache.read_f32(dev).await?);
    // q heads rotated in place, the rest of the rows untouched; k rotated into the cache.
    let mut want = reference::rope(&qkv_host, &table_host, rot_dims, layout, tokens, heads_q, d, 0, row_stride, pos0);
    let rotated_k = reference::rope(&qkv_host, &table_host, rot_dims, layout, tokens, heads_kv, d, heads_q, row_stride, pos0);
    let k_base = want.len();
    let v_base = k_base + k_host.len();
    want.extend(k_host.iter().chain(&v_host).map(|&v| v as f64));
    for t in 0..tokens {
        for h in 0..heads_kv {
            for i in 0..d {
                let slot = (h * s_max + pos0 + t) * d + i;
                let k_at = t * row_stride + (heads_q + h) * d + i;
                want[k_base + slot] = rotated_k[k_at];
                want[v_base + slot] = qkv_host[k_at + heads_kv * d] as f64;
            }
        }
    }
    let name = format!("rope_kv_append {layout:?} t={tokens} q/kv heads={heads_q}/{heads_kv} d={d} rot={rot_dims} pos0={pos0}");
    Ok(compare(name, &got, &want, |_| 3.0 * U * 4.0 + 1e-7))
}

/// `head_linear`: every head's rows times that head's slice of x, from strided rows at an
/// offset, into strided output rows (the values between heads untouched, zero): MLA's
/// per-head up-projections, by matvec (one token) or matmul (several).
pub async fn check_head_linear(dev: &GpuDevice, dtype: DType, tokens: usize, heads: usize, rows: usize, k: usize, seed: u64) -> Result<CheckResult> {
    let k = k.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let p = reference::gapped_head_layout(tokens, heads, rows, k);
    let w = PackedMatrix::pack(dtype, heads * rows, k, &rng.vec(heads * rows * k, -1.0, 1.0));
    let x_host = rng.vec(tokens * p.x_stride, -1.0, 1.0);
    let wt = Tensor::from_packed(dev, "per-head w", &[heads * rows, k], &w)?;
    let x = Tensor::from_f32(dev, "x", &[tokens, p.x_stride], &x_host)?;
    let y = Tensor::new_zeroed(dev, "y", &[tokens, p.y_stride], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::head_linear(&mut plan, &wt, &x, &y, &p)?;
    run(plan).await?;
    let got = y.read_f32(dev).await?;
    let (want, scale) = reference::head_linear(&w.dequantize(), &x_host, rows, k, &p);
    let name = format!("head_linear {} t={tokens} {heads} heads of {rows}x{k}", dtype.name());
    Ok(compare(name, &got, &want, |i| if scale[i] > 0.0 { dot_tolerance(k, scale[i]) } else { 1e-9 }))
}

/// `latent_rope_append`: each head's rope query part rotated into the query rows after the
/// latent part (left as it was), the latent and the rotated rope key into the cache row of
/// each position; other cache rows untouched.
pub async fn check_latent_rope_append(
    dev: &GpuDevice,
    layout: RopeLayout,
    tokens: usize,
    heads: usize,
    latent: usize,
    rope: usize,
    pos0: usize,
    seed: u64,
) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let d = latent + rope;
    let s_max = pos0 + tokens + 2;
    let p = reference::gapped_latent_layout(tokens, heads, latent, 8, rope, pos0);
    let q_host = rng.vec(tokens * p.q_stride, -2.0, 2.0);
    let kv_host = rng.vec(tokens * p.kv_stride, -2.0, 2.0);
    let query_host = rng.vec(tokens * heads * d, -1.0, 1.0);
    let cache_host = rng.vec(s_max * d, -1.0, 1.0);
    let freqs = rope_table::inv_freq(rope, 10_000.0, RopeScaling::None);
    let table = RopeTable::new(dev, &freqs, pos0 + tokens, 1.0)?;
    let table_host = rope_table::cos_sin(&freqs, pos0 + tokens, 1.0);
    let q = Tensor::from_f32(dev, "q", &[tokens, p.q_stride], &q_host)?;
    let kv = Tensor::from_f32(dev, "kv", &[tokens, p.kv_stride], &kv_host)?;
    let query = Tensor::from_f32(dev, "query", &[tokens, heads * d], &query_host)?;
    let cache = Tensor::from_f32(dev, "latent cache", &[s_max * d], &cache_host)?;
    let mut plan = Plan::new(dev);
    ops::latent_rope_append(&mut plan, &q, &kv, &table, layout, &query, &cache, &p)?;
    run(plan).await?;
    let mut got = query.read_f32(dev).await?;
    got.extend(cache.read_f32(dev).await?);
    let (mut want, cache_want) = reference::latent_rope_append(&q_host, &kv_host, &query_host, &cache_host, &table_host, rope, layout, &p);
    want.extend(cache_want);
    let name = format!("latent_rope_append {layout:?} t={tokens} heads={heads} latent={latent} rope={rope} pos0={pos0}");
    Ok(compare(name, &got, &want, |_| 3.0 * U * 4.0 + 1e-7))
}

/// WGSL's exp is within (3 + 2|x|) ulp; |x| ≤ 2·0.8·(8 + 0.045·8³) ≈ 50 here, so ≤ 103 ulp
/// ≈ 6e-6 relative, plus a division and a product: 1e-5 relative.
pub async fn check_gated_activation(dev: &GpuDevice, act: Activation, rows: usize, inter: usize, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let host = rng.vec(rows * 2 * inter, -8.0, 8.0);
    let x = Tensor::from_f32(dev, "gate_up", &[rows, 2 * inter], &host)?;
    let out = Tensor::new_zeroed(dev, "out", &[rows, inter], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::gated_activation(&mut plan, &x, &out, rows, inter, act)?;
    run(plan).await?;
    let got = out.read_f32(dev).await?;
    let want = reference::gated_activation(&host, inter, act);
    Ok(compare(format!("gated_activation {act:?} {rows}x{inter}"), &got, &want, |i| 1e-5 * want[i].abs() + 1e-7))
}

pub async fn check_embedding(dev: &GpuDevice, dtype: DType, vocab: usize, hidden: usize, scale: f32, seed: u64) -> Result<CheckResult> {
    let hidden = hidden.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let table = PackedMatrix::pack(dtype, vocab, hidden, &rng.vec(vocab * hidden, -1.0, 1.0));
    // First, last, repeated, and an out-of-range id (must give zeros).
    let ids = vec![0u32, vocab as u32 - 1, 3 % vocab as u32, 3 % vocab as u32, (vocab / 2) as u32, vocab as u32 + 7];
    let t = Tensor::from_packed(dev, "table", &[vocab, hidden], &table)?;
    let id_t = Tensor::from_u32(dev, "ids", &ids)?;
    let out = Tensor::new_zeroed(dev, "out", &[ids.len(), hidden], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::embedding(&mut plan, &id_t, &t, &out, ids.len(), scale)?;
    run(plan).await?;
    let got = out.read_f32(dev).await?;
    let deq = &table.dequantize();
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&id| (0..hidden).map(move |j| if (id as usize) < vocab { deq[id as usize * hidden + j] as f64 * scale as f64 } else { 0.0 }))
        .collect();
    let name = format!("embedding {} {vocab}x{hidden} scale={scale} ({} chunks)", dtype.name(), t.chunks.len());
    // Dequantisation and the scale: two roundings.
    Ok(compare(name, &got, &want, |i| 2.0 * U * want[i].abs() + 1e-30))
}

/// exp within (3 + 2|x|) ulp for |x| ≤ 2·range, the sum γ_cols: under 1e-5 relative here.
pub async fn check_softmax(dev: &GpuDevice, rows: usize, cols: usize, scale: f32, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let host = rng.vec(rows * cols, -10.0, 10.0);
    let x = Tensor::from_f32(dev, "x", &[rows, cols], &host)?;
    let out = Tensor::new_zeroed(dev, "out", &[rows, cols], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::softmax(&mut plan, &x, &out, rows, cols, scale)?;
    run(plan).await?;
    let got = out.read_f32(dev).await?;
    let want: Vec<f64> = host.chunks(cols).flat_map(|r| reference::softmax_row(&r.iter().map(|&v| v as f64 * scale as f64).collect::<Vec<_>>())).collect();
    Ok(compare(format!("softmax {rows}x{cols} scale={scale}"), &got, &want, |i| 1e-5 * want[i].abs() + 1e-9))
}

/// Random rows plus hand-made ones: ties (lowest index wins), NaNs (skipped), all −∞.
fn ranking_rows(rng: &mut Rng, cols: usize) -> Vec<Vec<f32>> {
    let mut rows = vec![rng.vec(cols, -5.0, 5.0)];
    let mut ties: Vec<f32> = (0..cols).map(|i| (i % 7) as f32).collect();
    ties[cols / 2] = f32::NAN;
    rows.push(ties);
    let mut nan_first = rng.vec(cols, -1.0, 1.0);
    nan_first[0] = f32::NAN;
    nan_first[cols - 1] = 3.0;
    rows.push(nan_first);
    rows.push(vec![f32::NEG_INFINITY; cols]);
    rows
}

/// With `masked`, a random third of the columns allowed (never the first row's best) and, on a
/// second output, none: every row then gives `u32::MAX`.
pub async fn check_argmax(dev: &GpuDevice, cols: usize, masked: bool, seed: u64) -> Result<CheckResult> {
    let mut rng = Rng::new(seed);
    let rows = ranking_rows(&mut rng, cols);
    let host: Vec<f32> = rows.concat();
    let x = Tensor::from_f32(dev, "x", &[rows.len(), cols], &host)?;
    let out = Tensor::from_u32(dev, "argmax", &vec![u32::MAX - 1; rows.len()])?;
    let none = Tensor::from_u32(dev, "argmax, nothing allowed", &vec![0; rows.len()])?;
    let mut allowed: Vec<bool> = (0..cols).map(|_| rng.uniform(0.0, 1.0) < 0.3).collect();
    allowed[reference::argmax(&rows[0]) as usize] = false;
    // Bits past the last column (the mask's last word) are ignored.
    let mut bits = ops::mask_of(&allowed);
    if cols % 32 != 0 {
        *bits.last_mut().expect("a word") |= !((1u32 << (cols % 32)) - 1);
    }
    let mask = Tensor::from_u32(dev, "mask", &bits)?;
    let empty = Tensor::from_u32(dev, "empty mask", &ops::mask_of(&vec![false; cols]))?;
    let mut plan = Plan::new(dev);
    ops::argmax(&mut plan, &x, masked.then_some(&mask), &out, rows.len(), cols)?;
    if masked {
        ops::argmax(&mut plan, &x, Some(&empty), &none, rows.len(), cols)?;
    }
    run(plan).await?;
    let mut got = out.read_u32(dev).await?;
    let mut want: Vec<u32> = rows.iter().map(|r| if masked { reference::masked_argmax(r, &allowed) } else { reference::argmax(r) }).collect();
    if masked {
        got.extend(none.read_u32(dev).await?);
        want.extend(vec![u32::MAX; rows.len()]);
    }
    exact_check(format!("argmax {}x{cols}{}", rows.len(), if masked { " masked" } else { "" }), &got, &want)
}

fn exact_check<T: PartialEq + std::fmt::Debug>(name: String, got: &[T], want: &[T]) -> Result<CheckResult> {
    Ok(exact(name, got == want, format!("gpu {got:?} vs reference {want:?}")))
}

pub async fn check_top_k(dev: &GpuDevice, cols: usize, k: usize, seed: u64) -> Result<CheckResult> {
    let rows = ranking_rows(&mut Rng::new(seed), cols);
    let n = rows.len();
    let host: Vec<f32> = rows.concat();
    let x = Tensor::from_f32(dev, "x", &[n, cols], &host)?;
    let idx = Tensor::from_u32(dev, "top_k idx", &vec![0; n * k])?;
    let val = Tensor::new_zeroed(dev, "top_k val", &[n * k], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::top_k(&mut plan, &x, &idx, &val, n, cols, k)?;
    run(plan).await?;
    let got_idx = idx.read_u32(dev).await?;
    let got_val = val.read_f32(dev).await?;
    let mut want_idx = Vec::new();
    let mut want_val = Vec::new();
    for r in &rows {
        let mut picks = reference::top_k(r, k);
        picks.resize(k, (u32::MAX, 0.0));
        want_idx.extend(picks.iter().map(|p| p.0));
        want_val.extend(picks.iter().map(|p| p.1));
    }
    // Exact, infinities included (`==` holds for equal infinities).
    let same_vals = got_val.iter().zip(&want_val).all(|(a, b)| a == b);
    let ok = got_idx == want_idx && same_vals;
    Ok(exact(format!("top_k {n}x{cols} k={k}"), ok, format!("gpu {got_idx:?} vs reference {want_idx:?}")))
}

/// A `short_conv` case: `from_state` starts from random state in slot 1 (else zeros); the
/// step writes slot 0 and its checkpoint to slot 2. The input blocks sit at column 3 of rows
/// 5 wider than they need (as in an in-projection's output).
#[derive(Debug, Clone, Copy)]
pub struct ShortConvCase {
    pub tokens: usize,
    pub channels: usize,
    pub kernel: usize,
    pub style: ops::ConvStyle,
    pub from_state: bool,
    pub bias: bool,
}

/// Outputs: a sum of `kernel + 1` terms times the gate, all below 1 in magnitude:
/// γ_(kernel+2) · Σ|terms| ≤ (kernel + 2)² · U; SiLU's slope stays below 1.1 and its exp adds a
/// few U. The states are products copied: exact.
pub async fn check_short_conv(dev: &GpuDevice, case: ShortConvCase, seed: u64) -> Result<CheckResult> {
    let ShortConvCase { tokens, channels, kernel, style, from_state, bias } = case;
    let mut rng = Rng::new(seed);
    let mut p = ops::ShortConvParams {
        tokens,
        channels,
        kernel,
        style,
        in_stride: 0,
        in_offset: 3,
        src_slot: from_state.then_some(1),
        dst_slot: 0,
        snap_slot: Some(2),
    };
    p.in_stride = p.in_width() + 5;
    let bcx = rng.vec(tokens * p.in_stride, -1.0, 1.0);
    let weight = rng.vec(channels * kernel, -1.0, 1.0);
    let bias_host = rng.vec(channels, -0.5, 0.5);
    let slot = (kernel - 1) * channels;
    let state_host = rng.vec(3 * slot, -1.0, 1.0);
    let x = Tensor::from_f32(dev, "conv in", &[tokens, p.in_stride], &bcx)?;
    let w = Tensor::from_f32(dev, "conv", &[channels, kernel], &weight)?;
    let b = Tensor::from_f32(dev, "bias", &[channels], &bias_host)?;
    let state = Tensor::from_f32(dev, "state", &[3 * slot], &state_host)?;
    let out = Tensor::new_zeroed(dev, "out", &[tokens, channels], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::short_conv(&mut plan, &x, &w, bias.then_some(&b), &state, &out, &p)?;
    run(plan).await?;
    let (want, after, before_last) = reference::short_conv(&bcx, &weight, bias.then_some(&bias_host[..]), from_state.then(|| &state_host[slot..2 * slot]), &p);
    let mut got = out.read_f32(dev).await?;
    got.extend(state.read_f32(dev).await?);
    let mut want_all = want;
    // Slot 1 (the source) is left as it was.
    want_all.extend(after.iter().chain(&state_host[slot..2 * slot]).chain(&before_last).map(|&v| v as f64));
    let n_out = tokens * channels;
    let tol = ((kernel + 2) * (kernel + 2)) as f64 * U * if style == ops::ConvStyle::Silu { 1.1 } else { 1.0 } + 4.0 * U;
    let name = format!("short_conv {style:?} t={tokens} channels={channels} kernel={kernel} state={from_state} bias={bias}");
    Ok(compare(name, &got, &want_all, |i| if i < n_out { tol } else { 1e-30 }))
}

/// An `ssm_scan` case: `from_state` starts from a random state in slot 1 (else zeros); the
/// step writes slot 0 and, with several tokens, its checkpoint to slot 2. z and dt sit in
/// in-projection rows with other columns around them, as in Mamba2's.
#[derive(Debug, Clone, Copy)]
pub struct SsmCase {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub state: usize,
    pub groups: usize,
    pub from_state: bool,
}

/// Values as in trained Mamba2 layers: A = -exp(A_log) in [-8, -0.5], dt biases putting
/// softplus(dt) around 0.01 to 1, inputs in [-1, 1]. Tolerance per output: its terms' absolute
/// sum (`reference::ssm_scan`'s magnitude) times 4·(tokens + state + 16)·U — the recurrence
/// rounds once per token and the dot products once per state value — plus the chunked form's
/// exp(Σ dt·A) differences, each a sum of up to a chunk's products: 2·chunk·U more.
pub async fn check_ssm_scan(dev: &GpuDevice, case: SsmCase, seed: u64) -> Result<CheckResult> {
    let SsmCase { tokens, heads, head_dim, state, groups, from_state } = case;
    let mut rng = Rng::new(seed);
    let inner = heads * head_dim;
    let p = ops::SsmScanParams {
        tokens,
        heads,
        head_dim,
        state,
        groups,
        proj_stride: inner + heads + 5,
        dt_offset: inner + 3,
        dt_min: 0.0,
        dt_max: f32::MAX,
        src_slot: from_state.then_some(1),
        dst_slot: 0,
        snap_slot: (tokens > 1).then_some(2),
    };
    let xbc_host = rng.vec(tokens * p.xbc_stride(), -1.0, 1.0);
    let proj_host = rng.vec(tokens * p.proj_stride, -1.0, 1.0);
    let mut heads_host = rng.vec(heads, -8.0, -0.5);
    heads_host.extend(rng.vec(heads, -1.0, 1.0));
    heads_host.extend(rng.vec(heads, -4.0, 0.0));
    let slot = p.slot_len();
    let state_host = rng.vec(3 * slot, -1.0, 1.0);
    let xbc = Tensor::from_f32(dev, "x|B|C", &[tokens, p.xbc_stride()], &xbc_host)?;
    let proj = Tensor::from_f32(dev, "in-projection", &[tokens, p.proj_stride], &proj_host)?;
    let head_params = Tensor::from_f32(dev, "A|D|dt_bias", &[3 * heads], &heads_host)?;
    let state_t = Tensor::from_f32(dev, "state", &[3 * slot], &state_host)?;
    let out = Tensor::new_zeroed(dev, "out", &[tokens, inner], DType::F32)?;
    let chunk_states = Tensor::new_zeroed(dev, "chunk states", &[p.chunk_states_len().max(1)], DType::F32)?;
    let dt_cum = Tensor::new_zeroed(dev, "dt", &[p.dt_cum_len()], DType::F32)?;
    let mut plan = Plan::new(dev);
    let scratch = ops::SsmScratch { chunk_states: &chunk_states, dt_cum: &dt_cum };
    ops::ssm_scan(&mut plan, &xbc, &proj, &head_params, &state_t, &out, Some(scratch), &p)?;
    run(plan).await?;
    let [want, mag, after, before_last] = reference::ssm_scan(&xbc_host, &proj_host, &heads_host, from_state.then(|| &state_host[slot..2 * slot]), &p);
    let mut got = out.read_f32(dev).await?;
    got.extend(state_t.read_f32(dev).await?);
    let n_out = want.len();
    let mut want_all = want;
    let old = |range: std::ops::Range<usize>| state_host[range].iter().map(|&v| v as f64).collect::<Vec<_>>();
    want_all.extend(after);
    want_all.extend(old(slot..2 * slot));
    want_all.extend(if tokens > 1 { before_last } else { old(2 * slot..3 * slot) });
    let chunk = if tokens > 1 { p.chunk_len() } else { 1 };
    let per_term = (4 * (tokens + state + 16) + 2 * chunk) as f64 * U;
    let name = format!("ssm_scan t={tokens} heads={heads} head_dim={head_dim} state={state} groups={groups} from_state={from_state}");
    // States: each a sum over tokens of terms below 1 (and the old state, decayed).
    let state_tol = per_term * (tokens as f64 + 1.0);
    Ok(compare(name, &got, &want_all, |i| if i < n_out { per_term * mag[i].max(1e-3) } else { state_tol }))
}

/// DeepSeek-V3's router in small (with a selection bias, [`MoeCase::selection_bias`]): sigmoid
/// scores, 2 of 4 groups scored by their best two, weights scaled by 2.5.
pub const DEEPSEEK_V3_ROUTING: ops::Routing =
    ops::Routing { scoring: ops::RouterScoring::Sigmoid, groups: 4, groups_used: 2, group_score: ops::GroupScore::TopTwoSum, scale: 2.5 };

#[derive(Debug, Clone, Copy)]
pub struct MoeCase {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    pub inter: usize,
    pub dtype: DType,
    pub normalize: bool,
    pub bias: bool,
    /// Experts per weight chunk (a binding limit forced low), `None` for one chunk.
    pub experts_per_chunk: Option<usize>,
    /// A prefill's path: picks grouped by expert (`grouped_experts`), not one matvec per pick.
    pub grouped: bool,
    /// DeepSeek's routing (sigmoid scores, groups, a scale), or the plain one.
    pub routing: ops::Routing,
    /// A random per-expert bias for choosing (DeepSeek-V3's).
    pub selection_bias: bool,
    /// The experts' sum added to what the output holds (a shared expert's output).
    pub accumulate: bool,
}

/// A mixture-of-experts MLP: `moe_route` on random router logits (ids exact, weights within
/// 8·experts·U relative: a softmax), then `expert_gated_matvec` and `expert_matvec` (or, with
/// `grouped`, `grouped_experts`) over the route against `reference::moe_mlp`. Tolerance per output: the two chained dot products'
/// bound, (hidden + inter + 16)·U times the output's magnitude with the activation's error
/// carried through: Σ_picks w·Σ_i |down_i|·(1.2·|u_i|·|gate|_i + |act(g_i)|·|up|_i).
pub async fn check_moe(dev: &GpuDevice, case: MoeCase, seed: u64) -> Result<CheckResult> {
    let MoeCase { tokens, experts, top_k, hidden, inter, dtype, normalize, bias, experts_per_chunk, grouped, routing, selection_bias, accumulate } = case;
    let hidden = hidden.next_multiple_of(dtype.k_multiple());
    let inter = inter.next_multiple_of(dtype.k_multiple());
    let mut rng = Rng::new(seed);
    let logits_host = rng.vec(tokens * experts, -2.0, 2.0);
    let x_host = rng.vec(tokens * hidden, -1.0, 1.0);
    let gate_up = PackedMatrix::pack(dtype, experts * 2 * inter, hidden, &rng.vec(experts * 2 * inter * hidden, -0.5, 0.5));
    let down = PackedMatrix::pack(dtype, experts * hidden, inter, &rng.vec(experts * hidden * inter, -0.5, 0.5));
    let (bias_gu, bias_down) = (rng.vec(experts * 2 * inter, -0.5, 0.5), rng.vec(experts * hidden, -0.5, 0.5));
    let weight = |name: &str, rows: usize, k: usize, packed: &PackedMatrix| -> Result<Tensor> {
        let t = match experts_per_chunk {
            Some(per) => Tensor::new_weight_limited(dev, name, &[experts, rows, k], dtype, per as u64 * rows as u64 * (dtype.qs_row_bytes(k)))?,
            None => Tensor::new_weight(dev, name, &[experts, rows, k], dtype)?,
        };
        t.write_rows(dev, 0, packed.qs_bytes(), packed.scale_bytes())?;
        Ok(t)
    };
    let gate_up_t = weight("gate|up experts", 2 * inter, hidden, &gate_up)?;
    let down_t = weight("down experts", hidden, inter, &down)?;
    let logits = Tensor::from_f32(dev, "router logits", &[tokens, experts], &logits_host)?;
    let x = Tensor::from_f32(dev, "x", &[tokens, hidden], &x_host)?;
    let p = ops::MoeRouteParams { routing, ..ops::MoeRouteParams::new(tokens, experts, top_k, normalize) };
    let selection_host = rng.vec(experts, -0.2, 0.2);
    let selection = Tensor::from_f32(dev, "selection bias", &[experts], &selection_host)?;
    let selection = selection_bias.then_some(&selection);
    let route = Tensor::new_zeroed(dev, "route", &[p.route_len()], DType::F32)?;
    let act = Tensor::new_zeroed(dev, "expert activations", &[tokens * top_k, inter], DType::F32)?;
    let y0 = if accumulate { rng.vec(tokens * hidden, -1.0, 1.0) } else { vec![0.0; tokens * hidden] };
    let y = Tensor::from_f32(dev, "y", &[tokens, hidden], &y0)?;
    let b_gu = Tensor::from_f32(dev, "gate|up biases", &[experts * 2 * inter], &bias_gu)?;
    let b_down = Tensor::from_f32(dev, "down biases", &[experts * hidden], &bias_down)?;
    let slots = tokens * top_k;
    let groups = Tensor::new_zeroed(dev, "groups", &[ops::moe::groups_len(experts, slots)], DType::F32)?;
    let gate_up_out = Tensor::new_zeroed(dev, "pick gate|up", &[slots, 2 * inter], DType::F32)?;
    let down_out = Tensor::new_zeroed(dev, "pick down", &[slots, hidden], DType::F32)?;
    let mut plan = Plan::new(dev);
    ops::moe_route(&mut plan, &logits, selection, &route, &p)?;
    if grouped {
        let weights = ops::ExpertWeights { gate_up: &gate_up_t, down: &down_t, gate_up_bias: bias.then_some(&b_gu), down_bias: bias.then_some(&b_down) };
        let scratch = ops::GroupedScratch { groups: &groups, gate_up: &gate_up_out, act: &act, down: &down_out };
        ops::grouped_experts(&mut plan, weights, &x, &route, &scratch, &y, tokens, top_k, Activation::Silu, accumulate)?;
    } else {
        ops::expert_gated_matvec(&mut plan, &gate_up_t, &x, &route, bias.then_some(&b_gu), &act, tokens, top_k, Activation::Silu)?;
        ops::expert_matvec(&mut plan, &down_t, &act, &route, bias.then_some(&b_down), &y, tokens, top_k, accumulate)?;
    }
    run(plan).await?;
    let name = format!(
        "moe {}{} t={tokens} {top_k} of {experts} {hidden}x{inter}{}{}{}{}{}, {} chunks",
        if grouped { "grouped " } else { "" },
        dtype.name(),
        if normalize { " normalized" } else { "" },
        if bias { " +bias" } else { "" },
        if routing == ops::Routing::default() { String::new() } else { format!(" {routing:?}") },
        if selection_bias { " +selection bias" } else { "" },
        if accumulate { " accumulated" } else { "" },
        gate_up_t.chunks.len()
    );
    let routes = reference::moe_route_with(&logits_host, &p, selection_bias.then_some(&selection_host[..]));
    let got_route = route.read_u32(dev).await?;
    for (t, picks) in routes.iter().enumerate() {
        for (j, &(e, w)) in picks.iter().enumerate() {
            let (got_e, got_w) = (got_route[t * 2 * top_k + j], f32::from_bits(got_route[t * 2 * top_k + top_k + j]));
            if got_e != e || (got_w as f64 - w).abs() > 8.0 * experts as f64 * U * w {
                return Ok(exact(name, false, format!("token {t} pick {j}: gpu expert {got_e} weight {got_w}, reference {e} {w}")));
            }
        }
    }
    let (gu, dn) = (gate_up.dequantize(), down.dequantize());
    let (mut want, mut tol) = (Vec::new(), Vec::new());
    for (t, picks) in routes.iter().enumerate() {
        let xt = &x_host[t * hidden..(t + 1) * hidden];
        let (out, mag) = reference::moe_mlp(xt, picks, &gu, &dn, bias.then_some((&bias_gu[..], &bias_down[..])), inter, hidden, Activation::Silu);
        // The activation's error carried through the down projection.
        let mut carried = vec![0f64; hidden];
        for &(e, w) in picks {
            let e = e as usize;
            let rows = &gu[e * 2 * inter * hidden..(e + 1) * 2 * inter * hidden];
            let proj = reference::matvec(rows, xt, None, 2 * inter);
            let size = reference::abs_dot(rows, xt, 2 * inter);
            for r in 0..hidden {
                let row = &dn[(e * hidden + r) * inter..(e * hidden + r + 1) * inter];
                carried[r] += w
                    * (0..inter)
                        .map(|i| {
                            row[i].abs() as f64
                                * (1.2 * proj[inter + i].abs() * size[i] + reference::activation(Activation::Silu, proj[i]).abs() * size[inter + i])
                        })
                        .sum::<f64>();
            }
        }
        let y0 = &y0[t * hidden..(t + 1) * hidden];
        tol.extend(mag.iter().zip(&carried).zip(y0).map(|((m, c), y)| (hidden + inter + 16) as f64 * U * (m + c + y.abs() as f64) + 1e-7));
        want.extend(out.iter().zip(y0).map(|(o, &y)| o + y as f64));
    }
    let got = y.read_f32(dev).await?;
    Ok(compare(name, &got, &want, |i| tol[i]))
}

/// The suite the browser runs: every kernel and weight format once, at odd sizes.
pub async fn run_suite(dev: &GpuDevice) -> Vec<(String, Result<CheckResult>)> {
    let mut results = Vec::new();
    macro_rules! check {
        ($label:expr, $e:expr) => {
            results.push(($label.to_string(), $e.await));
        };
    }
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        check!(format!("matvec {}", dtype.name()), check_matvec(dev, dtype, 37, 96, i % 2 == 0, 1 + i as u64));
        check!(format!("matvec {} normed", dtype.name()), check_matvec_folded(dev, dtype, 37, 96, i % 2 == 1, true, None, 40 + i as u64));
        check!(format!("matvec {} accumulate", dtype.name()), check_matvec_folded(dev, dtype, 37, 96, i % 2 == 0, false, Some(0.5), 50 + i as u64));
        check!(format!("matmul {}", dtype.name()), check_matmul(dev, dtype, 40, 37, 96, i % 2 == 1, 11 + i as u64));
        check!(format!("embedding {}", dtype.name()), check_embedding(dev, dtype, 53, 64, 1.5, 21 + i as u64));
        check!(format!("fused projections {}", dtype.name()), check_fused_projections(dev, dtype, 3, i % 2 == 0, 25 + i as u64));
        let act = if i % 2 == 0 { Activation::Silu } else { Activation::GeluTanh };
        check!(format!("gated_matvec {}", dtype.name()), check_gated_matvec(dev, dtype, act, 37, 96, i % 3 == 0, i % 2 == 1, 28 + i as u64));
    }
    // Three query tiles, and two key blocks for the last (a WGSL compiler once kept one block's
    // scores into the next).
    let prefill = AttentionCase { tokens: 20, hq: 4, hkv: 2, d: 64, pos0: 60, window: 0, softcap: 0.0, causal: true, sinks: false };
    check!("attention prefill", check_attention(dev, prefill, 31));
    let decode = AttentionCase { tokens: 1, hq: 4, hkv: 1, d: 32, pos0: 600, window: 0, softcap: 0.0, causal: true, sinks: true };
    check!("attention decode", check_attention(dev, decode, 32));
    let windowed = AttentionCase { tokens: 5, hq: 2, hkv: 2, d: 16, pos0: 9, window: 4, softcap: 30.0, causal: true, sinks: false };
    check!("attention window+softcap", check_attention(dev, windowed, 33));
    let bidirectional = AttentionCase { tokens: 20, hq: 4, hkv: 2, d: 64, pos0: 0, window: 8, softcap: 0.0, causal: false, sinks: false };
    check!("attention bidirectional, symmetric window", check_attention(dev, bidirectional, 34));
    // MLA's latent heads: 512 + 64 wide, one kv head (the wide variant, 4 queries per tile).
    let latent = AttentionCase { tokens: 9, hq: 3, hkv: 1, d: 576, pos0: 5, window: 0, softcap: 0.0, causal: true, sinks: false };
    check!("attention MLA-wide heads, prefill", check_attention(dev, latent, 35));
    check!("attention MLA-wide heads, split decode", check_attention(dev, AttentionCase { tokens: 1, pos0: 300, ..latent }, 36));
    check!("head_linear decode", check_head_linear(dev, DType::Q8, 1, 3, 40, 24, 37));
    check!("head_linear prefill", check_head_linear(dev, DType::Q4K, 11, 3, 70, 256, 38));
    check!("latent_rope_append", check_latent_rope_append(dev, RopeLayout::Interleaved, 5, 3, 32, 16, 4, 39));
    check!("rms_norm", check_rms_norm(dev, 3, 1000, true, 0.0, 41));
    check!("head_rms_norm", check_head_rms_norm(dev, 3, 4, 32, 70, 1.0, 42));
    check!("logit_softcap", check_logit_softcap(dev, 1001, 30.0, 43));
    let rope = RopeCase { layout: RopeLayout::Neox, tokens: 3, heads_q: 4, heads_kv: 2, d: 64, rot_dims: 64, pos0: 100 };
    check!("rope_kv_append neox", check_rope_kv_append(dev, rope, 51));
    check!("rope_kv_append interleaved, partial", check_rope_kv_append(dev, RopeCase { layout: RopeLayout::Interleaved, rot_dims: 32, ..rope }, 52));
    check!("gated_activation silu", check_gated_activation(dev, Activation::Silu, 3, 173, 71));
    check!("gated_activation gelu", check_gated_activation(dev, Activation::GeluTanh, 3, 173, 72));
    let conv = ShortConvCase { tokens: 5, channels: 70, kernel: 3, style: ops::ConvStyle::GatedBcx, from_state: true, bias: true };
    check!("short_conv prefill from a state", check_short_conv(dev, conv, 61));
    check!("short_conv decode", check_short_conv(dev, ShortConvCase { tokens: 1, bias: false, ..conv }, 62));
    check!("short_conv from zeros", check_short_conv(dev, ShortConvCase { tokens: 2, from_state: false, kernel: 4, ..conv }, 63));
    let silu = ShortConvCase { kernel: 4, style: ops::ConvStyle::Silu, ..conv };
    check!("short_conv silu (Mamba2) prefill", check_short_conv(dev, silu, 64));
    check!("short_conv silu (Mamba2) decode", check_short_conv(dev, ShortConvCase { tokens: 1, ..silu }, 65));
    let ssm = SsmCase { tokens: 70, heads: 4, head_dim: 24, state: 16, groups: 2, from_state: true };
    check!("ssm_scan prefill (two chunks)", check_ssm_scan(dev, ssm, 66));
    check!("ssm_scan decode", check_ssm_scan(dev, SsmCase { tokens: 1, ..ssm }, 67));
    check!("softmax", check_softmax(dev, 2, 1001, 0.7, 81));
    check!("argmax", check_argmax(dev, 1001, false, 91));
    check!("argmax masked", check_argmax(dev, 1001, true, 93));
    check!("top_k", check_top_k(dev, 1001, 40, 92));
    let moe = MoeCase {
        tokens: 1,
        experts: 8,
        top_k: 2,
        hidden: 64,
        inter: 40,
        dtype: DType::Q4,
        normalize: true,
        bias: false,
        experts_per_chunk: None,
        grouped: false,
        routing: ops::Routing::default(),
        selection_bias: false,
        accumulate: false,
    };
    check!("moe decode", check_moe(dev, moe, 101));
    let prefill = MoeCase { tokens: 7, experts: 6, top_k: 3, dtype: DType::Q4K, normalize: false, bias: true, experts_per_chunk: Some(4), ..moe };
    check!("moe prefill, biases, two chunks", check_moe(dev, prefill, 102));
    check!("moe grouped prefill, biases, two chunks", check_moe(dev, MoeCase { tokens: 19, grouped: true, ..prefill }, 103));
    let deepseek = MoeCase { experts: 16, top_k: 4, normalize: true, routing: DEEPSEEK_V3_ROUTING, selection_bias: true, accumulate: true, ..moe };
    check!("moe DeepSeek-V3 routing onto a shared expert's output", check_moe(dev, deepseek, 104));
    check!("moe DeepSeek-V3 routing, grouped prefill", check_moe(dev, MoeCase { tokens: 19, grouped: true, ..deepseek }, 105));
    results
}
