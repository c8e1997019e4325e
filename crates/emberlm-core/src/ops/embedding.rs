//! `embedding`: gathers token rows from a (possibly quantised, possibly chunked) table.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, weight_variant, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct EmbeddingParams {
    pub tokens: u32,
    pub k: u32,
    pub row0: u32,
    pub rows: u32,
    pub vocab: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}

/// `ids`: tokens u32 (a `Tensor::from_u32`); `table`: [vocab, hidden] any dtype; `out`:
/// [tokens, hidden] f32, multiplied by `scale`. Ids ≥ vocab give zero rows.
pub fn embedding(plan: &mut Plan, ids: &Tensor, table: &Tensor, out: &Tensor, tokens: usize, scale: f32) -> Result<Vec<OpId>> {
    const OP: &str = "embedding";
    let (vocab, k) = (table.rows(), table.k());
    if k % 8 != 0 {
        return shape_err(OP, format!("hidden size {k} must be a multiple of 8"));
    }
    if ids.numel() < tokens {
        return shape_err(OP, format!("{} ids for {tokens} tokens", ids.numel()));
    }
    expect_f32(OP, "output", out, tokens * k)?;
    let variant = weight_variant(table.dtype).with("WG", WG);
    let mut ops = Vec::new();
    for chunk in &table.chunks {
        let params = EmbeddingParams {
            tokens: u32_of(OP, "tokens", tokens)?,
            k: k as u32,
            row0: chunk.rows.start as u32,
            rows: chunk.rows.len() as u32,
            vocab: u32_of(OP, "vocab", vocab)?,
            scale,
            _pad: [0; 2],
        };
        let storage = vec![
            Some(Binding::tensor(ids)?),
            Some(Binding::tensor(out)?),
            Some(Binding::qs(chunk)),
            table.dtype.is_quantized().then(|| Binding::scales(chunk)),
        ];
        let grid = plan.grid((params.tokens * params.k / 8).div_ceil(WG));
        ops.push(plan.dispatch(format!("embedding {}", table.name), key("embedding", variant.clone()), &params, storage, grid)?);
    }
    Ok(ops)
}
