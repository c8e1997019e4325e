// A mixture-of-experts router: each token's top_k experts from its router logits [tokens,
// experts], and their weights, written to `route` for the expert kernels (matvec.wgsl's EXPERTS
// variants) to read on the GPU — the choice never goes back to the CPU. One thread per token:
// a router row is a few hundred logits at most, and top_k rounds over it cost less than the
// barriers a workgroup reduction would add.
// Scores: softmax over every expert's logit, or SIGMOID of each (DeepSeek-V3). Ranking: larger
// first, ties to the lower expert index (lib/ranking.wgsl's order), on the logits themselves
// (the scores' order) unless SELECTION_BIAS adds a per-expert bias to the scores for choosing
// only (DeepSeek-V3's e_score_correction_bias) or GROUP_TOP2 sums them.
// Group-limited routing (DeepSeek): with groups > 1 the experts form equal groups, each group
// scored by its best expert (or, GROUP_TOP2, its best two summed), and the picks come from the
// best groups_used groups only.
// Weights: the scores at the picks; NORMALIZE divides them by their sum (Mixtral, Qwen3-MoE's
// norm_topk_prob; for a softmax the same as a softmax over the picks alone); then × scale
// (DeepSeek's routed_scaling_factor).
// route row t: top_k expert ids, then top_k weights as f32 bits. A pick that does not exist
// (NaN logits) is NONE, which every expert kernel skips.

struct Params {
    tokens: u32,
    experts: u32,
    top_k: u32,
    groups: u32,      // 1: no group limit (at most 32: a bit mask holds the chosen ones)
    groups_used: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> route: array<u32>;
#if SELECTION_BIAS
@group(0) @binding(3) var<storage, read> selection_bias: array<f32>; // [experts]
#endif

#include "lib/ranking.wgsl"

// The softmax's largest logit and denominator (unused by SIGMOID).
var<private> top: f32;
var<private> total: f32;

fn score(logit: f32) -> f32 {
#if SIGMOID
    return 1.0 / (1.0 + exp(-logit));
#else
    return exp(logit - top) / total;
#endif
}

// What expert e is ranked by.
fn ranking_key(base: u32, e: u32) -> f32 {
    let v = logits[base + e];
#if SELECTION_BIAS
    return score(v) + selection_bias[e];
#else
#if GROUP_TOP2
    return score(v);
#else
    return v;
#endif
#endif
}

// Group g's score: its best key, or its best two summed; -3e38 when all its logits are NaN.
fn group_score(base: u32, g: u32, per: u32) -> f32 {
    var first = -3.0e38;
    var second = -3.0e38;
    var found = 0u;
    for (var e = g * per; e < (g + 1u) * per; e++) {
        let v = logits[base + e];
        // NaN tests are written `v == v`: software adapters fold `v != v` to false.
        if (v == v) {
            let s = ranking_key(base, e);
            found += 1u;
            if (s > first) {
                second = first;
                first = s;
            } else if (s > second) {
                second = s;
            }
        }
    }
#if GROUP_TOP2
    if (found >= 2u) {
        return first + second;
    }
#endif
    return first;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.y * nwg.x * WG + gid.x;
    if (t >= params.tokens) {
        return;
    }
    let base = t * params.experts;
    let out = t * 2u * params.top_k;
    // The softmax's denominator over every expert, from the row's largest logit.
    // NaN logits are left out (max() with a NaN is the adapter's choice: SwiftShader's is NaN).
    top = -3.0e38;
    for (var e = 0u; e < params.experts; e++) {
        let v = logits[base + e];
        if (v == v) {
            top = max(top, v);
        }
    }
    total = 0.0;
    for (var e = 0u; e < params.experts; e++) {
        let v = logits[base + e];
        if (v == v) {
            total += exp(v - top);
        }
    }
    // The groups the picks may come from, one bit each.
    let per = params.experts / params.groups;
    var allowed = 0xffffffffu;
    if (params.groups > 1u) {
        // Scored once: each selection round below reads them (groups ≤ 32).
        var group_scores: array<f32, 32>;
        for (var g = 0u; g < params.groups; g++) {
            group_scores[g] = group_score(base, g, per);
        }
        allowed = 0u;
        for (var r = 0u; r < params.groups_used; r++) {
            var bs = 0.0;
            var bg = NONE;
            for (var g = 0u; g < params.groups; g++) {
                let s = group_scores[g];
                if ((allowed & (1u << g)) == 0u && better(s, g, bs, bg)) {
                    bs = s;
                    bg = g;
                }
            }
            allowed |= 1u << bg;
        }
    }
    var prev_val = 0.0;
    var prev_idx = NONE;
    var picked = 0.0;
    for (var j = 0u; j < params.top_k; j++) {
        var bv = 0.0;
        var bi = NONE;
        for (var e = 0u; e < params.experts; e++) {
            let v = logits[base + e];
            if (v == v && (allowed & (1u << (e / per))) != 0u) {
                let key = ranking_key(base, e);
                let after = prev_idx == NONE || better(prev_val, prev_idx, key, e);
                if (after && better(key, e, bv, bi)) {
                    bv = key;
                    bi = e;
                }
            }
        }
        if (bi == NONE) {
            // Fewer candidates than top_k (NaNs): the rest stay unpicked.
            route[out + j] = NONE;
            route[out + params.top_k + j] = 0u;
            continue;
        }
#if SIGMOID
        let w = score(logits[base + bi]);
#else
        let w = exp(logits[base + bi] - top);
#endif
        picked += w;
        route[out + j] = bi;
        route[out + params.top_k + j] = bitcast<u32>(w);
        prev_val = bv;
        prev_idx = bi;
    }
#if NORMALIZE
    let denominator = picked + 1e-20;
#else
#if SIGMOID
    let denominator = 1.0;
#else
    let denominator = total;
#endif
#endif
    for (var j = 0u; j < params.top_k; j++) {
        let w = bitcast<f32>(route[out + params.top_k + j]);
        route[out + params.top_k + j] = bitcast<u32>(w / denominator * params.scale);
    }
}
