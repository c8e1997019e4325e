// out = x / rms(x) * (weight + weight_offset), one workgroup per row. With RESIDUAL the row is
// first added into the residual stream in place (residual += residual_scale · x; Granite scales
// its blocks' outputs) and the sum is normalised:
// the pre-norm transformer's "add then norm" in one pass. weight_offset = 1 gives Gemma's (1 + w).
// With groups > 1 each model row is `groups` rows here, normalised apart, each with its own part
// of the weight (Mamba2's grouped norm).

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    weight_offset: f32,
    groups: u32,
    residual_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
#if RESIDUAL
@group(0) @binding(4) var<storage, read_write> residual: array<f32>;
#endif

#include "lib/row_reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    var sum_sq = 0.0;
    for (var i = lid; i < params.cols; i += WG) {
#if RESIDUAL
        let h = residual[base + i] + params.residual_scale * x[base + i];
        residual[base + i] = h;
#else
        let h = x[base + i];
#endif
        sum_sq += h * h;
    }
    let total = workgroup_sum(lid, sum_sq);
    let inv_rms = inverseSqrt(total / f32(params.cols) + params.eps);
    let w_base = (row % params.groups) * params.cols;
    for (var i = lid; i < params.cols; i += WG) {
#if RESIDUAL
        let h = residual[base + i]; // written by this same thread above
#else
        let h = x[base + i];
#endif
        out[base + i] = h * inv_rms * (weight[w_base + i] + params.weight_offset);
    }
}
