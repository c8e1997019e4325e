//! CPU reference for every kernel: plain loops, f64 accumulation, no shared code with the
//! shaders beyond the documented weight formats (weights arrive already dequantised by
//! `PackedMatrix::dequantize`). Only tests, the wasm self-test and benchmarks use it.

use crate::ops::{Activation, ConvStyle, RopeLayout, ShortConvParams, SsmScanParams};

/// y[r] = Σ_j w[r, j] · x[j] (+ bias[r]).
pub fn matvec(w: &[f32], x: &[f32], bias: Option<&[f32]>, rows: usize) -> Vec<f64> {
    let k = x.len();
    (0..rows)
        .map(|r| {
            let dot: f64 = (0..k).map(|j| w[r * k + j] as f64 * x[j] as f64).sum();
            dot + bias.map_or(0.0, |b| b[r] as f64)
        })
        .collect()
}

/// Σ_j |w[r, j] · x[j]| per row: the scale of the rounding error of a dot product.
pub fn abs_dot(w: &[f32], x: &[f32], rows: usize) -> Vec<f64> {
    let k = x.len();
    (0..rows).map(|r| (0..k).map(|j| (w[r * k + j] as f64 * x[j] as f64).abs()).sum()).collect()
}

/// Y[m, n] = Σ_j X[m, j] · W[n, j] (+ bias[n]).
pub fn matmul(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        y.extend(matvec(w, &x[i * k..(i + 1) * k], bias, n));
    }
    y
}

pub struct AttentionShape {
    pub tokens: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub s_max: usize,
    pub pos0: usize,
    pub window: usize,
    pub causal: bool,
    pub scale: f64,
    pub softcap: f64,
    pub q_stride: usize,
}

/// Softmax(q·kᵀ·scale, masked as `ops::visible_keys` says, optional soft-cap)·v; q: [tokens, q_stride], caches
/// [hkv, s_max, d]; returns [tokens, hq, d].
pub fn attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: &AttentionShape) -> Vec<f64> {
    attention_with_sinks(q, k_cache, v_cache, s, None)
}

/// [`attention`] with GPT-OSS's sinks: head h's softmax also counts a logit `sinks[h]` that
/// weighs no value (transformers appends it to the scores and drops its column).
pub fn attention_with_sinks(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: &AttentionShape, sinks: Option<&[f32]>) -> Vec<f64> {
    let mut out = vec![0f64; s.tokens * s.hq * s.d];
    for t in 0..s.tokens {
        let keys = crate::ops::visible_keys(s.causal, s.window, s.pos0 + t, s.pos0 + s.tokens - 1);
        for h in 0..s.hq {
            let kvh = h / (s.hq / s.hkv);
            let qv = &q[t * s.q_stride + h * s.d..t * s.q_stride + (h + 1) * s.d];
            let scores: Vec<f64> = keys
                .clone()
                .map(|j| {
                    let k = &k_cache[(kvh * s.s_max + j) * s.d..][..s.d];
                    let mut v: f64 = qv.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * s.scale;
                    if s.softcap > 0.0 {
                        v = s.softcap * (v / s.softcap).tanh();
                    }
                    v
                })
                .collect();
            let probs = match sinks {
                Some(sinks) => {
                    let mut with_sink = scores.clone();
                    with_sink.push(sinks[h] as f64);
                    let mut p = softmax_row(&with_sink);
                    p.pop();
                    p
                }
                None => softmax_row(&scores),
            };
            for (pj, j) in probs.iter().zip(keys.clone()) {
                let v = &v_cache[(kvh * s.s_max + j) * s.d..][..s.d];
                for i in 0..s.d {
                    out[(t * s.hq + h) * s.d + i] += pj * v[i] as f64;
                }
            }
        }
    }
    out
}

pub fn softmax_row(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Returns (normalised rows, new residual if any).
pub fn rms_norm(x: &[f32], weight: &[f32], residual: Option<(&[f32], f32)>, eps: f64, offset: f64) -> (Vec<f64>, Vec<f64>) {
    let cols = weight.len();
    let h: Vec<f64> = match residual {
        Some((r, scale)) => x.iter().zip(r).map(|(a, b)| scale as f64 * *a as f64 + *b as f64).collect(),
        None => x.iter().map(|&a| a as f64).collect(),
    };
    let mut out = Vec::with_capacity(h.len());
    for row in h.chunks(cols) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * inv * (*w as f64 + offset)));
    }
    (out, h)
}

