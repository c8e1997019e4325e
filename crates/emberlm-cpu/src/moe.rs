//! A mixture-of-experts MLP on the CPU: the twins of `emberlm_core::ops::moe` (same route
//! layout, same stacked `[experts, rows, k]` weights). A decode step reads each picked expert's
//! rows once, the rows split over the threads; a prefill groups its tokens by expert, so each
//! picked expert's rows are decoded once for all the tokens that picked it.

use emberlm_core::ops::{Activation, GroupScore, MoeRouteParams, RouterScoring};
use emberlm_core::{DType, Error, Result};

use crate::int8::Activations;
use crate::math;
use crate::matvec::{matmul_rows, matvec_rows, RowActivations, RowKernels};
use crate::parallel::{for_parts, map_ranges};
use crate::tensor::CpuTensor;

/// Marks a pick that does not exist (NaN logits), as on the GPU.
const NONE: u32 = u32::MAX;

fn shape<T>(op: &'static str, detail: String) -> Result<T> {
    Err(Error::Shape { op, detail })
}

/// Each token's top_k experts and weights (`emberlm_core::ops::moe_route`).
pub fn moe_route(logits: &CpuTensor, selection_bias: Option<&CpuTensor>, route: &CpuTensor, p: &MoeRouteParams) -> Result<()> {
    let _time = crate::profile::scope("moe_route");
    p.check("moe_route")?;
    logits.expect_f32("moe_route", p.tokens * p.experts)?;
    route.expect_f32("moe_route", p.route_len())?;
    let r = &p.routing;
    if let Some(b) = selection_bias {
        b.expect_f32("moe_route", p.experts)?;
    }
    let bias = selection_bias.map(|b| b.f32s());
    let sigmoid = r.scoring == RouterScoring::Sigmoid;
    let top2 = r.group_score == GroupScore::TopTwoSum;
    let per = p.experts / r.groups;
    let logits = logits.f32s();
    let mut route = route.words_mut();
    for (row, out) in logits.chunks_exact(p.experts).take(p.tokens).zip(route.chunks_exact_mut(2 * p.top_k)) {
        let top = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = row.iter().map(|&v| (v - top).exp()).filter(|v| !v.is_nan()).sum();
        let score = |v: f32| if sigmoid { 1.0 / (1.0 + (-v).exp()) } else { (v - top).exp() / total };
        // What the GPU ranks by (shaders/moe_route.wgsl): the logits, or with a selection bias or
        // top-two group scores, the scores (+ bias).
        let key = |e: usize| match &bias {
            Some(b) => score(row[e]) + b[e],
            None if top2 => score(row[e]),
            None => row[e],
        };
        let better = |a: (f32, usize), b: (f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let mut allowed = vec![r.groups == 1; r.groups];
        if r.groups > 1 {
            let mut groups: Vec<(f32, usize)> = (0..r.groups)
                .map(|g| {
                    let mut keys: Vec<f32> = (g * per..(g + 1) * per).filter(|&e| !row[e].is_nan()).map(key).collect();
                    keys.sort_by(|a, b| b.total_cmp(a));
                    let s = match keys.as_slice() {
                        [] => -3.0e38,
                        [a, b, ..] if top2 => a + b,
                        [a, ..] => *a,
                    };
                    (s, g)
                })
                .collect();
            groups.sort_by(|&a, &b| better(a, b));
            groups.iter().take(r.groups_used).for_each(|g| allowed[g.1] = true);
        }
        let mut order: Vec<(f32, usize)> = (0..p.experts).filter(|&e| !row[e].is_nan() && allowed[e / per]).map(|e| (key(e), e)).collect();
        // Larger first, ties to the lower index.
        order.sort_by(|&a, &b| better(a, b));
        let (ids, weights) = out.split_at_mut(p.top_k);
        let mut picked = 0f32;
        for j in 0..p.top_k {
            match order.get(j) {
                Some(&(_, e)) => {
                    let w = if sigmoid { score(row[e]) } else { (row[e] - top).exp() };
                    picked += w;
                    ids[j] = e as u32;
                    weights[j] = w.to_bits();
                }
                None => (ids[j], weights[j]) = (NONE, 0),
            }
        }
        let denominator = match (p.normalize, sigmoid) {
            (true, _) => picked + 1e-20,
            (false, true) => 1.0,
            (false, false) => total,
        };
        weights.iter_mut().for_each(|w| *w = (f32::from_bits(*w) / denominator * r.scale).to_bits());
    }
    Ok(())
}

/// `(experts, rows per expert, k)` of a stacked expert weight.
fn expert_shape(op: &'static str, w: &CpuTensor) -> Result<(usize, usize, usize)> {
    match w.shape.as_slice() {
        &[experts, rows, k] if experts > 0 && rows > 0 => Ok((experts, rows, k)),
        s => shape(op, format!("`{}` {s:?} is not a stack of experts [experts, rows, k]", w.name)),
    }
}

/// One pick: its slot (token · top_k + j), token, expert and weight.
#[derive(Clone, Copy)]
struct Pick {
    slot: usize,
    token: usize,
    expert: usize,
    weight: f32,
}

/// The route's picks of `tokens` tokens, grouped by expert (missing picks left out).
fn picks_by_expert(route: &CpuTensor, tokens: usize, top_k: usize, experts: usize) -> Vec<Vec<Pick>> {
    let route = route.words();
    let mut groups = vec![Vec::new(); experts];
    for token in 0..tokens {
        let (ids, weights) = route[token * 2 * top_k..(token + 1) * 2 * top_k].split_at(top_k);
        for (j, (&e, &w)) in ids.iter().zip(weights).enumerate() {
            if let Some(group) = groups.get_mut(e as usize) {
                group.push(Pick { slot: token * top_k + j, token, expert: e as usize, weight: f32::from_bits(w) });
            }
        }
    }
    groups
}

/// `rows` rows of a weight (value and scale words `qs`, `sc`) from its row `row0`, against the
/// `m` activation rows `x` ([m, k]): `out` is [rows, m]. One token: the row kernels (8-bit
/// activations where `activations` says), the rows split over the threads; more: decoded once
/// for all `m`.
#[allow(clippy::too_many_arguments)]
fn expert_rows(dtype: DType, qs: &[u32], sc: &[u32], k: usize, row0: usize, rows: usize, x: &[f32], m: usize, activations: Activations, out: &mut [f32]) {
    if m == 1 {
        let kernels = RowKernels::get();
        let prepared = RowActivations::new(kernels, dtype, x, activations);
        for_parts(out, 16, |start, part| matvec_rows(kernels, dtype, qs, sc, k, x, &prepared, row0 + start, part));
    } else {
        matmul_rows(dtype, qs, sc, k, x, m, row0, rows, out);
    }
}

/// The rows of each expert that has picks, against its tokens' rows of `x` (`row_of(pick)`
/// names the row): `(picks, [rows, picks])` per expert, experts on the pool's threads when
/// several tokens share them (a prefill), one at a time with its rows split otherwise.
fn run_experts(w: &CpuTensor, groups: &[Vec<Pick>], x: &[f32], row_of: impl Fn(&Pick) -> usize + Sync, activations: Activations) -> Vec<(Vec<Pick>, Vec<f32>)> {
    let (rows, k, dtype) = (w.shape[1], w.k(), w.dtype);
    let (qs, sc) = (w.words(), w.scale_words());
    let (qs, sc) = (&*qs, &*sc);
    let used: Vec<&Vec<Pick>> = groups.iter().filter(|g| !g.is_empty()).collect();
    let one = |picks: &Vec<Pick>| {
        let m = picks.len();
        let gathered: Vec<f32> = picks.iter().flat_map(|p| &x[row_of(p) * k..(row_of(p) + 1) * k]).copied().collect();
        let mut out = vec![0f32; rows * m];
        expert_rows(dtype, qs, sc, k, picks[0].expert * rows, rows, &gathered, m, activations, &mut out);
        (picks.clone(), out)
    };
    if used.iter().all(|g| g.len() == 1) {
        used.into_iter().map(one).collect()
    } else {
        map_ranges(used.len(), 1, |r| r.map(|i| one(used[i])).collect::<Vec<_>>()).into_iter().flatten().collect()
    }
}

/// `out[slot] = w · act(gate_e·x[token] + bg) · (up_e·x[token] + bu)` per pick
/// (`emberlm_core::ops::expert_gated_matvec`).
#[allow(clippy::too_many_arguments)]
pub fn expert_gated_matvec(
    gate_up: &CpuTensor,
    x: &CpuTensor,
    route: &CpuTensor,
    bias: Option<&CpuTensor>,
    out: &CpuTensor,
    tokens: usize,
    top_k: usize,
    act: Activation,
    activations: Activations,
) -> Result<()> {
    const OP: &str = "expert_gated_matvec";
    let _time = crate::profile::scope(OP);
    let (experts, rows, k) = expert_shape(OP, gate_up)?;
    let inter = rows / 2;
    x.expect_f32(OP, tokens * k)?;
    route.expect_f32(OP, tokens * 2 * top_k)?;
    out.expect_f32(OP, tokens * top_k * inter)?;
    if let Some(b) = bias {
        b.expect_f32(OP, experts * rows)?;
    }
    let groups = picks_by_expert(route, tokens, top_k, experts);
    let results = run_experts(gate_up, &groups, &x.f32s(), |p| p.token, activations);
    let bias = bias.map(|b| b.f32s());
    let mut o = out.f32s_mut();
    for (picks, proj) in results {
        let m = picks.len();
        for (i, p) in picks.iter().enumerate() {
            let b = |r: usize| bias.as_ref().map_or(0.0, |b| b[p.expert * rows + r]);
            for (c, o) in o[p.slot * inter..(p.slot + 1) * inter].iter_mut().enumerate() {
                let (g, u) = (proj[c * m + i] + b(c), proj[(inter + c) * m + i] + b(inter + c));
                *o = p.weight * math::gated(act, g, u);
            }
        }
    }
    Ok(())
}

/// `y[t] = Σ_j down_e·x[t·top_k + j] + w_tj · b_e` (`emberlm_core::ops::expert_matvec`); with
/// `accumulate`, added to what `y` holds.
#[allow(clippy::too_many_arguments)]
pub fn expert_matvec(
    down: &CpuTensor,
    x: &CpuTensor,
    route: &CpuTensor,
    bias: Option<&CpuTensor>,
    y: &CpuTensor,
    tokens: usize,
    top_k: usize,
    accumulate: bool,
    activations: Activations,
) -> Result<()> {
    const OP: &str = "expert_matvec";
    let _time = crate::profile::scope(OP);
    let (experts, n, k) = expert_shape(OP, down)?;
    x.expect_f32(OP, tokens * top_k * k)?;
    route.expect_f32(OP, tokens * 2 * top_k)?;
    y.expect_f32(OP, tokens * n)?;
    if let Some(b) = bias {
        b.expect_f32(OP, experts * n)?;
    }
    let groups = picks_by_expert(route, tokens, top_k, experts);
    let results = run_experts(down, &groups, &x.f32s(), |p| p.slot, activations);
    let bias = bias.map(|b| b.f32s());
    let mut y = y.f32s_mut();
    if !accumulate {
        y[..tokens * n].fill(0.0);
    }
    for (picks, out) in results {
        let m = picks.len();
        for (i, p) in picks.iter().enumerate() {
            for (r, v) in y[p.token * n..(p.token + 1) * n].iter_mut().enumerate() {
                *v += out[r * m + i] + bias.as_ref().map_or(0.0, |b| p.weight * b[p.expert * n + r]);
            }
        }
    }
    Ok(())
}
