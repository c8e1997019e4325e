//! `softmax`: row-wise softmax of x · scale.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG_ROW};
use crate::error::Result;
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub rows: u32,
    pub cols: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// `x`, `out`: [rows, cols]. `scale` multiplies the logits first (1/temperature).
pub fn softmax(plan: &mut Plan, x: &Tensor, out: &Tensor, rows: usize, cols: usize, scale: f32) -> Result<OpId> {
    const OP: &str = "softmax";
    expect_f32(OP, "input", x, rows * cols)?;
    expect_f32(OP, "output", out, rows * cols)?;
    let params = SoftmaxParams { rows: u32_of(OP, "rows", rows)?, cols: u32_of(OP, "cols", cols)?, scale, _pad: 0 };
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out)?)];
    let grid = plan.grid(params.rows);
    plan.dispatch("softmax", key("softmax", Variant::default().with("WG", WG_ROW)), &params, storage, grid)
}
