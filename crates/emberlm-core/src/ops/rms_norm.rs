//! `rms_norm`: out = x / rms(x) · (w + offset), optionally adding x into the residual stream first.

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
}

/// `x`, `out` (and `residual`): [rows, cols]; `weight`: cols. With `residual`, computes
/// `residual += x; out = norm(residual)`. `weight_offset` is 1.0 for Gemma's (1 + w) norms.
pub fn rms_norm(
    plan: &mut Plan,
    x: &Tensor,
    weight: &Tensor,
    residual: Option<&Tensor>,
    out: &Tensor,
    rows: usize,
    eps: f32,
    weight_offset: f32,
) -> Result<OpId> {
    const OP: &str = "rms_norm";
    let cols = weight.numel();
    expect_f32(OP, "weight", weight, cols)?;
    expect_f32(OP, "input", x, rows * cols)?;
    expect_f32(OP, "output", out, rows * cols)?;
    if let Some(r) = residual {
        expect_f32(OP, "residual", r, rows * cols)?;
    }
    let params = RmsNormParams { cols: u32_of(OP, "cols", cols)?, rows: u32_of(OP, "rows", rows)?, eps, weight_offset };
    let variant = Variant::default().flag_if(residual.is_some(), "RESIDUAL").with("WG", WG_ROW);
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out)?), Some(Binding::tensor(weight)?), residual.map(Binding::tensor).transpose()?];
    let grid = plan.grid(params.rows);
    plan.dispatch("rms_norm", key("rms_norm", variant), &params, storage, grid)
}
