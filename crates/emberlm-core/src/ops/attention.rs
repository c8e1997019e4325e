//! `attention` (+ `attention_reduce`), `attention_prefill`: causal grouped-query attention over
//! a KV cache. Prefill (several tokens) runs one workgroup per (tile of 8 tokens, head), the
//! tile sharing every key and value it reads. A decode token runs one workgroup per tile of the
//! query heads that share a kv head (each key and value read once for the tile) and per split
//! of its keys, flash-decoding style, the partials merged.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// The widest head: MLA's latent keys (DeepSeek's 512 + 64). Heads up to
/// [`NARROW_HEAD_DIM`] take the kernels' narrow variant (more query tokens per prefill tile).
pub const MAX_HEAD_DIM: usize = 576;
pub const NARROW_HEAD_DIM: usize = 256;
/// Keys per workgroup when decoding; also the granularity of the split count.
pub const DECODE_SPLIT_LEN: u32 = 256;
/// Query tokens per workgroup in `attention_prefill` (its QT) for narrow and wide heads: the
/// tile's queries (QT × MAX_D f32) stay within 16 KiB of workgroup memory.
const PREFILL_QUERY_TILE: [u32; 2] = [8, 4];
/// The most query heads a decode workgroup takes at once (its GT) for narrow and wide heads,
/// for the same reason.
const DECODE_HEAD_TILE: [usize; 2] = [8, 4];

/// Query heads per decode workgroup: the largest divisor of the heads per kv head up to
/// `most`, so that a tile's heads share one kv head and every key read serves them all.
fn decode_head_tile(heads_q: usize, heads_kv: usize, most: usize) -> usize {
    let group = heads_q / heads_kv;
    (1..=most.min(group)).rev().find(|g| group % g == 0).unwrap_or(1)
}

