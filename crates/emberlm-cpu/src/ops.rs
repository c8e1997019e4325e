//! The ops of a transformer step on [`CpuTensor`]s, with the arguments and layouts of their GPU
//! twins in `emberlm_core::ops` (see each for the semantics); the model code calls one or the
//! other through the backend trait in `emberlm-models`.

use emberlm_core::ops::{Activation, AttentionParams, ConvStyle, HeadLinearParams, LatentRopeParams, RopeLayout, ShortConvParams, SsmScanParams};
use emberlm_core::{DType, Error, Result};

use crate::int8::{Activations, Int8Activations};
use crate::math;
use crate::matvec::{matmul_rows, matvec_rows, row_words, RowActivations, RowKernels};
use crate::parallel::{for_parts, map_ranges};
use crate::tensor::CpuTensor;

fn shape<T>(op: &'static str, detail: String) -> Result<T> {
    Err(Error::Shape { op, detail })
}

/// out[t] = table[ids[t]] · scale.
pub fn embedding(ids: &CpuTensor, table: &CpuTensor, out: &CpuTensor, tokens: usize, scale: f32) -> Result<()> {
    let _time = crate::profile::scope("embedding");
    let (vocab, k) = (table.rows(), table.k());
    out.expect_f32("embedding", tokens * k)?;
    let ids = ids.words();
    let (qs, sc) = (table.words(), table.scale_words());
    let (qw, sw) = row_words(table.dtype, k);
    let mut out = out.f32s_mut();
    for (t, row) in out[..tokens * k].chunks_exact_mut(k).enumerate() {
        let id = ids[t] as usize;
        if id >= vocab {
            return shape("embedding", format!("token id {id} is outside the table of {vocab} rows"));
        }
        crate::matvec::dequantize_row_fast(table.dtype, &qs[id * qw..(id + 1) * qw], &sc[id * sw..(id + 1) * sw], row);
        row.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(())
}

/// y[y_offset..] = W · x[x_row] (+ bias): one token; `activations` says whether x is rounded to
/// 8 bits for Q4/Q8 weights.
#[allow(clippy::too_many_arguments)]
pub fn matvec_into(
    w: &CpuTensor,
    x: &CpuTensor,
    x_row: usize,
    bias: Option<&CpuTensor>,
    y: &CpuTensor,
    y_offset: usize,
    activations: Activations,
) -> Result<()> {
    let _time = crate::profile::scope(match w.dtype {
        DType::F32 => "matvec f32",
        DType::F16 => "matvec f16",
        DType::Q8 => "matvec q8",
        DType::Q4 => "matvec q4",
        DType::Q4K => "matvec q4k",
        DType::Q5K => "matvec q5k",
        DType::Q6K => "matvec q6k",
        DType::Mxfp4 => "matvec mxfp4",
    });
    let (rows, k) = (w.rows(), w.k());
    x.expect_f32("matvec", (x_row + 1) * k)?;
    y.expect_f32("matvec", y_offset + rows)?;
    x.expect_distinct("matvec", y)?;
    let x = x.f32s();
    let x = &x[x_row * k..(x_row + 1) * k];
    let kernels = RowKernels::get();
    let prepared = RowActivations::new(kernels, w.dtype, x, activations);
    let (qs, sc) = (w.words(), w.scale_words());
    let (qs, sc) = (&*qs, &*sc);
    let mut y = y.f32s_mut();
    let y = &mut y[y_offset..y_offset + rows];
    let dtype = w.dtype;
    for_parts(y, 16, |start, part| matvec_rows(kernels, dtype, qs, sc, k, x, &prepared, start, part));
    add_bias(bias, y, 1, rows, 0)
}

/// y[t, h] = W_h · x[t, h] for every head of a per-head projection (MLA's up-projections;
/// `emberlm_core::ops::head_linear`): `w` is `[heads · rows, k]`, x and y laid out as `p` says.
pub fn head_linear(w: &CpuTensor, x: &CpuTensor, y: &CpuTensor, p: &HeadLinearParams, activations: Activations) -> Result<()> {
    const OP: &str = "head_linear";
    let _time = crate::profile::scope(OP);
    let k = w.k();
    if p.heads == 0 || p.tokens == 0 || w.rows() % p.heads != 0 {
        return shape(OP, format!("`{}` ({} rows) is not {} heads' rows", w.name, w.rows(), p.heads));
    }
    let rows = w.rows() / p.heads;
    let last = |stride: usize, offset: usize, step: usize, len: usize| (p.tokens - 1) * stride + offset + (p.heads - 1) * step + len;
    x.expect_f32(OP, last(p.x_stride, p.x_offset, p.x_head_step, k))?;
    y.expect_f32(OP, last(p.y_stride, p.y_offset, p.y_head_step, rows))?;
    x.expect_distinct(OP, y)?;
    let (x, kernels, dtype) = (x.f32s(), RowKernels::get(), w.dtype);
    let (qs, sc) = (w.words(), w.scale_words());
    let (qs, sc) = (&*qs, &*sc);
    let mut y = y.f32s_mut();
    for t in 0..p.tokens {
        for h in 0..p.heads {
            let xs = &x[t * p.x_stride + p.x_offset + h * p.x_head_step..][..k];
            let prepared = RowActivations::new(kernels, dtype, xs, activations);
            let out = &mut y[t * p.y_stride + p.y_offset + h * p.y_head_step..][..rows];
            for_parts(out, 16, |start, part| matvec_rows(kernels, dtype, qs, sc, k, xs, &prepared, h * rows + start, part));
        }
    }
    Ok(())
}

/// MLA's rotary embedding and latent cache write (`emberlm_core::ops::latent_rope_append`): each
/// head's rope query part from `q`, rotated, into `query` after its latent part; each token's
/// [latent | rotated rope key] from `kv` into `cache` row `pos0 + t`. `table`: `[positions][rope/2]`
/// (cos, sin) pairs.
#[allow(clippy::too_many_arguments)]
pub fn latent_rope_append(
    q: &CpuTensor,
    kv: &CpuTensor,
    table: &[f32],
    rope: usize,
    layout: RopeLayout,
    query: &CpuTensor,
    cache: &CpuTensor,
    p: &LatentRopeParams,
) -> Result<()> {
    const OP: &str = "latent_rope_append";
    let _time = crate::profile::scope(OP);
    let d = p.latent + rope;
    let s_max = cache.numel() / d.max(1);
    if rope == 0
        || rope % 2 != 0
        || p.heads == 0
        || p.tokens == 0
        || p.q_head_step < rope
        || p.pos0 + p.tokens > s_max
        || (p.pos0 + p.tokens) * rope > table.len()
    {
        return shape(OP, format!("{} tokens at {} with {rope} rope dims do not fit the cache ({s_max}) or the rope table", p.tokens, p.pos0));
    }
    q.expect_f32(OP, (p.tokens - 1) * p.q_stride + p.q_offset + (p.heads - 1) * p.q_head_step + rope)?;
    kv.expect_f32(OP, (p.tokens - 1) * p.kv_stride + p.kv_offset + d)?;
    query.expect_f32(OP, p.tokens * p.heads * d)?;
    for t in [q, kv] {
        query.expect_distinct(OP, t)?;
        cache.expect_distinct(OP, t)?;
    }
    let (q, kv) = (q.f32s(), kv.f32s());
    let (mut query, mut cache) = (query.f32s_mut(), cache.f32s_mut());
    for t in 0..p.tokens {
        let cs = &table[(p.pos0 + t) * rope..][..rope];
        for h in 0..p.heads {
            let dst = &mut query[(t * p.heads + h) * d + p.latent..][..rope];
            dst.copy_from_slice(&q[t * p.q_stride + p.q_offset + h * p.q_head_step..][..rope]);
            rotate_pairs(dst, cs, layout);
        }
        let row = &mut cache[(p.pos0 + t) * d..][..d];
        row.copy_from_slice(&kv[t * p.kv_stride + p.kv_offset..][..d]);
        rotate_pairs(&mut row[p.latent..], cs, layout);
    }
    Ok(())
}

/// Whether [`matmul_into`] rounds activations to 8 bits for `dtype` weights on this CPU: only
/// where the kernels have an integer matmul that beats f32 (Q4 and Q8 with AVX-512 VNNI). Elsewhere a
/// row decoded once for every token makes f32 FMAs as cheap per product as 8-bit dots scaled
/// per group of 32 (an untiled integer version measured 3× slower).
pub fn matmul_rounds(dtype: DType, activations: Activations) -> bool {
    activations.rounds(dtype) && RowKernels::get().matmul_int8(dtype).is_some()
}

/// Y[:, y_offset..] = X · Wᵀ (+ bias) for `m` tokens; `y` rows are `y_cols` wide.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    x: &CpuTensor,
    w: &CpuTensor,
    bias: Option<&CpuTensor>,
    y: &CpuTensor,
    m: usize,
    y_cols: usize,
    y_offset: usize,
    activations: Activations,
) -> Result<()> {
    let _time = crate::profile::scope("matmul");
    let (rows, k) = (w.rows(), w.k());
    if y_offset + rows > y_cols {
        return shape("matmul", format!("{rows} outputs at column {y_offset} overflow rows of {y_cols}"));
    }
    x.expect_f32("matmul", m * k)?;
    y.expect_f32("matmul", m * y_cols)?;
    x.expect_distinct("matmul", y)?;
    let x = x.f32s();
    let x = &x[..m * k];
    let (qs, sc) = (w.words(), w.scale_words());
    let (qs, sc) = (&*qs, &*sc);
    let dtype = w.dtype;
    let kernels = RowKernels::get();
    let integer = kernels.matmul_int8(dtype).filter(|_| matmul_rounds(dtype, activations));
    let rounded: Vec<Int8Activations> = match integer {
        // Rounded on the pool too: serially it cost a small matmul as much as its products.
        Some(int) => map_ranges(m, 4, |tokens| tokens.map(|t| Int8Activations::new(&x[t * k..(t + 1) * k], int.layout)).collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .collect(),
        None => Vec::new(),
    };
    let (qw, sw) = row_words(dtype, k);
    // Threads take whole panels of the integer kernel (4 rows for the f32 one).
    let unit = integer.map_or(4, |int| int.panel_rows);
    // Each part comes back token-major: [m, its rows].
    let parts = map_ranges(rows.div_ceil(unit), 1, |units| {
        let r = units.start * unit..(units.end * unit).min(rows);
        let mut out = vec![0f32; r.len() * m];
        if let Some(int) = integer {
            // SAFETY: `get` chose kernels this CPU runs; the kernel checks its slice lengths.
            unsafe { (int.kernel)(&qs[r.start * qw..r.end * qw], &sc[r.start * sw..r.end * sw], &rounded, &mut out) };
            return (r.start, out);
        }
        matmul_rows(dtype, qs, sc, k, x, m, r.start, r.len(), &mut out);
        // Token-major here, on the pool's threads, so that the caller's copy into y below is
        // one contiguous run per token (an element-wise strided scatter there was serial and
        // cost more than the integer kernel itself).
        let mut by_token = vec![0f32; out.len()];
        for (i, per_token) in out.chunks_exact(m).enumerate() {
            for (t, v) in per_token.iter().enumerate() {
                by_token[t * r.len() + i] = *v;
            }
        }
        (r.start, by_token)
    });
    let mut y = y.f32s_mut();
    for (r0, part) in parts {
        let n = part.len() / m.max(1);
        for (t, per_row) in part.chunks_exact(n.max(1)).enumerate() {
            y[t * y_cols + y_offset + r0..][..n].copy_from_slice(per_row);
        }
    }
    add_bias(bias, &mut y, m, y_cols, y_offset)
}

fn add_bias(bias: Option<&CpuTensor>, y: &mut [f32], m: usize, y_cols: usize, y_offset: usize) -> Result<()> {
    let Some(b) = bias else { return Ok(()) };
    let b = b.f32s();
    if y_offset + b.len() > y_cols {
        return shape("bias", format!("{} biases at column {y_offset} overflow rows of {y_cols}", b.len()));
    }
    for t in 0..m {
        for (v, bv) in y[t * y_cols + y_offset..][..b.len()].iter_mut().zip(b.iter()) {
            *v += bv;
        }
    }
    Ok(())
}

/// `x · inv_rms · (w + offset)` per row of `cols`.
#[inline(always)]
fn normalize(x: &[f32], w: &[f32], out: &mut [f32], eps: f32, offset: f32) {
    let mut acc = [0f32; 8];
    let n = x.len() / 8 * 8;
    for c in x[..n].chunks_exact(8) {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    let mut ss: f32 = acc.iter().sum();
    ss += x[n..].iter().map(|v| v * v).sum::<f32>();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), wv) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * (wv + offset);
    }
}

