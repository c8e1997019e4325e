//! `matvec`: y = W·x (+ bias) for one token — the decode step's matmul, memory-bound; and
//! `gated_matvec`, its GATED variant: the MLP's gate and up projections and activation at once.
//! Either may take the RMSNorm before it and the matvec the residual add after it
//! ([`MatvecEnds`]).

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, weight_variant, Activation, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::tensor::{Tensor, TensorChunk};

/// Rows each thread works on (RB in shaders/matvec.wgsl), reusing its x loads across them.
pub(crate) const ROWS_PER_THREAD: u32 = 4;

/// Threads sharing one row (TPR): enough that no thread walks more than ~16 octets, at least 8
/// so a row's threads read 32 contiguous bytes, at most the workgroup.
pub(crate) fn threads_per_row(k: usize) -> u32 {
    ((k / 8).div_ceil(16) as u32).next_power_of_two().clamp(8, WG)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatvecParams {
    pub k: u32,
    pub rows: u32,
    pub row_offset: u32,
    pub y_offset: u32,
    pub x_offset: u32,
    /// The EXPERTS variants' fields (ops/moe.rs); zero elsewhere.
    pub top_k: u32,
    pub expert_first: u32,
    pub expert_end: u32,
    pub slot0: u32,
    /// `head_linear`'s steps per head (workgroup z): x in vec4s, y in floats; zero elsewhere.
    pub head_x: u32,
    pub head_y: u32,
    /// [`InputNorm`]'s epsilon and weight offset.
    pub eps: f32,
    pub norm_offset: f32,
    /// [`MatvecEnds::accumulate`]'s scale.
    pub y_scale: f32,
    pub _pad: u32,
}

/// An RMSNorm folded into a matvec's input (decode): `x / rms(x) ⊙ (weight + offset)`, the
/// 1/rms factored out of the dot products and computed alongside them (shaders/matvec.wgsl).
#[derive(Debug, Clone, Copy)]
pub struct InputNorm<'a> {
    /// `k` f32.
    pub weight: &'a Tensor,
    pub eps: f32,
    /// 1 for Gemma's `(1 + w)`, else 0.
    pub offset: f32,
}

/// What a decode matvec does besides the dot products: normalise its input first, or add its
/// result into `y` — the pre-norm block's "norm, project, add to the residual" without the
/// norm's dispatch.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatvecEnds<'a> {
    pub norm: Option<InputNorm<'a>>,
    /// `y += scale · (W·x + bias)` instead of `y = W·x + bias`.
    pub accumulate: Option<f32>,
}

/// `w`: [n, k] weights of any dtype (k a multiple of 8); `x`: k f32; `y`: n f32; `bias`: n f32.
pub fn matvec(plan: &mut Plan, w: &Tensor, x: &Tensor, bias: Option<&Tensor>, y: &Tensor) -> Result<Vec<OpId>> {
    matvec_into(plan, w, x, 0, bias, y, 0)
}

/// As [`matvec`], reading `x[x_row * k..]` (one row of a [T, k] activation) and writing
/// `y[y_offset..y_offset + n]` (several projections into one fused row).
pub fn matvec_into(plan: &mut Plan, w: &Tensor, x: &Tensor, x_row: usize, bias: Option<&Tensor>, y: &Tensor, y_offset: usize) -> Result<Vec<OpId>> {
    matvec_with(plan, w, x, x_row, bias, y, y_offset, MatvecEnds::default())
}

/// [`matvec_into`] with `ends`: the input normalised first and/or the result added into `y`.
#[allow(clippy::too_many_arguments)]
pub fn matvec_with(
    plan: &mut Plan,
    w: &Tensor,
    x: &Tensor,
    x_row: usize,
    bias: Option<&Tensor>,
    y: &Tensor,
    y_offset: usize,
    ends: MatvecEnds,
) -> Result<Vec<OpId>> {
    const OP: &str = "matvec";
    let (n, k) = (w.rows(), w.k());
    if k % 8 != 0 {
        return crate::error::shape_err(OP, format!("`{}`: k = {k} must be a multiple of 8", w.name));
    }
    expect_f32(OP, "input", x, (x_row + 1) * k)?;
    expect_f32(OP, "output", y, y_offset + n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, n)?;
    }
    check_norm(OP, ends.norm, k)?;
    let tpr = threads_per_row(k);
    let rows_per_workgroup = ROWS_PER_THREAD * WG / tpr;
    let variant = weight_variant(w.dtype)
        .flag_if(bias.is_some(), "BIAS")
        .flag_if(ends.norm.is_some(), "NORMED")
        .flag_if(ends.accumulate.is_some(), "ACCUMULATE")
        .with("WG", WG)
        .with("TPR", tpr)
        .with("RB", ROWS_PER_THREAD);
    let mut ops = Vec::new();
    for chunk in &w.chunks {
        let rows = chunk.rows.len() as u32;
        let params = MatvecParams {
            k: u32_of(OP, "k", k)?,
            rows,
            row_offset: chunk.rows.start as u32,
            y_offset: u32_of(OP, "y_offset", y_offset)?,
            x_offset: u32_of(OP, "x_offset", x_row * k / 4)?,
            y_scale: ends.accumulate.unwrap_or(1.0),
            ..norm_params(ends.norm)
        };
        let storage = with_norm(bindings(x, y, w, chunk, bias)?, ends.norm)?;
        let grid = plan.grid(rows.div_ceil(rows_per_workgroup));
        ops.push(plan.dispatch(format!("matvec {}", w.name), key("matvec", variant.clone()), &params, storage, grid)?);
    }
    Ok(ops)
}

