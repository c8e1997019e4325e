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
//! dispatch takes the picks that fall in it. A prefill groups its picks by expert instead
//! ([`grouped_experts`]: `moe_group`, then tiled matmuls per expert group, `moe_combine`), so a
//! picked expert's rows are decoded once per tile of its tokens rather than once per token.

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

/// The most expert groups of a group-limited router (DeepSeek-V2/V3: 8).
pub const MAX_EXPERT_GROUPS: usize = 32;

/// How a router turns logits into scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterScoring {
    /// A softmax over every expert (Mixtral, Qwen3-MoE, GPT-OSS, DeepSeek-V2).
    #[default]
    Softmax,
    /// Each logit's sigmoid on its own (DeepSeek-V3).
    Sigmoid,
}

/// How a group-limited router scores a group of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupScore {
    /// Its best expert (DeepSeek-V2's `group_limited_greedy`).
    #[default]
    Max,
    /// Its best two experts' scores summed (DeepSeek-V3).
    TopTwoSum,
}

/// DeepSeek's routing beyond a plain top-k; [`Routing::default`] is the plain one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    pub scoring: RouterScoring,
    /// Experts in `groups` equal groups, the picks from the best `groups_used` only (1: none).
    pub groups: usize,
    pub groups_used: usize,
    pub group_score: GroupScore,
    /// Multiplies every weight (`routed_scaling_factor`).
    pub scale: f32,
}