/// With `residual` (the stream and a scale): residual += scale · x, then out =
/// rms_norm(residual); else out = rms_norm(x).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(x: &CpuTensor, weight: &CpuTensor, residual: Option<(&CpuTensor, f32)>, out: &CpuTensor, rows: usize, eps: f32, offset: f32) -> Result<()> {
    let _time = crate::profile::scope("rms_norm");
    let cols = weight.numel();
    x.expect_f32("rms_norm", rows * cols)?;
    out.expect_f32("rms_norm", rows * cols)?;
    x.expect_distinct("rms_norm", out)?;
    let w = weight.f32s();
    let mut o = out.f32s_mut();
    match residual {
        Some((r, scale)) => {
            r.expect_f32("rms_norm", rows * cols)?;
            r.expect_distinct("rms_norm", x)?;
            r.expect_distinct("rms_norm", out)?;
            let x = x.f32s();
            let mut r = r.f32s_mut();
            for ((rr, xr), or) in r.chunks_exact_mut(cols).zip(x.chunks_exact(cols)).zip(o.chunks_exact_mut(cols)).take(rows) {
                rr.iter_mut().zip(xr).for_each(|(a, b)| *a += scale * b);
                normalize(rr, &w, or, eps, offset);
            }
        }
        None => {
            let x = x.f32s();
            for (xr, or) in x.chunks_exact(cols).zip(o.chunks_exact_mut(cols)).take(rows) {
                normalize(xr, &w, or, eps, offset);
            }
        }
    }
    Ok(())
}

