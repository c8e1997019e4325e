//! `argmax`: index of each row's maximum, so greedy decoding reads back 4 bytes, not the logits.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG_ROW};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RowParams {
    pub rows: u32,
    pub cols: u32,
    pub _pad: [u32; 2],
}

/// `x`: [rows, cols] f32; `out`: rows u32 words (a `Tensor::from_u32`).
pub fn argmax(plan: &mut Plan, x: &Tensor, out: &Tensor, rows: usize, cols: usize) -> Result<OpId> {
    const OP: &str = "argmax";
    expect_f32(OP, "input", x, rows * cols)?;
    if out.numel() < rows {
        return shape_err(OP, format!("output `{}` holds {} indices, needs {rows}", out.name, out.numel()));
    }
    let params = RowParams { rows: u32_of(OP, "rows", rows)?, cols: u32_of(OP, "cols", cols)?, _pad: [0; 2] };
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out)?)];
    let grid = plan.grid(params.rows);
    plan.dispatch("argmax", key("argmax", Variant::default().with("WG", WG_ROW)), &params, storage, grid)
}
