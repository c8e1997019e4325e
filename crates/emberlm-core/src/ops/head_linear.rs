//! `head_linear`: y[t, h] = W_h · x[t, h] for every head h of a per-head projection: MLA's
//! absorbed key up-projection (each head's query into the latent space) and its value
//! up-projection (each head's latent output back to its values). matvec.wgsl for one token,
//! matmul.wgsl for several, both with one head per workgroup z: one dispatch for all heads.

use bytemuck::Zeroable;

use super::matmul::{matmul_variant, tokens_per_thread, MatmulParams, ROWS_PER_WORKGROUP};
use super::matvec::{bindings, threads_per_row, MatvecParams, ROWS_PER_THREAD};
use super::{expect_f32, key, u32_of, weight_variant, WG};
use crate::error::{shape_err, Result};
use crate::plan::{OpId, Plan};
use crate::tensor::Tensor;

/// Where each token's heads sit in the input and output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLinearParams {
    pub tokens: usize,
    pub heads: usize,
    /// Floats between tokens in x, the column of head 0's k inputs, and the step per head
    /// (all multiples of 4: the kernels read x as vec4s).
    pub x_stride: usize,
    pub x_offset: usize,
    pub x_head_step: usize,
    /// Floats between tokens in y, the column of head 0's outputs, and the step per head.
    pub y_stride: usize,
    pub y_offset: usize,
    pub y_head_step: usize,
}

/// `w`: `[heads · rows, k]` (head h's rows follow head h − 1's), one binding, any dtype, k a
/// multiple of 8; `x`, `y`: f32 as `p` lays them out.
pub fn head_linear(plan: &mut Plan, w: &Tensor, x: &Tensor, y: &Tensor, p: &HeadLinearParams) -> Result<OpId> {
    const OP: &str = "head_linear";
    let k = w.k();
    if p.heads == 0 || p.tokens == 0 || w.rows() % p.heads != 0 || k % 8 != 0 || w.chunks.len() != 1 {
        return shape_err(
            OP,
            format!("`{}` ({} rows of {k}, {} chunks) is not one binding of {} heads with k a multiple of 8", w.name, w.rows(), w.chunks.len(), p.heads),
        );
    }
    if [p.x_stride, p.x_offset, p.x_head_step].iter().any(|v| v % 4 != 0) {
        return shape_err(OP, format!("x stride {}, offset {} and head step {} must be multiples of 4", p.x_stride, p.x_offset, p.x_head_step));
    }
    let rows = w.rows() / p.heads;
    let last = |stride: usize, offset: usize, step: usize, len: usize| (p.tokens - 1) * stride + offset + (p.heads - 1) * step + len;
    expect_f32(OP, "input", x, last(p.x_stride, p.x_offset, p.x_head_step, k))?;
    expect_f32(OP, "output", y, last(p.y_stride, p.y_offset, p.y_head_step, rows))?;
    let heads = u32_of(OP, "heads", p.heads)?;
    let storage = bindings(x, y, w, &w.chunks[0], None)?;
    let label = format!("{OP} {}", w.name);
    if p.tokens == 1 {
        let tpr = threads_per_row(k);
        let variant = weight_variant(w.dtype).with("WG", WG).with("TPR", tpr).with("RB", ROWS_PER_THREAD);
        let params = MatvecParams {
            k: k as u32,
            rows: u32_of(OP, "rows", rows)?,
            y_offset: u32_of(OP, "y_offset", p.y_offset)?,
            x_offset: u32_of(OP, "x_offset", p.x_offset / 4)?,
            head_x: u32_of(OP, "x_head_step", p.x_head_step / 4)?,
            head_y: u32_of(OP, "y_head_step", p.y_head_step)?,
            ..Zeroable::zeroed()
        };
        let [gx, gy, _] = plan.grid(params.rows.div_ceil(ROWS_PER_THREAD * WG / tpr));
        return plan.dispatch(label, key("matvec", variant), &params, storage, [gx, gy, heads]);
    }
    let tm = tokens_per_thread(p.tokens);
    let params = MatmulParams {
        m: u32_of(OP, "tokens", p.tokens)?,
        k: k as u32,
        n: u32_of(OP, "rows", rows)?,
        ldy: u32_of(OP, "y_stride", p.y_stride)?,
        y_offset: u32_of(OP, "y_offset", p.y_offset)?,
        ldx: u32_of(OP, "x_stride", p.x_stride)?,
        x_offset: u32_of(OP, "x_offset", p.x_offset)?,
        head_x: u32_of(OP, "x_head_step", p.x_head_step)?,
        head_y: u32_of(OP, "y_head_step", p.y_head_step)?,
        ..Zeroable::zeroed()
    };
    let grid = [params.n.div_ceil(ROWS_PER_WORKGROUP), params.m.div_ceil(8 * tm), heads];
    plan.dispatch(label, key("matmul", matmul_variant(w, false, tm)), &params, storage, grid)
}