/// out = rms_norm of each of a row's `groups` equal parts, part g with weight part g.
pub fn group_rms_norm(x: &CpuTensor, weight: &CpuTensor, out: &CpuTensor, rows: usize, groups: usize, eps: f32) -> Result<()> {
    let _time = crate::profile::scope("rms_norm");
    let width = weight.numel();
    if groups == 0 || width % groups != 0 {
        return shape("rms_norm", format!("{width} columns do not split into {groups} groups"));
    }
    x.expect_f32("rms_norm", rows * width)?;
    out.expect_f32("rms_norm", rows * width)?;
    x.expect_distinct("rms_norm", out)?;
    let (x, w) = (x.f32s(), weight.f32s());
    let mut o = out.f32s_mut();
    let cols = width / groups;
    for (i, (xr, or)) in x.chunks_exact(cols).zip(o.chunks_exact_mut(cols)).take(rows * groups).enumerate() {
        normalize(xr, &w[(i % groups) * cols..][..cols], or, eps, 0.0);
    }
    Ok(())
}

/// In place: RMS-normalises heads `head_offset..head_offset + heads` of every row.
#[allow(clippy::too_many_arguments)]
pub fn head_rms_norm(x: &CpuTensor, weight: &CpuTensor, rows: usize, heads: usize, first: usize, row_stride: usize, eps: f32, offset: f32) -> Result<()> {
    let _time = crate::profile::scope("head_rms_norm");
    let d = weight.numel();
    if first + heads * d > row_stride {
        return shape("head_rms_norm", format!("{heads} heads of {d} from column {first} overflow rows of {row_stride}"));
    }
    x.expect_f32("head_rms_norm", rows * row_stride)?;
    let w = weight.f32s();
    let mut x = x.f32s_mut();
    let mut tmp = vec![0f32; d];
    for row in x.chunks_exact_mut(row_stride).take(rows) {
        for head in row[first..first + heads * d].chunks_exact_mut(d) {
            normalize(head, &w, &mut tmp, eps, offset);
            head.copy_from_slice(&tmp);
        }
    }
    Ok(())
}

