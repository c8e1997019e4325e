// out[r] = index of the largest x[r, :], one workgroup per row; ties go to the lowest index
// (as torch.argmax) and NaNs are skipped. Greedy decoding reads back only this one u32.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

#include "lib/ranking.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    var bv = 0.0;
    var bi = NONE;
    for (var i = lid; i < params.cols; i += WG) {
        let v = x[base + i];
        if (v == v && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    reduce_best(lid, bv, bi);
    if (lid == 0u) {
        out[row] = select(best_idx[0], 0u, best_idx[0] == NONE);
    }
}