#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub tokens: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    /// Absolute position of the first query token; the cache must already hold keys up to
    /// `pos0 + tokens - 1`.
    pub pos0: usize,
    /// Sliding window in positions, 0 for none (see [`visible_keys`]).
    pub window: usize,
    /// Causal (generation), or bidirectional: every query sees every key of the input
    /// (embedding models such as EmbeddingGemma).
    pub causal: bool,
    pub scale: f32,
    /// Gemma 2's attention logit soft-cap, 0 for none.
    pub softcap: f32,
    /// Floats between query tokens in `q` (heads_q · head_dim unless q sits in fused rows).
    pub q_stride: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AttentionUniforms {
    pub tokens: u32,
    pub hq: u32,
    pub hkv: u32,
    pub d: u32,
    pub s_max: u32,
    pub pos0: u32,
    pub window: u32,
    pub n_splits: u32,
    pub split_len: u32,
    pub q_stride: u32,
    pub scale: f32,
    pub softcap: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AttentionReduceUniforms {
    pub rows: u32,
    pub d: u32,
    pub n_splits: u32,
    pub hq: u32,
}

/// The keys the query at absolute position `pos` sees, `last` being the input's last position.
/// Causal: itself and the keys before it, at most `window` of them all told. Bidirectional:
/// every key of the input, within `window / 2` on either side (llama.cpp's symmetric window,
/// and transformers' for EmbeddingGemma, which reads `window / 2 + 1` as an exclusive bound).
pub fn visible_keys(causal: bool, window: usize, pos: usize, last: usize) -> std::ops::RangeInclusive<usize> {
    match (causal, window) {
        (true, 0) => 0..=pos,
        (true, w) => (pos + 1).saturating_sub(w)..=pos,
        (false, 0) => 0..=last,
        (false, w) => pos.saturating_sub(w / 2)..=(pos + w / 2).min(last),
    }
}

/// `q`: [tokens, q_stride]; `k_cache`/`v_cache`: [heads_kv, s_max, head_dim];
/// `out`: [tokens, heads_q · head_dim].
pub fn attention(plan: &mut Plan, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, out: &Tensor, p: &AttentionParams) -> Result<Vec<OpId>> {
    attention_with_sinks(plan, q, k_cache, v_cache, None, out, p)
}

/// [`attention`] with GPT-OSS's sinks: `sinks` [heads_q], one logit per head that joins each
/// softmax's sum and weighs no value.
pub fn attention_with_sinks(
    plan: &mut Plan,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    sinks: Option<&Tensor>,
    out: &Tensor,
    p: &AttentionParams,
) -> Result<Vec<OpId>> {
    const OP: &str = "attention";
    if let Some(s) = sinks {
        expect_f32(OP, "sinks", s, p.heads_q)?;
    }
    let sink = sinks.map(Binding::tensor).transpose()?;
    if p.head_dim == 0 || p.head_dim > MAX_HEAD_DIM {
        return shape_err(OP, format!("head_dim {} must be in 1..={MAX_HEAD_DIM}", p.head_dim));
    }
    if p.heads_kv == 0 || p.heads_q % p.heads_kv != 0 {
        return shape_err(OP, format!("{} query heads are not a multiple of {} kv heads", p.heads_q, p.heads_kv));
    }
    let s_max = k_cache.numel() / (p.heads_kv * p.head_dim).max(1);
    if p.pos0 + p.tokens > s_max {
        return shape_err(OP, format!("positions up to {} exceed the KV cache capacity {s_max}", p.pos0 + p.tokens));
    }
    expect_f32(OP, "q", q, (p.tokens - 1) * p.q_stride + p.heads_q * p.head_dim)?;
    expect_f32(OP, "k cache", k_cache, s_max * p.heads_kv * p.head_dim)?;
    expect_f32(OP, "v cache", v_cache, s_max * p.heads_kv * p.head_dim)?;
    expect_f32(OP, "out", out, p.tokens * p.heads_q * p.head_dim)?;

    // Decode: split the keys so there are enough workgroups to fill the GPU.
    let keys = (p.pos0 + 1) as u32;
    let n_splits = if p.tokens == 1 { keys.div_ceil(DECODE_SPLIT_LEN).max(1) } else { 1 };
    let split_len = if n_splits == 1 { u32_of(OP, "s_max", s_max)? } else { DECODE_SPLIT_LEN };
    let uniforms = AttentionUniforms {
        tokens: u32_of(OP, "tokens", p.tokens)?,
        hq: p.heads_q as u32,
        hkv: p.heads_kv as u32,
        d: p.head_dim as u32,
        s_max: s_max as u32,
        pos0: u32_of(OP, "pos0", p.pos0)?,
        window: u32_of(OP, "window", p.window)?,
        n_splits,
        split_len,
        q_stride: u32_of(OP, "q_stride", p.q_stride)?,
        scale: p.scale,
        softcap: p.softcap,
    };
    let rows = uniforms.tokens * uniforms.hq;
    let wide = p.head_dim > NARROW_HEAD_DIM;
    let max_d = if wide { MAX_HEAD_DIM } else { NARROW_HEAD_DIM } as u32;
    if p.tokens > 1 {
        let tile = PREFILL_QUERY_TILE[wide as usize];
        let storage = vec![Some(Binding::tensor(q)?), Some(Binding::tensor(k_cache)?), Some(Binding::tensor(v_cache)?), Some(Binding::tensor(out)?), sink];
        let grid = plan.grid(uniforms.tokens.div_ceil(tile) * uniforms.hq);
        let variant = Variant::default().flag_if(!p.causal, "BIDIRECTIONAL").flag_if(sinks.is_some(), "SINKS").with("MAX_D", max_d).with("QT", tile);
        return Ok(vec![plan.dispatch("attention", key("attention_prefill", variant), &uniforms, storage, grid)?]);
    }
    let partial = n_splits > 1;
    let gt = decode_head_tile(p.heads_q, p.heads_kv, DECODE_HEAD_TILE[wide as usize]) as u32;
    let variant = Variant::default().flag_if(partial, "PARTIAL").flag_if(sinks.is_some(), "SINKS").with("WG", WG).with("MAX_D", max_d).with("GT", gt);
    let target = if partial { plan.scratch_f32("attention partials", (rows * n_splits * (uniforms.d + 2)) as usize)? } else { Binding::tensor(out)? };
    // Split decoding adds the sinks where the partials meet.
    let storage = vec![
        Some(Binding::tensor(q)?),
        Some(Binding::tensor(k_cache)?),
        Some(Binding::tensor(v_cache)?),
        Some(target.clone()),
        if partial { None } else { sink.clone() },
    ];
    let grid = plan.grid(rows / gt * n_splits);
    let mut ops = vec![plan.dispatch("attention", key("attention", variant), &uniforms, storage, grid)?];
    if partial {
        let reduce = AttentionReduceUniforms { rows, d: uniforms.d, n_splits, hq: uniforms.hq };
        let storage = vec![Some(target), Some(Binding::tensor(out)?), sink];
        let grid = plan.grid(rows);
        let variant = Variant::default().with("WG", WG).flag_if(sinks.is_some(), "SINKS");
        ops.push(plan.dispatch("attention reduce", key("attention_reduce", variant), &reduce, storage, grid)?);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_head_tiles_divide_the_group() {
        use super::decode_head_tile as tile;
        // SmolLM2 (9 / 3), Qwen2.5-0.5B (14 / 2), Llama-3.2-1B (32 / 8), MLA (16 / 1), MHA.
        assert_eq!([tile(9, 3, 8), tile(14, 2, 8), tile(32, 8, 8), tile(16, 1, 4), tile(12, 12, 8), tile(10, 1, 8)], [3, 7, 4, 4, 1, 5]);
    }
}
