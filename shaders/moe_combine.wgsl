// The end of a grouped mixture-of-experts prefill: y[t, r] = Σ over token t's picks j of
// slot_out[t·top_k + j, r] (the expert's down projection of the pick's weighted activations,
// matmul.wgsl's EXPERTS variant) + weight_j · bias_e[r]. Missing picks (NONE) add nothing.
// ACCUMULATE adds the sum to what y holds (a shared expert's output, DeepSeek).

struct Params {
    tokens: u32,
    n: u32,     // row width of y and slot_out
    top_k: u32,
    experts: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> slot_out: array<f32>;
@group(0) @binding(2) var<storage, read> route: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    if (gid >= params.tokens * params.n) {
        return;
    }
    let t = gid / params.n;
    let r = gid % params.n;
    let picks = t * 2u * params.top_k;
    var total = 0.0;
    for (var j = 0u; j < params.top_k; j++) {
        let e = route[picks + j];
        if (e < params.experts) {
            total += slot_out[(t * params.top_k + j) * params.n + r];
#if BIAS
            total += bitcast<f32>(route[picks + params.top_k + j]) * bias[e * params.n + r];
#endif
        }
    }
#if ACCUMULATE
    total += y[gid];
#endif
    y[gid] = total;
}
