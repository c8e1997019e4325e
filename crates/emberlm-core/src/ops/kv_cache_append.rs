//! `kv_cache_append`: writes this step's keys and values into the [heads, s_max, d] caches.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct KvAppendParams {
    pub tokens: u32,
    pub heads: u32,
    pub d: u32,
    pub s_max: u32,
    pub pos0: u32,
    pub row_stride: u32,
    pub head_offset: u32,
    pub _pad: u32,
}

/// Copies heads `head_offset..head_offset + heads` (keys) of `tokens` rows of `src` (stride
/// `row_stride`) into `k_cache`, and the next `heads` heads (values) into `v_cache`, at
/// positions `pos0..`.
#[allow(clippy::too_many_arguments)]
pub fn kv_cache_append(
    plan: &mut Plan,
    src: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    head_offset: usize,
    row_stride: usize,
    pos0: usize,
) -> Result<OpId> {
    const OP: &str = "kv_cache_append";
    let s_max = k_cache.numel() / (heads * head_dim).max(1);
    expect_f32(OP, "v cache", v_cache, k_cache.numel())?;
    if pos0 + tokens > s_max {
        return shape_err(OP, format!("positions up to {} exceed the KV cache capacity {s_max}", pos0 + tokens));
    }
    if tokens > 0 {
        expect_f32(OP, "source", src, (tokens - 1) * row_stride + (head_offset + 2 * heads) * head_dim)?;
    }
    let params = KvAppendParams {
        tokens: u32_of(OP, "tokens", tokens)?,
        heads: heads as u32,
        d: head_dim as u32,
        s_max: s_max as u32,
        pos0: pos0 as u32,
        row_stride: u32_of(OP, "row_stride", row_stride)?,
        head_offset: head_offset as u32,
        _pad: 0,
    };
    let storage = vec![Some(Binding::tensor(src)?), Some(Binding::tensor(k_cache)?), Some(Binding::tensor(v_cache)?)];
    let grid = plan.grid((params.tokens * params.heads * params.d).div_ceil(WG));
    plan.dispatch("kv_cache_append", key("kv_cache_append", Variant::default().with("WG", WG)), &params, storage, grid)
}
