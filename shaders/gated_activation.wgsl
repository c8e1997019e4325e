// out[r, i] = act(gate[r, i]) * up[r, i], reading fused [gate | up] rows of width 2·inter (the
// output of one matmul against concatenated gate/up weights). act: SiLU, or GELU with the tanh
// approximation when GELU_TANH (Gemma).
// WEIGHTED: rows are a mixture's picks (slot = token · top_k + j) and each is scaled by its
// pick's weight from `route` (moe_route.wgsl), as the decode kernels scale theirs.

struct Params {
    rows: u32,
    inter: u32,
    top_k: u32, // WEIGHTED
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#if WEIGHTED
@group(0) @binding(3) var<storage, read> route: array<u32>;
#endif

#include "lib/activation.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    if (gid >= params.rows * params.inter) {
        return;
    }
    let r = gid / params.inter;
    let i = gid % params.inter;
    let base = r * 2u * params.inter;
    var value = gated(gate_up[base + i], gate_up[base + params.inter + i]);
#if WEIGHTED
    let token = r / params.top_k;
    value *= bitcast<f32>(route[token * 2u * params.top_k + params.top_k + r % params.top_k]);
#endif
    out[gid] = value;
}
