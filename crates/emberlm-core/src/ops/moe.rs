//! A mixture-of-experts MLP on the GPU in three ops, with the router's choice never read back:
//! - `moe_route` (`shaders/moe_route.wgsl`): each token's top-k experts and weights from its
//!   router logits, into a `route` buffer;
//! - `expert_gated_matvec` (`shaders/matvec.wgsl`, EXPERTS + GATED): per (token, pick) slot,
//!   weight · act(gate_e·x) · (up_e·x) over the picked expert's rows only;
//! - `expert_matvec` (`shaders/matvec.wgsl`, EXPERTS): per token, the sum over its picks of
//!   down_e · slot — the picks meet in the kernel, with no combine pass.
//!
//! Experts are stacked in 3-D weights `[experts, rows, k]` (llama.cpp's `ffn_*_exps`); a weight
//! larger than one binding splits between experts (`Tensor::new_weight`), and each chunk's
//! dispatch takes the picks that fall in it. Prefill runs the same ops over every token's
//! slots: each slot reads its expert's rows once.

use bytemuck::{Pod, Zeroable};

use super::matvec::{bindings, threads_per_row, MatvecParams, ROWS_PER_THREAD};
use super::{expect_f32, key, u32_of, weight_variant, Activation, WG};
use crate::error::{shape_err, Result};
use crate::plan::{Binding, OpId, Plan};
use crate::shader::Variant;
use crate::tensor::{Tensor, TensorChunk};

