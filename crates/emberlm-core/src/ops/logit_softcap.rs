//! `logit_softcap`: x = cap · tanh(x / cap) in place (Gemma 2's final logits).

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{Error, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LogitSoftcapParams {
    pub len: u32,
    pub cap: f32,
}

/// Soft-caps the first `len` values of `x`.
pub fn logit_softcap(plan: &mut Plan, x: &Tensor, len: usize, cap: f32) -> Result<OpId> {
    const OP: &str = "logit_softcap";
    if !(cap > 0.0 && cap.is_finite()) {
        return Err(Error::InvalidArgument(format!("{OP}: cap must be positive and finite, is {cap}")));
    }
    expect_f32(OP, "input", x, len)?;
    let params = LogitSoftcapParams { len: u32_of(OP, "len", len)?, cap };
    let storage = vec![Some(Binding::tensor(x)?)];
    let grid = plan.grid(params.len.div_ceil(WG));
    plan.dispatch("logit_softcap", key("logit_softcap", Variant::default().with("WG", WG)), &params, storage, grid)
}