/// RMS-normalises `heads` vectors of `weight.len()` from column `first` of every row of `x`
/// (rows of `row_stride`), leaving other values as they are.
pub fn head_rms_norm(x: &[f32], weight: &[f32], heads: usize, first: usize, row_stride: usize, eps: f64, offset: f64) -> Vec<f64> {
    let d = weight.len();
    let span = first..first + heads * d;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(row_stride) {
        let (normed, _) = rms_norm(&row[span.clone()], weight, None, eps, offset);
        out.extend(row[..span.start].iter().map(|&v| v as f64));
        out.extend(normed);
        out.extend(row[span.end..].iter().map(|&v| v as f64));
    }
    out
}

/// A `latent_rope_append` layout for checks: q heads of nope + rope, rows and the latent with
/// gaps around them, so an op that reads or writes outside its parts is caught.
pub fn gapped_latent_layout(tokens: usize, heads: usize, latent: usize, nope: usize, rope: usize, pos0: usize) -> crate::ops::LatentRopeParams {
    crate::ops::LatentRopeParams {
        tokens,
        heads,
        latent,
        pos0,
        q_stride: heads * (nope + rope) + 3,
        q_offset: nope,
        q_head_step: nope + rope,
        kv_stride: latent + rope + 5,
        kv_offset: 5,
    }
}

/// A `head_linear` layout for checks: heads of `k` inputs and `rows` outputs with gaps between
/// them and around the rows.
pub fn gapped_head_layout(tokens: usize, heads: usize, rows: usize, k: usize) -> crate::ops::HeadLinearParams {
    crate::ops::HeadLinearParams {
        tokens,
        heads,
        x_stride: heads * (k + 8) + 4,
        x_offset: 4,
        x_head_step: k + 8,
        y_stride: heads * (rows + 3) + 5,
        y_offset: 2,
        y_head_step: rows + 3,
    }
}

/// `head_linear`'s expected output over a zeroed `y` of `p`'s layout, and each output's scale
/// (the absolute dot): `w` `[heads · rows, k]` dequantised.
pub fn head_linear(w: &[f32], x: &[f32], rows: usize, k: usize, p: &crate::ops::HeadLinearParams) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut scale) = (vec![0f64; p.tokens * p.y_stride], vec![0f64; p.tokens * p.y_stride]);
    for t in 0..p.tokens {
        for h in 0..p.heads {
            let xs = &x[t * p.x_stride + p.x_offset + h * p.x_head_step..][..k];
            let wh = &w[h * rows * k..(h + 1) * rows * k];
            let at = t * p.y_stride + p.y_offset + h * p.y_head_step;
            want[at..at + rows].copy_from_slice(&matvec(wh, xs, None, rows));
            scale[at..at + rows].copy_from_slice(&abs_dot(wh, xs, rows));
        }
    }
    (want, scale)
}

/// MLA's rotary embedding and cache write on copies of `query` and `cache` (see
/// `ops::latent_rope_append`): each head's rope query part from `q`, rotated with the (cos, sin)
/// table `[positions][rope/2]`, after its latent part; each token's latent and rotated rope key
/// from `kv` into cache row `pos0 + t`.
#[allow(clippy::too_many_arguments)]
pub fn latent_rope_append(
    q: &[f32],
    kv: &[f32],
    query: &[f32],
    cache: &[f32],
    table: &[f32],
    rope: usize,
    layout: RopeLayout,
    p: &crate::ops::LatentRopeParams,
) -> (Vec<f64>, Vec<f64>) {
    let (d, half) = (p.latent + rope, rope / 2);
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (mut query, mut cache) = (widen(query), widen(cache));
    for t in 0..p.tokens {
        for h in 0..p.heads {
            rotate_into(&q[t * p.q_stride + p.q_offset + h * p.q_head_step..], &mut query[(t * p.heads + h) * d + p.latent..], table, p.pos0 + t, half, layout);
        }
        let src = &kv[t * p.kv_stride + p.kv_offset..][..d];
        let row = &mut cache[(p.pos0 + t) * d..][..d];
        for (o, &v) in row[..p.latent].iter_mut().zip(src) {
            *o = v as f64;
        }
        rotate_into(&src[p.latent..], &mut row[p.latent..], table, p.pos0 + t, half, layout);
    }
    (query, cache)
}

/// cap · tanh(x / cap).
pub fn logit_softcap(x: &[f32], cap: f64) -> Vec<f64> {
    x.iter().map(|&v| cap * (v as f64 / cap).tanh()).collect()
}

