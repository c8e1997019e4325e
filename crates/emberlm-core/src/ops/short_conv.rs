//! `short_conv`: LFM2's gated short convolution over [B | C | x] rows, with a rolling state of
//! the last `kernel - 1` inputs per channel kept in slots of one buffer (see the shader).

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, key, u32_of, WG};
use crate::error::{Error, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// The longest convolution the kernel takes (LFM2 uses 3).
pub const MAX_CONV_KERNEL: usize = 8;

/// Where a step's rolling state comes from and goes to: slots of `[kernel - 1][channels]` f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConvParams {
    pub tokens: usize,
    pub channels: usize,
    pub kernel: usize,
    /// The slot holding the state before the first token; `None`: zeros (a sequence's start).
    pub src_slot: Option<usize>,
    /// The slot that receives the state after the last token.
    pub dst_slot: usize,
    /// A slot that receives the state after all but the last token (a checkpoint), if any.
    pub snap_slot: Option<usize>,
}

impl ShortConvParams {
    /// f32 values in one slot.
    pub fn slot_len(&self) -> usize {
        (self.kernel - 1) * self.channels
    }

    /// Checks the sizes, and that `state` (of `state_len` values) holds every slot named.
    pub fn check(&self, op: &'static str, state_len: usize) -> Result<()> {
        let bad = |detail: String| Err(Error::Shape { op, detail });
        if self.kernel < 2 || self.kernel > MAX_CONV_KERNEL {
            return bad(format!("a kernel of {} is out of range (2 to {MAX_CONV_KERNEL})", self.kernel));
        }
        if self.tokens == 0 || self.channels == 0 {
            return bad("no tokens or no channels".into());
        }
        let slots = state_len / self.slot_len();
        for slot in [self.src_slot, Some(self.dst_slot), self.snap_slot].into_iter().flatten() {
            if slot >= slots {
                return bad(format!("state slot {slot} of {slots}"));
            }
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniforms {
    tokens: u32,
    channels: u32,
    kernel: u32,
    src_slot: u32,
    dst_slot: u32,
    snap_slot: u32,
    _pad: [u32; 2],
}

const NONE: u32 = u32::MAX;

/// `bcx`: [tokens, 3·channels]; `weight`: [channels, kernel] f32; `bias`: channels f32;
/// `state`: slots of [kernel - 1][channels]; `out`: [tokens, channels].
pub fn short_conv(plan: &mut Plan, bcx: &Tensor, weight: &Tensor, bias: Option<&Tensor>, state: &Tensor, out: &Tensor, p: &ShortConvParams) -> Result<OpId> {
    const OP: &str = "short_conv";
    p.check(OP, state.numel())?;
    expect_f32(OP, "input", bcx, p.tokens * 3 * p.channels)?;
    expect_f32(OP, "weight", weight, p.channels * p.kernel)?;
    expect_f32(OP, "state", state, p.slot_len())?;
    expect_f32(OP, "output", out, p.tokens * p.channels)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, p.channels)?;
    }
    let slot = |s: Option<usize>| s.map_or(Ok(NONE), |s| u32_of(OP, "slot", s));
    let u = Uniforms {
        tokens: u32_of(OP, "tokens", p.tokens)?,
        channels: u32_of(OP, "channels", p.channels)?,
        kernel: p.kernel as u32,
        src_slot: slot(p.src_slot)?,
        dst_slot: slot(Some(p.dst_slot))?,
        snap_slot: slot(p.snap_slot)?,
        _pad: [0; 2],
    };
    let variant = Variant::default().flag_if(bias.is_some(), "BIAS").with("WG", WG);
    let storage = vec![
        Some(Binding::tensor(bcx)?),
        Some(Binding::tensor(weight)?),
        Some(Binding::tensor(state)?),
        Some(Binding::tensor(out)?),
        bias.map(Binding::tensor).transpose()?,
    ];
    let grid = plan.grid(u.channels.div_ceil(WG));
    plan.dispatch(OP, key(OP, variant), &u, storage, grid)
}