/// In place: rotates heads `head_offset..head_offset + heads` of `tokens` rows at positions
/// `pos0..` with the (cos, sin) table `[positions][rot_dims/2]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &CpuTensor,
    table: &[f32],
    rot_dims: usize,
    layout: RopeLayout,
    tokens: usize,
    heads: usize,
    d: usize,
    head_offset: usize,
    row_stride: usize,
    pos0: usize,
) -> Result<()> {
    let _time = crate::profile::scope("rope");
    let half = rot_dims / 2;
    if rot_dims > d || (pos0 + tokens) * half * 2 > table.len() || (head_offset + heads) * d > row_stride {
        return shape("rope", format!("{tokens} tokens at {pos0}, {heads} heads of {d} ({rot_dims} rotated) do not fit the table or rows of {row_stride}"));
    }
    x.expect_f32("rope", tokens * row_stride)?;
    let mut x = x.f32s_mut();
    for t in 0..tokens {
        let cs = &table[(pos0 + t) * half * 2..][..half * 2];
        for h in 0..heads {
            rotate_pairs(&mut x[t * row_stride + (head_offset + h) * d..][..d], cs, layout);
        }
    }
    Ok(())
}

/// Rotates `head`'s first `cs.len()` dims in place by the (cos, sin) pairs `cs`, pairing dims
/// as `layout` says.
fn rotate_pairs(head: &mut [f32], cs: &[f32], layout: RopeLayout) {
    let half = cs.len() / 2;
    for i in 0..half {
        let (c, s) = (cs[2 * i], cs[2 * i + 1]);
        let (ia, ib) = match layout {
            RopeLayout::Neox => (i, i + half),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (a, b) = (head[ia], head[ib]);
        head[ia] = a * c - b * s;
        head[ib] = b * c + a * s;
    }
}

/// Copies heads `head_offset..head_offset + kv_heads` of `tokens` rows into the cache
/// ([kv_heads, capacity, d]) at positions `pos0..`.
#[allow(clippy::too_many_arguments)]
pub fn kv_cache_append(
    qkv: &CpuTensor,
    cache: &CpuTensor,
    tokens: usize,
    kv_heads: usize,
    d: usize,
    head_offset: usize,
    row_stride: usize,
    pos0: usize,
) -> Result<()> {
    let _time = crate::profile::scope("kv_cache_append");
    let capacity = cache.numel() / (kv_heads * d).max(1);
    if pos0 + tokens > capacity || (head_offset + kv_heads) * d > row_stride {
        return shape("kv_cache_append", format!("{tokens} tokens at {pos0} overflow a cache of {capacity}"));
    }
    qkv.expect_f32("kv_cache_append", tokens * row_stride)?;
    cache.expect_f32("kv_cache_append", kv_heads * capacity * d)?;
    let src = qkv.f32s();
    let mut dst = cache.f32s_mut();
    for t in 0..tokens {
        for h in 0..kv_heads {
            dst[(h * capacity + pos0 + t) * d..][..d].copy_from_slice(&src[t * row_stride + (head_offset + h) * d..][..d]);
        }
    }
    Ok(())
}

/// Attention (`emberlm_core::ops::attention`); `sinks`: GPT-OSS's per-head sink logits.
pub fn attention(q: &CpuTensor, k_cache: &CpuTensor, v_cache: &CpuTensor, sinks: Option<&CpuTensor>, out: &CpuTensor, p: &AttentionParams) -> Result<()> {
    let _time = crate::profile::scope("attention");
    for t in [q, k_cache, v_cache] {
        out.expect_distinct("attention", t)?;
        t.expect_f32("attention", 1)?;
    }
    out.expect_f32("attention", p.tokens * p.heads_q * p.head_dim)?;
    if let Some(s) = sinks {
        s.expect_f32("attention", p.heads_q)?;
    }
    let sinks = sinks.map(|s| s.f32s());
    crate::attention::attention(&q.f32s(), &k_cache.f32s(), &v_cache.f32s(), sinks.as_deref(), &mut out.f32s_mut(), p)
}

/// out[r, i] = act(gate[r, i]) · up[r, i] over rows [gate | up] of 2·inter.
pub fn gated_activation(gate_up: &CpuTensor, out: &CpuTensor, rows: usize, inter: usize, act: Activation) -> Result<()> {
    let _time = crate::profile::scope("gated_activation");
    gate_up.expect_f32("gated_activation", rows * 2 * inter)?;
    out.expect_f32("gated_activation", rows * inter)?;
    gate_up.expect_distinct("gated_activation", out)?;
    let gu = gate_up.f32s();
    let gu: &[f32] = &gu;
    let mut o = out.f32s_mut();
    // Element-wise, so any split works; small ones (a decode step) stay on the caller.
    for_parts(&mut o[..rows * inter], 4096, |start, part| {
        let mut i = start;
        while i < start + part.len() {
            let (row, col) = (i / inter, i % inter);
            let n = (inter - col).min(start + part.len() - i);
            let g = &gu[row * 2 * inter + col..][..n];
            let u = &gu[row * 2 * inter + inter + col..][..n];
            let o = &mut part[i - start..][..n];
            // One arm per activation, so each loop is compiled (and vectorised) for its own.
            match act {
                Activation::Silu => o.iter_mut().zip(g).zip(u).for_each(|((o, &g), &u)| *o = math::silu(g) * u),
                Activation::GeluTanh => o.iter_mut().zip(g).zip(u).for_each(|((o, &g), &u)| *o = math::gelu_tanh(g) * u),
                Activation::SwigluOai { .. } => o.iter_mut().zip(g).zip(u).for_each(|((o, &g), &u)| *o = math::gated(act, g, u)),
            }
            i += n;
        }
    });
    Ok(())
}

/// LFM2's gated short convolution with its rolling state (`emberlm_core::ops::short_conv`).
pub fn short_conv(input: &CpuTensor, weight: &CpuTensor, bias: Option<&CpuTensor>, state: &CpuTensor, out: &CpuTensor, p: &ShortConvParams) -> Result<()> {
    const OP: &str = "short_conv";
    let _time = crate::profile::scope(OP);
    p.check(OP, state.numel())?;
    let (t_n, ch, kernel) = (p.tokens, p.channels, p.kernel);
    input.expect_f32(OP, p.in_len())?;
    weight.expect_f32(OP, ch * kernel)?;
    state.expect_f32(OP, p.slot_len())?;
    out.expect_f32(OP, t_n * ch)?;
    for other in [Some(input), Some(weight), bias, Some(out)].into_iter().flatten() {
        state.expect_distinct(OP, other)?;
    }
    input.expect_distinct(OP, out)?;
    let (x, w) = (input.f32s(), weight.f32s());
    let row = |t: usize| &x[t * p.in_stride + p.in_offset..][..p.in_width()];
    let b = bias.map(|b| b.f32s());
    let mut st = state.f32s_mut();
    let mut o = out.f32s_mut();
    let past = kernel - 1;
    let slot_len = p.slot_len();
    // history[j][c]: the state's inputs (oldest first), then one row per token.
    let mut history = vec![0f32; (past + t_n) * ch];
    if let Some(src) = p.src_slot {
        history[..slot_len].copy_from_slice(&st[src * slot_len..][..slot_len]);
    }
    for t in 0..t_n {
        let (r, h) = (row(t), &mut history[(past + t) * ch..][..ch]);
        match p.style {
            ConvStyle::GatedBcx => h.iter_mut().enumerate().for_each(|(c, v)| *v = r[c] * r[2 * ch + c]),
            ConvStyle::Silu => h.copy_from_slice(&r[..ch]),
        }
    }
    for t in 0..t_n {
        let r = row(t);
        for c in 0..ch {
            let mut acc = b.as_ref().map_or(0.0, |b| b[c]);
            for j in 0..kernel {
                acc += w[c * kernel + j] * history[(t + j) * ch + c];
            }
            o[t * ch + c] = match p.style {
                ConvStyle::GatedBcx => r[ch + c] * acc,
                ConvStyle::Silu => math::silu(acc),
            };
        }
    }
    if let Some(snap) = p.snap_slot {
        st[snap * slot_len..][..slot_len].copy_from_slice(&history[(t_n - 1) * ch..][..slot_len]);
    }
    st[p.dst_slot * slot_len..][..slot_len].copy_from_slice(&history[t_n * ch..][..slot_len]);
    Ok(())
}

/// Mamba2's scan token by token (the recurrence; see `emberlm_core::ops::ssm_scan`), heads in
/// parallel: each head's state values and output channels are its own.
#[allow(clippy::too_many_arguments)]
pub fn ssm_scan(xbc: &CpuTensor, proj: &CpuTensor, head_params: &CpuTensor, state: &CpuTensor, out: &CpuTensor, p: &SsmScanParams) -> Result<()> {
    const OP: &str = "ssm_scan";
    let _time = crate::profile::scope(OP);
    p.check(OP, state.numel())?;
    let (hs, pd, ns, xs) = (p.heads, p.head_dim, p.state, p.xbc_stride());
    xbc.expect_f32(OP, p.tokens * xs)?;
    proj.expect_f32(OP, p.tokens * p.proj_stride)?;
    head_params.expect_f32(OP, 3 * hs)?;
    out.expect_f32(OP, p.tokens * p.inner())?;
    for other in [xbc, proj, head_params, out] {
        state.expect_distinct(OP, other)?;
    }
    let (x_guard, pr_guard, hp_guard) = (xbc.f32s(), proj.f32s(), head_params.f32s());
    let (x, pr, hp): (&[f32], &[f32], &[f32]) = (&x_guard, &pr_guard, &hp_guard);
    let mut st = state.f32s_mut();
    let slot = p.slot_len();
    let (per_head, inner) = (ns * pd, p.inner());
    let st_ref: &[f32] = &st;
    let src = p.src_slot.map(|src| &st_ref[src * slot..][..slot]);
    // Per head: the state after the step, the state before its last token, its output columns.
    let heads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = map_ranges(hs, 1, |range| {
        range
            .map(|h| {
                let g = h / (hs / p.groups);
                let (a, d) = (hp[h], hp[hs + h]);
                let mut s = src.map_or(vec![0.0; per_head], |src| src[h * per_head..][..per_head].to_vec());
                // Kept only for a checkpoint slot (a prefill), not on every decode step.
                let mut before_last = Vec::new();
                let mut out = vec![0f32; p.tokens * pd];
                let mut y = vec![0f32; pd];
                for t in 0..p.tokens {
                    if t + 1 == p.tokens && p.snap_slot.is_some() {
                        before_last = s.clone();
                    }
                    let (row, prow) = (&x[t * xs..][..xs], &pr[t * p.proj_stride..][..p.proj_stride]);
                    let dt = math::softplus(prow[p.dt_offset + h] + hp[2 * hs + h]).clamp(p.dt_min, p.dt_max);
                    let decay = (dt * a).exp();
                    let (b, c) = (&row[inner + g * ns..][..ns], &row[inner + (p.groups + g) * ns..][..ns]);
                    let xh = &row[h * pd..][..pd];
                    y.fill(0.0);
                    for (n, s_row) in s.chunks_exact_mut(pd).enumerate() {
                        let (dtb, cn) = (dt * b[n], c[n]);
                        for ((sv, &xv), yv) in s_row.iter_mut().zip(xh).zip(y.iter_mut()) {
                            *sv = *sv * decay + dtb * xv;
                            *yv += *sv * cn;
                        }
                    }
                    for (ch, ov) in out[t * pd..][..pd].iter_mut().enumerate() {
                        *ov = (y[ch] + d * xh[ch]) * math::silu(prow[h * pd + ch]);
                    }
                }
                (s, before_last, out)
            })
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let mut o = out.f32s_mut();
    for (h, (after, before_last, head_out)) in heads.iter().enumerate() {
        if let Some(snap) = p.snap_slot {
            st[snap * slot + h * per_head..][..per_head].copy_from_slice(before_last);
        }
        st[p.dst_slot * slot + h * per_head..][..per_head].copy_from_slice(after);
        for t in 0..p.tokens {
            o[t * inner + h * pd..][..pd].copy_from_slice(&head_out[t * pd..][..pd]);
        }
    }
    Ok(())
}

/// In place: x = cap · tanh(x / cap).
pub fn logit_softcap(x: &CpuTensor, len: usize, cap: f32) -> Result<()> {
    let _time = crate::profile::scope("logit_softcap");
    x.expect_f32("logit_softcap", len)?;
    x.f32s_mut()[..len].iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    Ok(())
}

/// out[r] = index of the largest value of row r (lowest on ties, NaN skipped; 0 if none). With
/// `mask` (bit `i % 32` of word `i / 32` allows column `i`, for every row) only allowed columns
/// compete, and a row with none gives `u32::MAX` (the GPU op's contract).
pub fn argmax(x: &CpuTensor, mask: Option<&CpuTensor>, out: &CpuTensor, rows: usize, cols: usize) -> Result<()> {
    let _time = crate::profile::scope("argmax");
    x.expect_f32("argmax", rows * cols)?;
    if out.numel() < rows || out.dtype != DType::F32 {
        return shape("argmax", format!("`{}` cannot hold {rows} indices", out.name));
    }
    if mask.is_some_and(|m| m.numel() < cols.div_ceil(32)) {
        return shape("argmax", format!("the mask cannot cover {cols} columns"));
    }
    let words = mask.map(|m| m.words());
    let allowed = |i: usize| words.as_ref().is_none_or(|w| emberlm_core::ops::mask_allows(w, i));
    let x = x.f32s();
    let mut o = out.words_mut();
    for (r, row) in x.chunks_exact(cols).take(rows).enumerate() {
        let mut best = (if mask.is_some() { u32::MAX } else { 0 }, f32::NEG_INFINITY, false);
        for (i, &v) in row.iter().enumerate() {
            if !v.is_nan() && (!best.2 || v > best.1) && allowed(i) {
                best = (i as u32, v, true);
            }
        }
        o[r] = best.0;
    }
    Ok(())
}