/// Rotates in a copy of `x` using the (cos, sin) table `[positions][rot/2]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f32],
    table: &[f32],
    rot_dims: usize,
    layout: RopeLayout,
    tokens: usize,
    heads: usize,
    d: usize,
    head_offset: usize,
    row_stride: usize,
    pos0: usize,
) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let half = rot_dims / 2;
    for t in 0..tokens {
        for h in 0..heads {
            let base = t * row_stride + (head_offset + h) * d;
            rotate_into(&x[base..], &mut out[base..], table, pos0 + t, half, layout);
        }
    }
    out
}

/// The first 2·`half` dims of `src` rotated at position `pos` (the (cos, sin) table
/// `[positions][half]`) into `dst`, dims paired as `layout` says.
fn rotate_into(src: &[f32], dst: &mut [f64], table: &[f32], pos: usize, half: usize, layout: RopeLayout) {
    for i in 0..half {
        let (c, s) = (table[(pos * half + i) * 2] as f64, table[(pos * half + i) * 2 + 1] as f64);
        let (ia, ib) = match layout {
            RopeLayout::Neox => (i, i + half),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (a, b) = (src[ia] as f64, src[ib] as f64);
        dst[ia] = a * c - b * s;
        dst[ib] = b * c + a * s;
    }
}

/// The gate's activation (GPT-OSS's: g · sigmoid(alpha · g) with g = min(gate, limit)).
pub fn activation(act: Activation, g: f64) -> f64 {
    match act {
        Activation::Silu => g / (1.0 + (-g).exp()),
        Activation::GeluTanh => {
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            0.5 * g * (1.0 + inner.tanh())
        }
        Activation::SwigluOai { alpha, limit } => {
            let g = g.min(limit as f64);
            g / (1.0 + (-(alpha as f64) * g).exp())
        }
    }
}

/// The gated MLP's act(gate) · up; GPT-OSS's clamps up to ±limit and adds 1.
pub fn gated(act: Activation, g: f64, u: f64) -> f64 {
    match act {
        Activation::SwigluOai { limit, .. } => activation(act, g) * (u.clamp(-(limit as f64), limit as f64) + 1.0),
        _ => activation(act, g) * u,
    }
}

/// act(gate) · up over [rows, 2·inter] fused rows.
pub fn gated_activation(gate_up: &[f32], inter: usize, act: Activation) -> Vec<f64> {
    gate_up.chunks(2 * inter).flat_map(|row| (0..inter).map(move |i| gated(act, row[i] as f64, row[inter + i] as f64))).collect()
}

/// Index of the largest value, lowest index on ties, NaN skipped; 0 if none.
pub fn argmax(x: &[f32]) -> u32 {
    top_k(x, 1).first().map_or(0, |&(i, _)| i)
}

/// [`argmax`] over the allowed columns only; `u32::MAX` when none is allowed (or all are NaN).
pub fn masked_argmax(x: &[f32], allowed: &[bool]) -> u32 {
    let kept: Vec<f32> = x.iter().zip(allowed).map(|(&v, &a)| if a { v } else { f32::NAN }).collect();
    top_k(&kept, 1).first().map_or(u32::MAX, |&(i, _)| i)
}

/// The k largest (index, value), descending, ties by lower index, NaN skipped.
pub fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..x.len() as u32).filter(|&i| !x[i as usize].is_nan()).collect();
    idx.sort_by(|&a, &b| x[b as usize].partial_cmp(&x[a as usize]).unwrap().then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, x[i as usize])).collect()
}

/// The `short_conv` op ([`ShortConvParams`] says where the blocks lie in the input rows): per
/// token and channel, LFM2's `C · (bias + Σ_j w[c, j] · bx[t - (kernel-1) + j])` with
/// `bx = B · x`, or Mamba2's `silu(bias + Σ_j w[c, j] · x[t - (kernel-1) + j])`, the inputs
/// before the first token taken from `state` (`[kernel-1][channels]`, oldest first; zeros when
/// `None`). Returns the outputs, the state after every token and the state after all but the last.
pub fn short_conv(input: &[f32], weight: &[f32], bias: Option<&[f32]>, state: Option<&[f32]>, p: &ShortConvParams) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
    let (tokens, channels, kernel) = (p.tokens, p.channels, p.kernel);
    let past = kernel - 1;
    let row = |t: usize| &input[t * p.in_stride + p.in_offset..][..p.in_width()];
    // history[i][c]: the state's inputs, then each token's convolved input.
    let mut history: Vec<Vec<f32>> = (0..past).map(|j| (0..channels).map(|c| state.map_or(0.0, |s| s[j * channels + c])).collect()).collect();
    for t in 0..tokens {
        let r = row(t);
        history.push(match p.style {
            ConvStyle::GatedBcx => (0..channels).map(|c| r[c] * r[2 * channels + c]).collect(),
            ConvStyle::Silu => r.to_vec(),
        });
    }
    let mut out = Vec::with_capacity(tokens * channels);
    for t in 0..tokens {
        for c in 0..channels {
            let conv: f64 = (0..kernel).map(|j| weight[c * kernel + j] as f64 * history[t + j][c] as f64).sum::<f64>() + bias.map_or(0.0, |b| b[c] as f64);
            out.push(match p.style {
                ConvStyle::GatedBcx => row(t)[channels + c] as f64 * conv,
                ConvStyle::Silu => conv / (1.0 + (-conv).exp()),
            });
        }
    }
    let state_at = |n: usize| history[n..n + past].concat();
    (out, state_at(tokens), state_at(tokens - 1))
}

