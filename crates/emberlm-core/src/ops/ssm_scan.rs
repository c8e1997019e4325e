//! `ssm_scan`: Mamba2's selective scan (SSD) with its gate, over the outputs of the mixer's
//! convolution ([x | B | C] rows) and in-projection (z and dt), with the state kept in slots of
//! one buffer like `short_conv`'s. A decode step is one dispatch (`ssm_scan_step`); a prefill
//! is the chunked form in two (`ssm_scan_states`, then `ssm_scan_output`), see the shaders.

use bytemuck::{Pod, Zeroable};

use super::{check_slots, expect_f32, key, u32_of, WG};
use crate::error::{Error, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::Tensor;

/// The widest head the output pass takes (4 channels per thread).
pub const MAX_SSM_HEAD_DIM: usize = 4 * WG as usize;
/// The largest state per head the kernels take (the step loops over it; 128 in real models).
pub const MAX_SSM_STATE: usize = 1024;
/// A prefill keeps the state at each chunk start: at most this many chunks (longer prompts get
/// longer chunks), so the scratch stays a few states large.
const MAX_CHUNKS: usize = 32;
/// The shortest chunk: one workgroup's worth of tokens per block of in-chunk weights.
const MIN_CHUNK: usize = WG as usize;

/// One step of the scan over `tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsmScanParams {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// State values per (head, channel): `ssm_state_size`.
    pub state: usize,
    /// B and C groups; `heads / groups` consecutive heads share one.
    pub groups: usize,
    /// Width of an in-projection row: z at column 0 (heads·head_dim), dt at `dt_offset` (heads).
    pub proj_stride: usize,
    pub dt_offset: usize,
    /// The time-step limits (transformers' `time_step_limit`).
    pub dt_min: f32,
    pub dt_max: f32,
    /// The slot holding the state before the first token; `None`: zeros.
    pub src_slot: Option<usize>,
    pub dst_slot: usize,
    /// A slot that receives the state before the last token (a checkpoint), if any.
    pub snap_slot: Option<usize>,
}

/// What a prefill keeps between its two passes: the state at each chunk start
/// ([`SsmScanParams::chunk_states_len`] f32) and each token's (dt, Σ dt·A) per head.
pub struct SsmScratch<'a> {
    pub chunk_states: &'a Tensor,
    pub dt_cum: &'a Tensor,
}

impl SsmScanParams {
    /// Channels across heads: the width of x and of the output.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of a convolution output row: [x | B | C].
    pub fn xbc_stride(&self) -> usize {
        self.inner() + 2 * self.groups * self.state
    }

    /// f32 values of one state slot: [heads][state][head_dim].
    pub fn slot_len(&self) -> usize {
        self.heads * self.state * self.head_dim
    }

    /// Tokens per chunk of a prefill.
    pub fn chunk_len(&self) -> usize {
        self.tokens.div_ceil(MAX_CHUNKS).div_ceil(MIN_CHUNK).max(1) * MIN_CHUNK
    }

    pub fn chunk_states_len(&self) -> usize {
        self.tokens.div_ceil(self.chunk_len()) * self.slot_len()
    }

    pub fn dt_cum_len(&self) -> usize {
        2 * self.tokens * self.heads
    }

