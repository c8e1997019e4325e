//! `top_k`: each row's k largest values and their indices, descending.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG_ROW};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// Beyond this, a sort would beat k scans; sampling uses tens.
pub const MAX_K: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct TopKParams {
    pub rows: u32,
    pub cols: u32,
    pub k: u32,
    pub _pad: u32,
}

/// `x`: [rows, cols]; `out_idx` (u32 words) and `out_val` (f32): [rows, k]. Indices of missing
/// picks (fewer than k non-NaN values) are `u32::MAX`.
pub fn top_k(plan: &mut Plan, x: &Tensor, out_idx: &Tensor, out_val: &Tensor, rows: usize, cols: usize, k: usize) -> Result<OpId> {
    const OP: &str = "top_k";
    if k == 0 || k > MAX_K {
        return shape_err(OP, format!("k = {k} must be in 1..={MAX_K}"));
    }
    expect_f32(OP, "input", x, rows * cols)?;
    expect_f32(OP, "values", out_val, rows * k)?;
    if out_idx.numel() < rows * k {
        return shape_err(OP, format!("index output `{}` holds {}, needs {}", out_idx.name, out_idx.numel(), rows * k));
    }
    let params = TopKParams { rows: u32_of(OP, "rows", rows)?, cols: u32_of(OP, "cols", cols)?, k: k as u32, _pad: 0 };
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out_idx)?), Some(Binding::tensor(out_val)?)];
    let grid = plan.grid(params.rows);
    plan.dispatch("top_k", key("top_k", Variant::default().with("WG", WG_ROW)), &params, storage, grid)
}