impl Default for Routing {
    fn default() -> Self {
        Self { scoring: RouterScoring::Softmax, groups: 1, groups_used: 1, group_score: GroupScore::Max, scale: 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeRouteParams {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Weights divided by their sum over the picks (Mixtral; Qwen3-MoE's `norm_topk_prob`);
    /// otherwise the scores at the picks.
    pub normalize: bool,
    pub routing: Routing,
}

impl MoeRouteParams {
    /// A plain top-k router (softmax scores, no groups, no scale).
    pub fn new(tokens: usize, experts: usize, top_k: usize, normalize: bool) -> Self {
        Self { tokens, experts, top_k, normalize, routing: Routing::default() }
    }

    /// u32 words of the route buffer: per token, top_k ids then top_k f32 weights.
    pub fn route_len(&self) -> usize {
        self.tokens * 2 * self.top_k
    }

    /// Fails unless 1 ≤ top_k ≤ experts ≤ [`MAX_EXPERTS`] and top_k ≤ [`MAX_TOP_K`] (the GPU
    /// ops and their CPU twins alike).
    /// A group-limited router's groups must also divide the experts (two per group at least
    /// for [`GroupScore::TopTwoSum`]), number at most [`MAX_EXPERT_GROUPS`], and the chosen
    /// groups must hold top_k experts.
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.experts == 0 || self.experts > MAX_EXPERTS || self.top_k == 0 || self.top_k > self.experts.min(MAX_TOP_K) {
            return shape_err(op, format!("{} of {} experts per token (at most {MAX_TOP_K} of {MAX_EXPERTS})", self.top_k, self.experts));
        }
        let r = &self.routing;
        if r.groups != 1 {
            let per = self.experts / r.groups.max(1);
            let min_per = if r.group_score == GroupScore::TopTwoSum { 2 } else { 1 };
            if r.groups == 0
                || r.groups > MAX_EXPERT_GROUPS
                || self.experts % r.groups != 0
                || per < min_per
                || r.groups_used == 0
                || r.groups_used > r.groups
                || r.groups_used * per < self.top_k
            {
                return shape_err(
                    op,
                    format!(
                        "{} of {} groups of {} experts cannot give {} picks (at most {MAX_EXPERT_GROUPS} groups)",
                        r.groups_used, r.groups, self.experts, self.top_k
                    ),
                );
            }
        }
        if !r.scale.is_finite() {
            return shape_err(op, format!("routing scale {}", r.scale));
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
    groups: u32,
    groups_used: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// `logits`: [tokens, experts] f32; `route`: [`MoeRouteParams::route_len`] words;
/// `selection_bias`: [experts] f32 added to the scores for choosing, not to the weights
/// (DeepSeek-V3's `e_score_correction_bias`).
pub fn moe_route(plan: &mut Plan, logits: &Tensor, selection_bias: Option<&Tensor>, route: &Tensor, p: &MoeRouteParams) -> Result<OpId> {
    const OP: &str = "moe_route";
    p.check(OP)?;
    expect_f32(OP, "router logits", logits, p.tokens * p.experts)?;
    expect_f32(OP, "route", route, p.route_len())?;
    let r = &p.routing;
    if let Some(b) = selection_bias {
        expect_f32(OP, "selection bias", b, p.experts)?;
    }
    let uniforms = RouteUniforms {
        tokens: u32_of(OP, "tokens", p.tokens)?,
        experts: p.experts as u32,
        top_k: p.top_k as u32,
        groups: r.groups as u32,
        groups_used: r.groups_used as u32,
        scale: r.scale,
        _pad: [0; 2],
    };
    let storage = vec![Some(Binding::tensor(logits)?), Some(Binding::tensor(route)?), selection_bias.map(Binding::tensor).transpose()?];
    let grid = plan.grid(uniforms.tokens.div_ceil(WG));
    let variant = Variant::default()
        .with("WG", WG)
        .flag_if(p.normalize, "NORMALIZE")
        .flag_if(r.scoring == RouterScoring::Sigmoid, "SIGMOID")
        .flag_if(selection_bias.is_some(), "SELECTION_BIAS")
        .flag_if(r.group_score == GroupScore::TopTwoSum, "GROUP_TOP2");
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
    accumulate: bool,
) -> Result<Vec<OpId>> {
    let k = w.k();
    let tpr = threads_per_row(k);
    let per_workgroup = if gated.is_some() { ROWS_PER_THREAD / 2 } else { ROWS_PER_THREAD } * WG / tpr;
    let with_act = match gated {
        Some(act) => act.variant(weight_variant(w.dtype)).flag("GATED"),
        None => weight_variant(w.dtype),
    };
    let variant = with_act.flag("EXPERTS").flag_if(bias.is_some(), "BIAS").with("WG", WG).with("TPR", tpr).with("RB", ROWS_PER_THREAD);
    let max_z = plan.dev.caps.max_workgroups_per_dim.max(1) as usize;
    let mut ops = Vec::new();
    for (i, chunk) in w.chunks.iter().enumerate() {
        let (expert_first, expert_end) = chunk_experts(op, w, chunk, expert_rows)?;
        // The sum over picks: a later chunk adds to what the earlier ones wrote.
        let variant = variant.clone().flag_if((i > 0 || accumulate) && gated.is_none(), "ACCUMULATE");
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
    MoeRouteParams::new(tokens, experts, top_k, false).check(OP)?;
    let inter = rows / 2;
    expect_f32(OP, "input", x, tokens * k)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "output", out, tokens * top_k * inter)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * rows)?;
    }
    dispatch_experts(plan, OP, Some(act), gate_up, x, route, bias, out, inter, rows, tokens * top_k, top_k, false)
}

/// `y[t] = Σ_j down_e·x[t·top_k + j] + w_tj · b_e` over token t's picks (expert e, weight w_tj,
/// from `route`; `x` already carries the weights, as [`expert_gated_matvec`] writes it): `down`
/// is `[experts, n, k]`, `bias` `[experts·n]`, `y` `[tokens, n]`. With `accumulate` the sum is
/// added to what `y` holds (a shared expert's output, DeepSeek).
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
    accumulate: bool,
) -> Result<Vec<OpId>> {
    const OP: &str = "expert_matvec";
    let (experts, n, k) = expert_shape(OP, down)?;
    MoeRouteParams::new(tokens, experts, top_k, false).check(OP)?;
    expect_f32(OP, "input", x, tokens * top_k * k)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "output", y, tokens * n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * n)?;
    }
    dispatch_experts(plan, OP, None, down, x, route, bias, y, n, n, tokens, top_k, accumulate)
}

/// u32 words of [`moe_group`]'s output for `slots` picks among `experts`.
pub fn groups_len(experts: usize, slots: usize) -> usize {
    experts + 1 + slots
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GroupUniforms {
    slots: u32,
    experts: u32,
    top_k: u32,
    _pad: u32,
}

/// A prefill's picks grouped by expert (`shaders/moe_group.wgsl`): `groups` gets each expert's
/// offset (experts + 1 words), then the slots `token · top_k + j` in expert order.
pub fn moe_group(plan: &mut Plan, route: &Tensor, groups: &Tensor, tokens: usize, experts: usize, top_k: usize) -> Result<OpId> {
    const OP: &str = "moe_group";
    MoeRouteParams::new(tokens, experts, top_k, false).check(OP)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "groups", groups, groups_len(experts, tokens * top_k))?;
    let uniforms = GroupUniforms { slots: u32_of(OP, "slots", tokens * top_k)?, experts: experts as u32, top_k: top_k as u32, _pad: 0 };
    let storage = vec![Some(Binding::tensor(route)?), Some(Binding::tensor(groups)?)];
    let variant = Variant::default().with("WG", crate::ops::WG_ROW).with("MAX_EXPERTS", MAX_EXPERTS as u32);
    plan.dispatch("moe_group", key("moe_group", variant), &uniforms, storage, [1, 1, 1])
}

/// Y[slot] = W_e · X[slot / x_div] (+ bias_e) for every pick, by expert group (matmul.wgsl's
/// EXPERTS variant): `w` `[experts, n, k]`, `groups` from [`moe_group`], `y` `[slots, n]`.
/// Each expert's rows are decoded once per tile of its tokens, not once per token.
#[allow(clippy::too_many_arguments)]
pub fn expert_matmul(
    plan: &mut Plan,
    w: &Tensor,
    x: &Tensor,
    groups: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tokens: usize,
    top_k: usize,
    x_per_pick: bool,
) -> Result<Vec<OpId>> {
    use super::matmul::{matmul_variant, tokens_per_thread, MatmulParams, ROWS_PER_WORKGROUP};
    const OP: &str = "expert_matmul";
    let (experts, n, k) = expert_shape(OP, w)?;
    let slots = tokens * top_k;
    let x_rows = if x_per_pick { slots } else { tokens };
    expect_f32(OP, "input", x, x_rows * k)?;
    expect_f32(OP, "groups", groups, groups_len(experts, slots))?;
    expect_f32(OP, "output", y, slots * n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * n)?;
    }
    // A token picks an expert once at most: a group holds up to `tokens` picks, and
    // `tokens · top_k / experts` on average, which sizes the tiles (a tile wider than its
    // group multiplies zeros).
    let tm = tokens_per_thread((tokens * top_k).div_ceil(experts));
    let variant = matmul_variant(w, bias.is_some(), tm).flag("EXPERTS");
    let mut ops = Vec::new();
    for chunk in &w.chunks {
        let (expert_first, expert_end) = chunk_experts(OP, w, chunk, n)?;
        let params = MatmulParams {
            m: u32_of(OP, "tokens", tokens)?,
            k: u32_of(OP, "k", k)?,
            n: u32_of(OP, "n", n)?,
            ldy: n as u32,
            expert_first,
            experts: experts as u32,
            x_div: if x_per_pick { 1 } else { top_k as u32 },
            ldx: k as u32,
            ..Zeroable::zeroed()
        };
        let mut storage = bindings(x, y, w, chunk, bias)?;
        storage.push(Some(Binding::tensor(groups)?));
        let grid = [params.n.div_ceil(ROWS_PER_WORKGROUP), params.m.div_ceil(8 * tm), expert_end - expert_first];
        ops.push(plan.dispatch(format!("{OP} {}", w.name), key("matmul", variant.clone()), &params, storage, grid)?);
    }
    Ok(ops)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CombineUniforms {
    tokens: u32,
    n: u32,
    top_k: u32,
    experts: u32,
}

/// y[t] = Σ over token t's picks j of `slot_out[t·top_k + j]` + w_j · bias_e
/// (`shaders/moe_combine.wgsl`): `slot_out` `[tokens·top_k, n]`, `bias` `[experts·n]`; with
/// `accumulate`, added to what `y` holds.
#[allow(clippy::too_many_arguments)]
pub fn moe_combine(
    plan: &mut Plan,
    slot_out: &Tensor,
    route: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    tokens: usize,
    n: usize,
    experts: usize,
    top_k: usize,
    accumulate: bool,
) -> Result<OpId> {
    const OP: &str = "moe_combine";
    expect_f32(OP, "pick outputs", slot_out, tokens * top_k * n)?;
    expect_f32(OP, "route", route, tokens * 2 * top_k)?;
    expect_f32(OP, "output", y, tokens * n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, experts * n)?;
    }
    let uniforms =
        CombineUniforms { tokens: u32_of(OP, "tokens", tokens)?, n: u32_of(OP, "n", n)?, top_k: top_k as u32, experts: u32_of(OP, "experts", experts)? };
    let mut storage = vec![Some(Binding::tensor(slot_out)?), Some(Binding::tensor(route)?), Some(Binding::tensor(y)?)];
    if let Some(b) = bias {
        storage.push(Some(Binding::tensor(b)?));
    }
    let grid = plan.grid(u32_of(OP, "elements", tokens * n)?.div_ceil(WG));
    plan.dispatch(OP, key(OP, Variant::default().with("WG", WG).flag_if(bias.is_some(), "BIAS").flag_if(accumulate, "ACCUMULATE")), &uniforms, storage, grid)
}

