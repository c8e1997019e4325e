//! `argmax`: index of each row's maximum, so greedy decoding reads back 4 bytes, not the logits.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG_ROW};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RowParams {
    pub rows: u32,
    pub cols: u32,
    pub _pad: [u32; 2],
}

/// `x`: [rows, cols] f32; `out`: rows u32 words (a `Tensor::from_u32`). With `mask` (u32
/// words, bit `i % 32` of word `i / 32` allows column `i`, for every row) only allowed columns
/// compete, and a row with none gives `u32::MAX`; without, a row of NaNs gives 0.
pub fn argmax(plan: &mut Plan, x: &Tensor, mask: Option<&Tensor>, out: &Tensor, rows: usize, cols: usize) -> Result<OpId> {
    const OP: &str = "argmax";
    expect_f32(OP, "input", x, rows * cols)?;
    if out.numel() < rows {
        return shape_err(OP, format!("output `{}` holds {} indices, needs {rows}", out.name, out.numel()));
    }
    if let Some(m) = mask {
        if m.numel() < mask_words(cols) {
            return shape_err(OP, format!("mask `{}` holds {} words, needs {} for {cols} columns", m.name, m.numel(), mask_words(cols)));
        }
    }
    let params = RowParams { rows: u32_of(OP, "rows", rows)?, cols: u32_of(OP, "cols", cols)?, _pad: [0; 2] };
    let mut storage = vec![Some(Binding::tensor(x)?), Some(Binding::tensor(out)?)];
    if let Some(m) = mask {
        storage.push(Some(Binding::tensor(m)?));
    }
    let grid = plan.grid(params.rows);
    let variant = Variant::default().with("WG", WG_ROW).flag_if(mask.is_some(), "MASKED");
    plan.dispatch("argmax", key("argmax", variant), &params, storage, grid)
}

/// u32 words of a mask over `cols` columns for [`argmax`].
pub fn mask_words(cols: usize) -> usize {
    cols.div_ceil(32)
}

/// Whether mask `words` allows column `i` (bit `i % 32` of word `i / 32`).
pub fn mask_allows(words: &[u32], i: usize) -> bool {
    words[i / 32] >> (i % 32) & 1 == 1
}

/// The mask allowing the columns `allowed` marks.
pub fn mask_of(allowed: &[bool]) -> Vec<u32> {
    let mut words = vec![0u32; mask_words(allowed.len())];
    allowed.iter().enumerate().filter(|(_, &on)| on).for_each(|(i, _)| words[i / 32] |= 1 << (i % 32));
    words
}