/// The most experts a router may choose among (GPT-OSS 32, Qwen3-MoE 128, DeepSeek-V3 256).
pub const MAX_EXPERTS: usize = 1024;
/// The most experts a token may use (real models: 2 to 10).
pub const MAX_TOP_K: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeRouteParams {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Weights divided by their sum over the picks (Mixtral; Qwen3-MoE's `norm_topk_prob`);
    /// otherwise the softmax over all experts at the picks.
    pub normalize: bool,
}

impl MoeRouteParams {
    /// u32 words of the route buffer: per token, top_k ids then top_k f32 weights.
    pub fn route_len(&self) -> usize {
        self.tokens * 2 * self.top_k
    }

    fn check(&self, op: &'static str) -> Result<()> {
        if self.experts == 0 || self.experts > MAX_EXPERTS || self.top_k == 0 || self.top_k > self.experts.min(MAX_TOP_K) {
            return shape_err(op, format!("{} of {} experts per token (at most {MAX_TOP_K} of {MAX_EXPERTS})", self.top_k, self.experts));
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RouteUniforms {
    tokens: u32,
    experts: u32,
    top_k: u32,
    _pad: u32,
}

/// `logits`: [tokens, experts] f32; `route`: [`MoeRouteParams::route_len`] words.
pub fn moe_route(plan: &mut Plan, logits: &Tensor, route: &Tensor, p: &MoeRouteParams) -> Result<OpId> {
    const OP: &str = "moe_route";
    p.check(OP)?;
    expect_f32(OP, "router logits", logits, p.tokens * p.experts)?;
    expect_f32(OP, "route", route, p.route_len())?;
    let uniforms = RouteUniforms { tokens: u32_of(OP, "tokens", p.tokens)?, experts: p.experts as u32, top_k: p.top_k as u32, _pad: 0 };
    let storage = vec![Some(Binding::tensor(logits)?), Some(Binding::tensor(route)?)];
    let grid = plan.grid(uniforms.tokens.div_ceil(WG));
    let variant = Variant::default().with("WG", WG).flag_if(p.normalize, "NORMALIZE");
    plan.dispatch("moe_route", key("moe_route", variant), &uniforms, storage, grid)
}

/// `(experts, rows per expert, k)` of a stacked expert weight, checked.
fn expert_shape(op: &'static str, w: &Tensor) -> Result<(usize, usize, usize)> {
    match w.shape.as_slice() {
        &[experts, rows, k] if experts > 0 && rows > 0 && k % 8 == 0 => Ok((experts, rows, k)),
        shape => shape_err(op, format!("`{}` {shape:?} is not a stack of experts [experts, rows, k] with k a multiple of 8", w.name)),
    }
}

/// The experts a chunk of a stacked weight holds.
fn chunk_experts(op: &'static str, w: &Tensor, chunk: &TensorChunk, expert_rows: usize) -> Result<(u32, u32)> {
    if chunk.rows.start % expert_rows != 0 || chunk.rows.end % expert_rows != 0 {
        return shape_err(op, format!("`{}` is split inside an expert (rows {:?})", w.name, chunk.rows));
    }
    Ok(((chunk.rows.start / expert_rows) as u32, (chunk.rows.end / expert_rows) as u32))
}

/// Dispatches matvec's EXPERTS variant (GATED with `gated`'s activation) once per chunk of
/// `w` and per run of at most the device's workgroup limit of `slots` along z.
#[allow(clippy::too_many_arguments)]
fn dispatch_experts(
    plan: &mut Plan,
    op: &'static str,
    gated: Option<Activation>,
    w: &Tensor,
    x: &Tensor,
    route: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    outputs: usize,
    expert_rows: usize,
    slots: usize,
    top_k: usize,
) -> Result<Vec<OpId>> {
    let k = w.k();
    let tpr = threads_per_row(k);
    let per_workgroup = if gated.is_some() { ROWS_PER_THREAD / 2 } else { ROWS_PER_THREAD } * WG / tpr;
    let variant = weight_variant(w.dtype)
        .flag("EXPERTS")
        .flag_if(gated.is_some(), "GATED")
        .flag_if(gated == Some(Activation::GeluTanh), "GELU_TANH")
        .flag_if(bias.is_some(), "BIAS")
        .with("WG", WG)
        .with("TPR", tpr)
        .with("RB", ROWS_PER_THREAD);
    let max_z = plan.dev.caps.max_workgroups_per_dim.max(1) as usize;
    let mut ops = Vec::new();
    for (i, chunk) in w.chunks.iter().enumerate() {
        let (expert_first, expert_end) = chunk_experts(op, w, chunk, expert_rows)?;
        // The sum over picks: a later chunk adds to what the earlier ones wrote.
        let variant = variant.clone().flag_if(i > 0 && gated.is_none(), "ACCUMULATE");
        let mut slot0 = 0;
        while slot0 < slots {
            let n = (slots - slot0).min(max_z);
            let params = MatvecParams {
                k: u32_of(op, "k", k)?,
                rows: u32_of(op, "rows", outputs)?,
                top_k: top_k as u32,
                expert_first,
                expert_end,
                slot0: u32_of(op, "slot", slot0)?,
                ..Zeroable::zeroed()
            };
            let mut storage = bindings(x, y, w, chunk, bias)?;
            storage.push(Some(Binding::tensor(route)?));
            let mut grid = plan.grid(params.rows.div_ceil(per_workgroup));
            grid[2] = n as u32;
            ops.push(plan.dispatch(format!("{op} {}", w.name), key("matvec", variant.clone()), &params, storage, grid)?);
            slot0 += n;
        }
    }
    Ok(ops)
}

/// `out[t·top_k + j] = w_tj · act(gate_e·x[t] + bg_e) · (up_e·x[t] + bu_e)` for each token t's
/// pick j (expert e, weight w_tj, from `route`): `gate_up` is `[experts, 2·inter, k]`, each
/// expert's gate rows then its up rows; `bias` `[experts·2·inter]`; `out` `[tokens·top_k, inter]`.
#[allow(clippy::too_many_arguments)]
pub fn expert_gated_matvec(
    plan: &mut Plan,
    gate_up: &Tensor,
    x: &Tensor,
    route: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
    tokens: usize,
    top_k: usize,
    act: Activation,
) -> Result<Vec<OpId>> {
    const OP: &str = "expert_gated_matvec";
    let (experts, rows, k) = expert_shape(OP, gate_up)?;
    if rows % 2 != 0 {
        return shape_err(OP, format!("`{}`: {rows} rows per expert are not [gate | up] pairs", gate_up.name));
    }
    MoeRouteParams { tokens, experts, top_k, normalize: false }.check(OP)?;
    let inter = rows / 2;
    expect_f32(OP, "input", x, tokens * k)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "output", out, tokens * top_k * inter)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * rows)?;
    }
    dispatch_experts(plan, OP, Some(act), gate_up, x, route, bias, out, inter, rows, tokens * top_k, top_k)
}

/// `y[t] = Σ_j down_e·x[t·top_k + j] + w_tj · b_e` over token t's picks (expert e, weight w_tj,
/// from `route`; `x` already carries the weights, as [`expert_gated_matvec`] writes it): `down`
/// is `[experts, n, k]`, `bias` `[experts·n]`, `y` `[tokens, n]`.
#[allow(clippy::too_many_arguments)]
pub fn expert_matvec(
    plan: &mut Plan,
    down: &Tensor,
    x: &Tensor,
    route: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tokens: usize,
    top_k: usize,
) -> Result<Vec<OpId>> {
    const OP: &str = "expert_matvec";
    let (experts, n, k) = expert_shape(OP, down)?;
    MoeRouteParams { tokens, experts, top_k, normalize: false }.check(OP)?;
    expect_f32(OP, "input", x, tokens * top_k * k)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "output", y, tokens * n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * n)?;
    }
    dispatch_experts(plan, OP, None, down, x, route, bias, y, n, n, tokens, top_k)
}
