// In-place RMS norm of every head vector: Qwen3's and Gemma 3's q/k norms, MLA's latent norms.
// `heads` vectors of d from column `first` of each token row (rows row_stride floats apart, so
// q and k can sit inside the fused qkv row); one workgroup per (token, head); weight has d
// entries, used as (weight + weight_offset).

struct Params {
    tokens: u32,
    heads: u32,
    d: u32,
    row_stride: u32,
    first: u32,
    eps: f32,
    weight_offset: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;

#include "lib/row_reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = wid.y * nwg.x + wid.x;
    if (idx >= params.tokens * params.heads) {
        return;
    }
    let token = idx / params.heads;
    let head = idx % params.heads;
    let base = token * params.row_stride + params.first + head * params.d;
    var sum_sq = 0.0;
    for (var i = lid; i < params.d; i += WG) {
        let v = x[base + i];
        sum_sq += v * v;
    }
    let total = workgroup_sum(lid, sum_sq);
    let inv_rms = inverseSqrt(total / f32(params.d) + params.eps);
    for (var i = lid; i < params.d; i += WG) {
        x[base + i] = x[base + i] * inv_rms * (weight[i] + params.weight_offset);
    }
}
