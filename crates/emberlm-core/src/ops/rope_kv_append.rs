//! `rope_kv_append`: rotary position embedding of q and k and the KV cache write, one dispatch.

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
pub struct RopeKvAppendParams {
    pub tokens: u32,
    pub heads_q: u32,
    pub heads_kv: u32,
    pub d: u32,
    pub rot_half: u32,
    pub pos0: u32,
    pub row_stride: u32,
    pub s_max: u32,
}

/// For each of `tokens` rows of `qkv` (stride `row_stride` floats) holding `heads_q` q heads,
/// then `heads_kv` k heads, then `heads_kv` v heads of `head_dim` floats, at positions
/// `pos0..`: rotates the q heads in place, writes the rotated k heads into `k_cache` and the v
/// heads into `v_cache` (both [heads_kv, s_max, head_dim]). The rows' k heads are left as they
/// were.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_append(
    plan: &mut Plan,
    qkv: &Tensor,
    table: &RopeTable,
    layout: RopeLayout,
    tokens: usize,
    heads_q: usize,
    heads_kv: usize,
    head_dim: usize,
    row_stride: usize,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos0: usize,
) -> Result<OpId> {
    const OP: &str = "rope_kv_append";
    if head_dim % 2 != 0 || table.rot_dims > head_dim || heads_kv == 0 {
        return shape_err(OP, format!("{heads_kv} kv heads of {head_dim} dims with {} rotary dims", table.rot_dims));
    }
    if pos0 + tokens > table.positions {
        return shape_err(OP, format!("position {} is past the rope table ({} positions)", pos0 + tokens - 1, table.positions));
    }
    let s_max = k_cache.numel() / (heads_kv * head_dim);
    expect_f32(OP, "k cache", k_cache, heads_kv * s_max * head_dim)?;
    expect_f32(OP, "v cache", v_cache, heads_kv * s_max * head_dim)?;
    if pos0 + tokens > s_max {
        return shape_err(OP, format!("positions up to {} exceed the KV cache capacity {s_max}", pos0 + tokens));
    }
    if tokens > 0 {
        expect_f32(OP, "qkv", qkv, (tokens - 1) * row_stride + (heads_q + 2 * heads_kv) * head_dim)?;
    }
    let params = RopeKvAppendParams {
        tokens: u32_of(OP, "tokens", tokens)?,
        heads_q: u32_of(OP, "heads_q", heads_q)?,
        heads_kv: u32_of(OP, "heads_kv", heads_kv)?,
        d: u32_of(OP, "head_dim", head_dim)?,
        rot_half: (table.rot_dims / 2) as u32,
        pos0: u32_of(OP, "pos0", pos0)?,
        row_stride: u32_of(OP, "row_stride", row_stride)?,
        s_max: u32_of(OP, "s_max", s_max)?,
    };
    let variant = Variant::default().flag_if(layout == RopeLayout::Neox, "NEOX").with("WG", WG);
    let storage = vec![Some(Binding::tensor(qkv)?), Some(Binding::tensor(&table.gpu)?), Some(Binding::tensor(k_cache)?), Some(Binding::tensor(v_cache)?)];
    let threads = u32_of(OP, "threads", tokens * (heads_q + heads_kv) * head_dim / 2)?;
    let grid = plan.grid(threads.div_ceil(WG));
    plan.dispatch("rope_kv_append", key("rope_kv_append", variant), &params, storage, grid)
}