/// The `ssm_scan` op (Mamba2's selective scan and gate) token by token, in f64: per head h,
/// `dt = clamp(softplus(dt_raw + dt_bias))`, `s = exp(dt·A)·s + dt·x ⊗ B`,
/// `y = (s·C + D·x) · silu(z)`, from `state` (`[heads][state][head_dim]`, zeros when `None`).
/// Returns the outputs, a magnitude per output (the same sums over absolute values, for
/// tolerances), the state after every token and the state before the last.
pub fn ssm_scan(xbc: &[f32], proj: &[f32], head_params: &[f32], state: Option<&[f32]>, p: &SsmScanParams) -> [Vec<f64>; 4] {
    let (hs, pd, ns) = (p.heads, p.head_dim, p.state);
    let xs = p.xbc_stride();
    let mut s: Vec<f64> = state.map_or(vec![0.0; p.slot_len()], |st| st[..p.slot_len()].iter().map(|&v| v as f64).collect());
    let mut s_abs: Vec<f64> = s.iter().map(|v| v.abs()).collect();
    let (mut out, mut mag) = (Vec::with_capacity(p.tokens * p.inner()), Vec::with_capacity(p.tokens * p.inner()));
    let mut before_last = s.clone();
    for t in 0..p.tokens {
        if t + 1 == p.tokens {
            before_last = s.clone();
        }
        let row = &xbc[t * xs..][..xs];
        let prow = &proj[t * p.proj_stride..][..p.proj_stride];
        for h in 0..hs {
            let g = h / (hs / p.groups);
            let (b, c) = (&row[p.inner() + g * ns..][..ns], &row[p.inner() + (p.groups + g) * ns..][..ns]);
            let raw = prow[p.dt_offset + h] as f64 + head_params[2 * hs + h] as f64;
            let dt = (if raw > 20.0 { raw } else { raw.exp().ln_1p() }).clamp(p.dt_min as f64, p.dt_max as f64);
            let decay = (dt * head_params[h] as f64).exp();
            for ch in 0..pd {
                let x = row[h * pd + ch] as f64;
                let (mut y, mut y_abs) = (0.0, 0.0);
                for n in 0..ns {
                    let i = (h * ns + n) * pd + ch;
                    s[i] = decay * s[i] + dt * x * b[n] as f64;
                    s_abs[i] = decay * s_abs[i] + dt * (x * b[n] as f64).abs();
                    y += s[i] * c[n] as f64;
                    y_abs += s_abs[i] * (c[n] as f64).abs();
                }
                let d = head_params[hs + h] as f64;
                let z = prow[h * pd + ch] as f64;
                let gate = z / (1.0 + (-z).exp());
                out.push((y + d * x) * gate);
                mag.push((y_abs + (d * x).abs()) * gate.abs());
            }
        }
    }
    [out, mag, s, before_last]
}

/// A mixture-of-experts router over [tokens, experts] logits: per token, the `picks_per_token` experts by
/// logit (ties to the lower index, NaN never picked) and their weights — the softmax over all
/// experts at the picks, divided by the picks' sum when `normalize`.
pub fn moe_route(logits: &[f32], experts: usize, picks_per_token: usize, normalize: bool) -> Vec<Vec<(u32, f64)>> {
    let p = crate::ops::MoeRouteParams::new(logits.len() / experts.max(1), experts, picks_per_token, normalize);
    moe_route_with(logits, &p, None)
}

