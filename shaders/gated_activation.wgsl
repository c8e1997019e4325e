// out[r, i] = act(gate[r, i]) * up[r, i], reading fused [gate | up] rows of width 2·inter (the
// output of one matmul against concatenated gate/up weights). act: SiLU, or GELU with the tanh
// approximation when GELU_TANH (Gemma).

struct Params {
    rows: u32,
    inter: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

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
    out[gid] = activation(gate_up[base + i]) * gate_up[base + params.inter + i];
}
