// The k largest x[r, :] in descending order (ties: lower index first), one workgroup per row.
// k rounds, each a strided scan plus a tree reduction for the best element ranked after the
// previous round's pick: O(k · cols / WG) per thread, exact, and no sort buffer. Meant for the
// k of top-k sampling (tens), not for full sorts. Missing picks (k > finite values) are NONE.

struct Params {
    rows: u32,
    cols: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_val: array<f32>;

#include "lib/ranking.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    var prev_val = 0.0;
    var prev_idx = NONE; // NONE: nothing picked yet
    for (var round = 0u; round < params.k; round++) {
        var bv = 0.0;
        var bi = NONE;
        for (var i = lid; i < params.cols; i += WG) {
            let v = x[base + i];
            // Ranked after the previous pick = the previous pick is better than it.
            let after = prev_idx == NONE || better(prev_val, prev_idx, v, i);
            if (v == v && after && better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        reduce_best(lid, bv, bi);
        // Uniform loads: the loop's barriers need every thread to agree on whether to go on.
        prev_idx = workgroupUniformLoad(&best_idx[0]);
        prev_val = best_val[0];
        if (lid == 0u) {
            out_idx[row * params.k + round] = prev_idx;
            out_val[row * params.k + round] = prev_val;
        }
        workgroupBarrier();
        if (prev_idx == NONE) {
            // Fewer than k candidates: mark the rest.
            for (var r = round + 1u + lid; r < params.k; r += WG) {
                out_idx[row * params.k + r] = NONE;
                out_val[row * params.k + r] = 0.0;
            }
            break;
        }
    }
}
