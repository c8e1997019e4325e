//! `rope`: rotary position embedding in place, from a precomputed (cos, sin) table.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::rope_table::RopeTable;
use crate::shader::Variant;
use crate::tensor::Tensor;

/// Which dimensions rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// (i, i + rot/2): HF's `rotate_half`, used by Llama, Qwen, Mistral, Phi-3, Gemma checkpoints.
    Neox,
    /// (2i, 2i + 1): GPT-J style, and llama.cpp's layout for llama-arch GGUF files.
    Interleaved,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RopeParams {
    pub tokens: u32,
    pub heads: u32,
    pub d: u32,
    pub rot_half: u32,
    pub pos0: u32,
    pub row_stride: u32,
    pub head_offset: u32,
    pub _pad: u32,
}

/// Rotates heads `head_offset..head_offset + heads` of each of `tokens` rows of `x` (row
/// stride `row_stride` floats, head size `head_dim`) for positions `pos0..`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    plan: &mut Plan,
    x: &Tensor,
    table: &RopeTable,
    layout: RopeLayout,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    head_offset: usize,
    row_stride: usize,
    pos0: usize,
) -> Result<OpId> {
    const OP: &str = "rope";
    let rot_half = table.rot_dims / 2;
    if table.rot_dims > head_dim {
        return shape_err(OP, format!("rotary dims {} exceed head_dim {head_dim}", table.rot_dims));
    }
    if pos0 + tokens > table.positions {
        return shape_err(OP, format!("position {} is past the rope table ({} positions)", pos0 + tokens - 1, table.positions));
    }
    if tokens > 0 {
        expect_f32(OP, "input", x, (tokens - 1) * row_stride + (head_offset + heads) * head_dim)?;
    }
    let params = RopeParams {
        tokens: u32_of(OP, "tokens", tokens)?,
        heads: heads as u32,
        d: head_dim as u32,
        rot_half: rot_half as u32,
        pos0: pos0 as u32,
        row_stride: u32_of(OP, "row_stride", row_stride)?,
        head_offset: head_offset as u32,
        _pad: 0,
    };
    let variant = Variant::default().flag_if(layout == RopeLayout::Neox, "NEOX").with("WG", WG);
    let storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(&table.gpu)?)];
    let grid = plan.grid((params.tokens * params.heads * params.rot_half).div_ceil(WG));
    plan.dispatch("rope", key("rope", variant), &params, storage, grid)
}