/// A mixture's stacked expert weights, with their optional biases.
#[derive(Clone, Copy)]
pub struct ExpertWeights<'a> {
    /// `[experts, 2·inter, k]`: each expert's gate rows, then its up rows.
    pub gate_up: &'a Tensor,
    /// `[experts, n, inter]`.
    pub down: &'a Tensor,
    pub gate_up_bias: Option<&'a Tensor>,
    pub down_bias: Option<&'a Tensor>,
}

/// What a grouped prefill keeps between its passes: the groups (`groups_len`), each pick's
/// [gate | up] rows (`[slots, 2·inter]`), its weighted activations (`[slots, inter]`) and its
/// down projection (`[slots, n]`).
pub struct GroupedScratch<'a> {
    pub groups: &'a Tensor,
    pub gate_up: &'a Tensor,
    pub act: &'a Tensor,
    pub down: &'a Tensor,
}

/// A mixture's MLP over a prefill's `tokens` with the picks grouped by expert, so each picked
/// expert's rows are decoded once per tile of its tokens: `moe_group`, the gate|up
/// `expert_matmul`, the weighted activation, the down `expert_matmul` and `moe_combine` (five
/// passes; decode takes `expert_gated_matvec` + `expert_matvec`, two).
#[allow(clippy::too_many_arguments)]
pub fn grouped_experts(
    plan: &mut Plan,
    e: ExpertWeights,
    x: &Tensor,
    route: &Tensor,
    scratch: &GroupedScratch,
    out: &Tensor,
    tokens: usize,
    top_k: usize,
    act: Activation,
    accumulate: bool,
) -> Result<()> {
    let (experts, rows, _) = expert_shape("grouped_experts", e.gate_up)?;
    let n = e.down.shape[1];
    let slots = tokens * top_k;
    moe_group(plan, route, scratch.groups, tokens, experts, top_k)?;
    expert_matmul(plan, e.gate_up, x, scratch.groups, e.gate_up_bias, scratch.gate_up, tokens, top_k, false)?;
    super::gated_activation::weighted_gated_activation(plan, scratch.gate_up, route, scratch.act, slots, rows / 2, top_k, act)?;
    expert_matmul(plan, e.down, scratch.act, scratch.groups, None, scratch.down, tokens, top_k, true)?;
    moe_combine(plan, scratch.down, route, e.down_bias, out, tokens, n, experts, top_k, accumulate)?;
    Ok(())
}