/// The kernel's storage bindings, in `shaders/matvec.wgsl`'s order (matmul.wgsl's too).
pub(crate) fn bindings(x: &Tensor, y: &Tensor, w: &Tensor, chunk: &TensorChunk, bias: Option<&Tensor>) -> Result<Vec<Option<Binding>>> {
    Ok(vec![
        Some(Binding::tensor(x)?),
        Some(Binding::tensor(y)?),
        Some(Binding::qs(chunk)),
        w.dtype.is_quantized().then(|| Binding::scales(chunk)),
        bias.map(Binding::tensor).transpose()?,
    ])
}

/// The norm's weight must cover x's k columns.
fn check_norm(op: &'static str, norm: Option<InputNorm>, k: usize) -> Result<()> {
    match norm {
        Some(n) => expect_f32(op, "norm weight", n.weight, k),
        None => Ok(()),
    }
}

fn norm_params(norm: Option<InputNorm>) -> MatvecParams {
    let (eps, norm_offset) = norm.map_or((0.0, 0.0), |n| (n.eps, n.offset));
    MatvecParams { eps, norm_offset, ..Zeroable::zeroed() }
}

/// The norm weight at binding 7 (after the EXPERTS variants' route, unused here).
fn with_norm(mut storage: Vec<Option<Binding>>, norm: Option<InputNorm>) -> Result<Vec<Option<Binding>>> {
    if let Some(n) = norm {
        storage.push(None);
        storage.push(Some(Binding::tensor(n.weight)?));
    }
    Ok(storage)
}

/// Whether [`gated_matvec`] takes `w`: it needs the gate and up rows in one binding.
pub fn gated_matvec_fits(w: &Tensor) -> bool {
    w.chunks.len() == 1 && w.rows() % 2 == 0 && w.k() % 8 == 0
}

/// `out[i] = act(W[i]·x + b[i]) · (W[inter + i]·x + b[inter + i])` for fused [gate | up]
/// weights `w` ([2·inter, k], one chunk: [`gated_matvec_fits`]), reading `x[x_row * k..]`:
/// the decode step's gate and up projections and the activation in one dispatch, with no
/// gate|up vector written to memory and read back; with `norm`, of the normalised `x`.
#[allow(clippy::too_many_arguments)]
pub fn gated_matvec(
    plan: &mut Plan,
    w: &Tensor,
    x: &Tensor,
    x_row: usize,
    bias: Option<&Tensor>,
    out: &Tensor,
    act: Activation,
    norm: Option<InputNorm>,
) -> Result<OpId> {
    const OP: &str = "gated_matvec";
    if !gated_matvec_fits(w) {
        return shape_err(OP, format!("`{}` ({} rows, {} chunks) is not one binding of paired gate and up rows", w.name, w.rows(), w.chunks.len()));
    }
    let (inter, k) = (w.rows() / 2, w.k());
    expect_f32(OP, "input", x, (x_row + 1) * k)?;
    expect_f32(OP, "output", out, inter)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, 2 * inter)?;
    }
    check_norm(OP, norm, k)?;
    let tpr = threads_per_row(k);
    let outputs_per_workgroup = ROWS_PER_THREAD / 2 * WG / tpr;
    let variant = act
        .variant(weight_variant(w.dtype))
        .flag("GATED")
        .flag_if(bias.is_some(), "BIAS")
        .flag_if(norm.is_some(), "NORMED")
        .with("WG", WG)
        .with("TPR", tpr)
        .with("RB", ROWS_PER_THREAD);
    let chunk = &w.chunks[0];
    let params = MatvecParams {
        k: u32_of(OP, "k", k)?,
        rows: u32_of(OP, "inter", inter)?,
        row_offset: 0,
        y_offset: 0,
        x_offset: u32_of(OP, "x_offset", x_row * k / 4)?,
        ..norm_params(norm)
    };
    let storage = with_norm(bindings(x, out, w, chunk, bias)?, norm)?;
    let grid = plan.grid(params.rows.div_ceil(outputs_per_workgroup));
    plan.dispatch(format!("gated_matvec {}", w.name), key("matvec", variant), &params, storage, grid)
}
