//! `short_conv`: a causal depthwise convolution over the last few positions — LFM2's gated
//! one over [B | C | x] blocks, or Mamba2's followed by SiLU — with a rolling state of the last
//! `kernel - 1` inputs per channel kept in slots of one buffer (see the shader).

use bytemuck::{Pod, Zeroable};

use super::{check_slots, expect_f32, key, u32_of, WG};
use crate::error::{Error, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// The longest convolution the kernel takes (LFM2 uses 3, Mamba2 4).
pub const MAX_CONV_KERNEL: usize = 8;

/// What the convolution reads and what it applies after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvStyle {
    /// LFM2: blocks [B | C | x]; `C · conv(B · x)`.
    GatedBcx,
    /// Mamba2: one block x; `silu(conv(x) + bias)`.
    Silu,
}

/// Where a step's rolling state comes from and goes to: slots of `[kernel - 1][channels]` f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConvParams {
    pub tokens: usize,
    pub channels: usize,
    pub kernel: usize,
    pub style: ConvStyle,
    /// Width of an input row and the column where its blocks start.
    pub in_stride: usize,
    pub in_offset: usize,
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

    /// The blocks `style` reads, side by side in each input row.
    pub fn in_width(&self) -> usize {
        match self.style {
            ConvStyle::GatedBcx => 3 * self.channels,
            ConvStyle::Silu => self.channels,
        }
    }

    /// f32 values the input must hold.
    pub fn in_len(&self) -> usize {
        (self.tokens - 1) * self.in_stride + self.in_offset + self.in_width()
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
        if self.in_offset + self.in_width() > self.in_stride {
            return bad(format!("input blocks of {} at column {} overflow rows of {}", self.in_width(), self.in_offset, self.in_stride));
        }
        check_slots(op, state_len / self.slot_len(), [self.src_slot, Some(self.dst_slot), self.snap_slot])
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
    in_stride: u32,
    in_offset: u32,
}

const NONE: u32 = u32::MAX;

/// `input`: [tokens, in_stride]; `weight`: [channels, kernel] f32; `bias`: channels f32;
/// `state`: slots of [kernel - 1][channels]; `out`: [tokens, channels].
pub fn short_conv(plan: &mut Plan, input: &Tensor, weight: &Tensor, bias: Option<&Tensor>, state: &Tensor, out: &Tensor, p: &ShortConvParams) -> Result<OpId> {
    const OP: &str = "short_conv";
    p.check(OP, state.numel())?;
    expect_f32(OP, "input", input, p.in_len())?;
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
        in_stride: u32_of(OP, "in_stride", p.in_stride)?,
        in_offset: u32_of(OP, "in_offset", p.in_offset)?,
    };
    let variant = Variant::default().flag_if(bias.is_some(), "BIAS").flag_if(p.style == ConvStyle::Silu, "SILU").with("WG", WG);
    let storage = vec![
        Some(Binding::tensor(input)?),
        Some(Binding::tensor(weight)?),
        Some(Binding::tensor(state)?),
        Some(Binding::tensor(out)?),
        bias.map(Binding::tensor).transpose()?,
    ];
    let grid = plan.grid(u.channels.div_ceil(WG));
    plan.dispatch(OP, key(OP, variant), &u, storage, grid)
}
