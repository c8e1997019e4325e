//! `rms_norm`: out = x / rms(x) · (w + offset), optionally adding x into the residual stream
//! first; `group_rms_norm`: the same over equal groups of each row, each with its part of w.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG_ROW};
use crate::error::Result;
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RmsNormParams {
    pub cols: u32,
    pub rows: u32,
    pub eps: f32,
    pub weight_offset: f32,
    /// Consecutive rows that share a model row: row r uses weight part r % groups.
    pub groups: u32,
    /// What the input is multiplied by on its way into the residual stream.
    pub residual_scale: f32,
    pub _pad: [u32; 2],
}

/// `x`, `out` (and `residual`): [rows, cols]; `weight`: cols. With `residual` (the stream and a
/// scale), computes `residual += scale · x; out = norm(residual)`. `weight_offset` is 1.0 for
/// Gemma's (1 + w) norms.
pub fn rms_norm(
    plan: &mut Plan,
    x: &Tensor,
    weight: &Tensor,
    residual: Option<(&Tensor, f32)>,
    out: &Tensor,
    rows: usize,
    eps: f32,
    weight_offset: f32,
) -> Result<OpId> {
    norm_rows(plan, x, weight, residual, out, rows, 1, eps, weight_offset)
}

/// `x`, `out`: [rows, width]; `weight`: width, in `groups` equal parts: each row's parts are
/// normalised apart, part g with weight part g (Mamba2's gated norm after its gate).
pub fn group_rms_norm(plan: &mut Plan, x: &Tensor, weight: &Tensor, out: &Tensor, rows: usize, groups: usize, eps: f32) -> Result<OpId> {
    norm_rows(plan, x, weight, None, out, rows, groups, eps, 0.0)
}

/// Both of the above: `rows` rows of `weight.numel()` values, each split into `groups`.
#[allow(clippy::too_many_arguments)]
fn norm_rows(
    plan: &mut Plan,
    x: &Tensor,
    weight: &Tensor,
    residual: Option<(&Tensor, f32)>,
    out: &Tensor,
    rows: usize,
    groups: usize,
    eps: f32,
    weight_offset: f32,
) -> Result<OpId> {
    const OP: &str = "rms_norm";
    let width = weight.numel();
    if groups == 0 || width % groups != 0 {
        return Err(crate::error::Error::Shape { op: OP, detail: format!("{width} columns do not split into {groups} groups") });
    }
    expect_f32(OP, "weight", weight, width)?;
    expect_f32(OP, "input", x, rows * width)?;
    expect_f32(OP, "output", out, rows * width)?;
    if let Some((r, _)) = residual {
        expect_f32(OP, "residual", r, rows * width)?;
    }
    let params = RmsNormParams {
        cols: u32_of(OP, "cols", width / groups)?,
        rows: u32_of(OP, "rows", rows * groups)?,
        eps,
        weight_offset,
        groups: u32_of(OP, "groups", groups)?,
        residual_scale: residual.map_or(1.0, |r| r.1),
        _pad: [0; 2],
    };
    let variant = Variant::default().flag_if(residual.is_some(), "RESIDUAL").with("WG", WG_ROW);
    let storage =
        vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out)?), Some(Binding::tensor(weight)?), residual.map(|r| Binding::tensor(r.0)).transpose()?];
    let grid = plan.grid(params.rows);
    plan.dispatch(OP, key(OP, variant), &params, storage, grid)
}