    /// Checks the sizes, and that `state` (of `state_len` values) holds every slot named.
    pub fn check(&self, op: &'static str, state_len: usize) -> Result<()> {
        let bad = |detail: String| Err(Error::Shape { op, detail });
        if self.tokens == 0 || self.heads == 0 || self.head_dim == 0 || self.state == 0 || self.groups == 0 {
            return bad(format!("an empty scan: {self:?}"));
        }
        if self.heads % self.groups != 0 {
            return bad(format!("{} heads do not split into {} groups", self.heads, self.groups));
        }
        if self.head_dim > MAX_SSM_HEAD_DIM || self.state > MAX_SSM_STATE {
            return bad(format!("head_dim {} or state {} past the kernels' {MAX_SSM_HEAD_DIM} / {MAX_SSM_STATE}", self.head_dim, self.state));
        }
        if self.dt_offset + self.heads > self.proj_stride || self.inner() > self.proj_stride {
            return bad(format!("z and dt do not fit in-projection rows of {}", self.proj_stride));
        }
        // Written so that a NaN limit is refused too.
        if !(self.dt_min <= self.dt_max) {
            return bad(format!("time-step limits {} > {}", self.dt_min, self.dt_max));
        }
        check_slots(op, state_len / self.slot_len(), [self.src_slot, Some(self.dst_slot), self.snap_slot])
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniforms {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    state: u32,
    groups: u32,
    proj_stride: u32,
    dt_offset: u32,
    src_slot: u32,
    dst_slot: u32,
    snap_slot: u32,
    chunk: u32,
    _pad0: u32,
    dt_min: f32,
    dt_max: f32,
    _pad1: [u32; 2],
}

const NONE: u32 = u32::MAX;

/// `xbc`: [tokens, xbc_stride]; `proj`: [tokens, proj_stride]; `head_params`: [A | D | dt_bias]
/// per head (A = -exp(A_log)); `state`: slots of [heads][state][head_dim]; `out`:
/// [tokens, heads·head_dim]. A prefill (several tokens) needs `scratch`.
pub fn ssm_scan(
    plan: &mut Plan,
    xbc: &Tensor,
    proj: &Tensor,
    head_params: &Tensor,
    state: &Tensor,
    out: &Tensor,
    scratch: Option<SsmScratch>,
    p: &SsmScanParams,
) -> Result<OpId> {
    const OP: &str = "ssm_scan";
    p.check(OP, state.numel())?;
    expect_f32(OP, "x|B|C", xbc, p.tokens * p.xbc_stride())?;
    expect_f32(OP, "in-projection", proj, p.tokens * p.proj_stride)?;
    expect_f32(OP, "head parameters", head_params, 3 * p.heads)?;
    expect_f32(OP, "state", state, p.slot_len())?;
    expect_f32(OP, "output", out, p.tokens * p.inner())?;
    let slot = |s: Option<usize>| s.map_or(Ok(NONE), |s| u32_of(OP, "slot", s));
    let u = Uniforms {
        tokens: u32_of(OP, "tokens", p.tokens)?,
        heads: u32_of(OP, "heads", p.heads)?,
        head_dim: p.head_dim as u32,
        state: p.state as u32,
        groups: u32_of(OP, "groups", p.groups)?,
        proj_stride: u32_of(OP, "proj_stride", p.proj_stride)?,
        dt_offset: u32_of(OP, "dt_offset", p.dt_offset)?,
        src_slot: slot(p.src_slot)?,
        dst_slot: slot(Some(p.dst_slot))?,
        snap_slot: slot(p.snap_slot)?,
        chunk: u32_of(OP, "chunk", p.chunk_len())?,
        _pad0: 0,
        dt_min: p.dt_min,
        dt_max: p.dt_max,
        _pad1: [0; 2],
    };
    let variant = Variant::default().with("WG", WG);
    let inputs = [Binding::tensor(xbc)?, Binding::tensor(proj)?, Binding::tensor(head_params)?];
    if p.tokens == 1 {
        let storage = inputs.into_iter().map(Some).chain([Some(Binding::tensor(state)?), Some(Binding::tensor(out)?)]).collect();
        let grid = plan.grid(u32_of(OP, "channels", p.inner())?.div_ceil(WG));
        return plan.dispatch(OP, key("ssm_scan_step", variant), &u, storage, grid);
    }
    let Some(SsmScratch { chunk_states, dt_cum }) = scratch else {
        return Err(Error::Shape { op: OP, detail: "a prefill needs its scratch buffers".into() });
    };
    expect_f32(OP, "chunk states", chunk_states, p.chunk_states_len())?;
    expect_f32(OP, "dt", dt_cum, p.dt_cum_len())?;
    let (chunks, dts) = (Binding::tensor(chunk_states)?, Binding::tensor(dt_cum)?);
    let states: Vec<_> = inputs.iter().cloned().chain([Binding::tensor(state)?, chunks.clone(), dts.clone()]).map(Some).collect();
    let blocks = u32_of(OP, "state values", p.state * p.head_dim)?.div_ceil(WG);
    let grid = plan.grid(u32_of(OP, "workgroups", p.heads * blocks as usize)?);
    plan.dispatch(OP, key("ssm_scan_states", variant.clone()), &u, states, grid)?;
    let outputs: Vec<_> = inputs.into_iter().chain([chunks, dts, Binding::tensor(out)?]).map(Some).collect();
    let grid = plan.grid(u32_of(OP, "workgroups", p.tokens * p.heads)?);
    plan.dispatch(OP, key("ssm_scan_output", variant), &u, outputs, grid)
}
