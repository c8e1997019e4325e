//! `matmul`: Y = X·Wᵀ (+ bias) for many tokens — prefill.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, weight_variant};
use crate::error::Result;
use crate::plan::{OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// W rows per workgroup (shaders/matmul.wgsl's BN).
pub(crate) const ROWS_PER_WORKGROUP: u32 = 64;

/// Tokens per thread (1, 2 or 4; a workgroup takes 8 threads' worth): the smallest that covers
/// the prompt in one tile, else 4, so short prompts do not pad to 32 tokens.
pub(crate) fn tokens_per_thread(m: usize) -> u32 {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub row_offset: u32,
    pub ldy: u32,
    pub y_offset: u32,
    /// The EXPERTS variant's fields (ops/moe.rs); zero elsewhere.
    pub expert_first: u32,
    pub experts: u32,
    pub x_div: u32,
    /// X's row stride and where head 0's columns start (k and 0 but in `head_linear`).
    pub ldx: u32,
    pub x_offset: u32,
    /// `head_linear`'s column steps per head (workgroup z) in X and Y; zero elsewhere.
    pub head_x: u32,
    pub head_y: u32,
    pub _pad: [u32; 3],
}

/// `x`: [m, k] f32; `w`: [n, k] any dtype (k a multiple of 8); `y`: [m, n] f32; `bias`: n f32.
pub fn matmul(plan: &mut Plan, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, m: usize) -> Result<Vec<OpId>> {
    matmul_into(plan, x, w, bias, y, m, w.rows(), 0)
}

/// As [`matmul`], writing columns `y_offset..y_offset + n` of a `y` with rows of `y_cols`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(plan: &mut Plan, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, m: usize, y_cols: usize, y_offset: usize) -> Result<Vec<OpId>> {
    const OP: &str = "matmul";
    let (n, k) = (w.rows(), w.k());
    if y_offset + n > y_cols {
        return crate::error::shape_err(OP, format!("columns {y_offset}..{} exceed output rows of {y_cols}", y_offset + n));
    }
    if k % 8 != 0 {
        return crate::error::shape_err(OP, format!("`{}`: k = {k} must be a multiple of 8", w.name));
    }
    expect_f32(OP, "input", x, m * k)?;
    expect_f32(OP, "output", y, m * y_cols)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, n)?;
    }
    let tm = tokens_per_thread(m);
    let variant = matmul_variant(w, bias.is_some(), tm);
    let mut ops = Vec::new();
    for chunk in &w.chunks {
        let rows = chunk.rows.len() as u32;
        let params = MatmulParams {
            m: u32_of(OP, "m", m)?,
            k: k as u32,
            n: rows,
            row_offset: chunk.rows.start as u32,
            ldy: u32_of(OP, "y_cols", y_cols)?,
            y_offset: y_offset as u32,
            ldx: k as u32,
            ..Zeroable::zeroed()
        };
        let storage = super::matvec::bindings(x, y, w, chunk, bias)?;
        let grid = [rows.div_ceil(ROWS_PER_WORKGROUP), (m as u32).div_ceil(8 * tm), 1];
        ops.push(plan.dispatch(format!("matmul {}", w.name), key("matmul", variant.clone()), &params, storage, grid)?);
    }
    Ok(ops)
}

/// The kernel variant for `w`'s format, a bias, and `tm` tokens per thread.
pub(crate) fn matmul_variant(w: &Tensor, bias: bool, tm: u32) -> Variant {
    weight_variant(w.dtype)
        .flag_if(bias, "BIAS")
        .flag(match tm {
            1 => "TM_1",
            2 => "TM_2",
            _ => "TM_4",
        })
        .with("TM", tm)
}
