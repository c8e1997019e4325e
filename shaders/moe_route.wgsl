// A mixture-of-experts router: each token's top_k experts from its router logits [tokens,
// experts], and their weights, written to `route` for the expert kernels (matvec.wgsl's EXPERTS
// variants) to read on the GPU — the choice never goes back to the CPU. One thread per token:
// a router row is a few hundred logits at most, and top_k rounds over it cost less than the
// barriers a workgroup reduction would add.
// Ranking: larger logits first, ties to the lower expert index (lib/ranking.wgsl's order).
// Weights: softmax over all the experts' logits, taken at the picks; NORMALIZE divides them by
// their sum (Mixtral, Qwen3-MoE's norm_topk_prob), which equals a softmax over the picks alone.
// route row t: top_k expert ids, then top_k weights as f32 bits. A pick that does not exist
// (NaN logits) is NONE, which every expert kernel skips.

struct Params {
    tokens: u32,
    experts: u32,
    top_k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> route: array<u32>;

#include "lib/ranking.wgsl"

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
    var top = -3.0e38;
    for (var e = 0u; e < params.experts; e++) {
        let v = logits[base + e];
        if (v == v) {
            top = max(top, v);
        }
    }
    var total = 0.0;
    for (var e = 0u; e < params.experts; e++) {
        let v = logits[base + e];
        if (v == v) {
            total += exp(v - top);
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
            let after = prev_idx == NONE || better(prev_val, prev_idx, v, e);
            if (v == v && after && better(v, e, bv, bi)) {
                bv = v;
                bi = e;
            }
        }
        if (bi == NONE) {
            // Fewer candidates than top_k (NaNs): the rest stay unpicked.
            route[out + j] = NONE;
            route[out + params.top_k + j] = 0u;
            continue;
        }
        let w = exp(bv - top);
        picked += w;
        route[out + j] = bi;
        route[out + params.top_k + j] = bitcast<u32>(w);
        prev_val = bv;
        prev_idx = bi;
    }
#if NORMALIZE
    let denominator = picked;
#else
    let denominator = total;
#endif
    for (var j = 0u; j < params.top_k; j++) {
        let w = bitcast<f32>(route[out + params.top_k + j]);
        route[out + params.top_k + j] = bitcast<u32>(w / denominator);
    }
}
