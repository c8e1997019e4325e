//! `head_rms_norm`: in-place RMS norm of each attention head's vector (Qwen3 / Gemma 3 q and k
//! norms), on heads that may sit inside fused qkv rows.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct HeadRmsNormParams {
    pub tokens: u32,
    pub heads: u32,
    pub d: u32,
    pub row_stride: u32,
    pub first: u32,
    pub eps: f32,
    pub weight_offset: f32,
    pub _pad: u32,
}

/// Normalises `heads` head vectors from column `first` of each of `tokens` rows of `x` (row
/// stride `row_stride` floats); `weight` has `head_dim` entries, used as `weight + weight_offset`.
/// (Any span of a row: MLA's latent norms sit at columns no head size divides.)
#[allow(clippy::too_many_arguments)]
pub fn head_rms_norm(
    plan: &mut Plan,
    x: &Tensor,
    weight: &Tensor,
    tokens: usize,
    heads: usize,
    first: usize,
    row_stride: usize,
    eps: f32,
    weight_offset: f32,
) -> Result<OpId> {
    const OP: &str = "head_rms_norm";
    let d = weight.numel();
    expect_f32(OP, "weight", weight, d)?;
    if first + heads * d > row_stride {
        return shape_err(OP, format!("{heads} heads of {d} from column {first} overrun rows of {row_stride}"));
    }
    if tokens > 0 {
        expect_f32(OP, "input", x, (tokens - 1) * row_stride + first + heads * d)?;
    }
    let params = HeadRmsNormParams {
        tokens: u32_of(OP, "tokens", tokens)?,
        heads: u32_of(OP, "heads", heads)?,
        d: d as u32,
        row_stride: u32_of(OP, "row_stride", row_stride)?,
        first: u32_of(OP, "first", first)?,
        eps,
        weight_offset,
        _pad: 0,
    };
    let variant = Variant::default().with("WG", WG);
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(weight)?)];
    let grid = plan.grid(u32_of(OP, "token heads", tokens * heads)?);
    plan.dispatch("head_rms_norm", key("head_rms_norm", variant), &params, storage, grid)
}
