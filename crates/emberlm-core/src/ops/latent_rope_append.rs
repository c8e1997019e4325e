//! `latent_rope_append`: MLA's rotary embedding and latent KV cache write, one dispatch
//! (`shaders/latent_rope_append.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, RopeLayout, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::rope_table::RopeTable;
use crate::shader::Variant;
use crate::tensor::Tensor;

/// Where a step's MLA projections sit and how wide the latent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentRopeParams {
    pub tokens: usize,
    pub heads: usize,
    /// The compressed KV width (`kv_lora_rank`); the rope part is the table's rotary dims.
    pub latent: usize,
    pub pos0: usize,
    /// q: floats between tokens, the column of head 0's rope dims, the step per head.
    pub q_stride: usize,
    pub q_offset: usize,
    pub q_head_step: usize,
    /// kv: floats between tokens and the column of the (normed) latent, the rope key after it.
    pub kv_stride: usize,
    pub kv_offset: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LatentRopeUniforms {
    tokens: u32,
    heads: u32,
    latent: u32,
    rot_half: u32,
    pos0: u32,
    s_max: u32,
    q_stride: u32,
    q_offset: u32,
    q_head: u32,
    kv_stride: u32,
    kv_offset: u32,
    _pad: u32,
}

/// Rotates each head's rope query part from `q` into `query` ([tokens, heads, latent + rope],
/// after the latent query part, which is left as it is) and writes each token's cache row
/// [latent | rotated rope key] from `kv` into `cache` ([s_max, latent + rope]) at `pos0 + t`.
pub fn latent_rope_append(
    plan: &mut Plan,
    q: &Tensor,
    kv: &Tensor,
    table: &RopeTable,
    layout: RopeLayout,
    query: &Tensor,
    cache: &Tensor,
    p: &LatentRopeParams,
) -> Result<OpId> {
    const OP: &str = "latent_rope_append";
    let rope = table.rot_dims;
    if rope == 0 || rope % 2 != 0 || p.heads == 0 || p.tokens == 0 {
        return shape_err(OP, format!("{} heads with {rope} rotary dims", p.heads));
    }
    let d = p.latent + rope;
    let s_max = cache.numel() / d;
    if p.pos0 + p.tokens > s_max.min(table.positions) {
        return shape_err(OP, format!("positions up to {} exceed the cache ({s_max}) or the rope table ({})", p.pos0 + p.tokens, table.positions));
    }
    if p.q_head_step < rope {
        return shape_err(OP, format!("q heads {} apart cannot hold {rope} rope dims", p.q_head_step));
    }
    expect_f32(OP, "q", q, (p.tokens - 1) * p.q_stride + p.q_offset + (p.heads - 1) * p.q_head_step + rope)?;
    expect_f32(OP, "kv", kv, (p.tokens - 1) * p.kv_stride + p.kv_offset + d)?;
    expect_f32(OP, "query", query, p.tokens * p.heads * d)?;
    expect_f32(OP, "cache", cache, s_max * d)?;
    let uniforms = LatentRopeUniforms {
        tokens: u32_of(OP, "tokens", p.tokens)?,
        heads: u32_of(OP, "heads", p.heads)?,
        latent: u32_of(OP, "latent", p.latent)?,
        rot_half: (rope / 2) as u32,
        pos0: u32_of(OP, "pos0", p.pos0)?,
        s_max: u32_of(OP, "s_max", s_max)?,
        q_stride: u32_of(OP, "q_stride", p.q_stride)?,
        q_offset: u32_of(OP, "q_offset", p.q_offset)?,
        q_head: u32_of(OP, "q_head_step", p.q_head_step)?,
        kv_stride: u32_of(OP, "kv_stride", p.kv_stride)?,
        kv_offset: u32_of(OP, "kv_offset", p.kv_offset)?,
        _pad: 0,
    };
    let threads = u32_of(OP, "threads", p.tokens * ((p.heads + 1) * rope / 2 + p.latent))?;
    let storage = vec![
        Some(Binding::tensor(q)?),
        Some(Binding::tensor(kv)?),
        Some(Binding::tensor(&table.gpu)?),
        Some(Binding::tensor(query)?),
        Some(Binding::tensor(cache)?),
    ];
    let variant = Variant::default().flag_if(layout == RopeLayout::Neox, "NEOX").with("WG", WG);
    let grid = plan.grid(threads.div_ceil(WG));
    plan.dispatch(OP, key(OP, variant), &uniforms, storage, grid)
}