/// [`moe_route`] with DeepSeek's routing (`p.routing`): sigmoid scores, a selection bias added
/// to the scores for ranking only, the picks limited to the best groups (scored by their best
/// key or best two summed), the weights scaled.
pub fn moe_route_with(logits: &[f32], p: &crate::ops::MoeRouteParams, selection_bias: Option<&[f32]>) -> Vec<Vec<(u32, f64)>> {
    use crate::ops::{GroupScore, RouterScoring};
    let r = &p.routing;
    let top2 = r.group_score == GroupScore::TopTwoSum;
    logits
        .chunks(p.experts)
        .take(p.tokens)
        .map(|row| {
            let top = row.iter().filter(|v| !v.is_nan()).fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = row.iter().map(|&v| (v as f64 - top).exp()).filter(|v| !v.is_nan()).sum();
            let score = |v: f32| match r.scoring {
                RouterScoring::Softmax => (v as f64 - top).exp() / total,
                RouterScoring::Sigmoid => 1.0 / (1.0 + (-(v as f64)).exp()),
            };
            let key = |e: usize| match selection_bias {
                Some(b) => score(row[e]) + b[e] as f64,
                None if top2 => score(row[e]),
                None => row[e] as f64,
            };
            let valid: Vec<usize> = (0..p.experts).filter(|&e| !row[e].is_nan()).collect();
            let per = p.experts / r.groups;
            let rank = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            let mut groups: Vec<(f64, usize)> = (0..r.groups)
                .map(|g| {
                    let mut keys: Vec<f64> = valid.iter().filter(|&&e| e / per == g).map(|&e| key(e)).collect();
                    keys.sort_by(|a, b| b.total_cmp(a));
                    let s = match keys.as_slice() {
                        [] => -3.0e38,
                        [a, b, ..] if top2 => a + b,
                        [a, ..] => *a,
                    };
                    (s, g)
                })
                .collect();
            groups.sort_by(rank);
            let allowed: Vec<usize> = if r.groups > 1 { groups[..r.groups_used].iter().map(|g| g.1).collect() } else { vec![0] };
            let mut ranked: Vec<(f64, usize)> = valid.iter().filter(|&&e| allowed.contains(&(e / per))).map(|&e| (key(e), e)).collect();
            ranked.sort_by(rank);
            let picks: Vec<(u32, f64)> = ranked.iter().take(p.top_k).map(|&(_, e)| (e as u32, score(row[e]))).collect();
            let picked: f64 = picks.iter().map(|pick| pick.1).sum();
            let denominator = if p.normalize { picked + 1e-20 } else { 1.0 };
            picks.into_iter().map(|(e, w)| (e, w / denominator * r.scale as f64)).collect()
        })
        .collect()
}

/// A mixture's MLP for one token `x` (k values) given its picks `(expert, weight)`: the sum of
/// weight · down_e · (act(gate_e·x + bg) · (up_e·x + bu)) + weight · bd_e, with `gate_up`
/// `[experts, 2·inter, k]` (gate rows, then up rows, per expert), `down` `[experts, n, inter]`
/// and biases `[experts, rows]`. Also returns each output's magnitude: its terms' absolute sum.
#[allow(clippy::too_many_arguments)]
pub fn moe_mlp(
    x: &[f32],
    picks: &[(u32, f64)],
    gate_up: &[f32],
    down: &[f32],
    biases: Option<(&[f32], &[f32])>,
    inter: usize,
    n: usize,
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let k = x.len();
    let (mut out, mut mag) = (vec![0f64; n], vec![0f64; n]);
    for &(e, w) in picks {
        let e = e as usize;
        let gu = &gate_up[e * 2 * inter * k..(e + 1) * 2 * inter * k];
        let bias_gu = biases.map(|(b, _)| &b[e * 2 * inter..(e + 1) * 2 * inter]);
        let proj = matvec(gu, x, bias_gu, 2 * inter);
        let hidden: Vec<f64> = (0..inter).map(|i| w * gated(act, proj[i], proj[inter + i])).collect();
        let dn = &down[e * n * inter..(e + 1) * n * inter];
        for r in 0..n {
            let row = &dn[r * inter..(r + 1) * inter];
            let bias = biases.map_or(0.0, |(_, b)| w * b[e * n + r] as f64);
            out[r] += row.iter().zip(&hidden).map(|(&a, &h)| a as f64 * h).sum::<f64>() + bias;
            mag[r] += row.iter().zip(&hidden).map(|(&a, &h)| (a as f64 * h).abs()).sum::<f64>() + bias.abs();
        }
    }
    (out, mag)
}
