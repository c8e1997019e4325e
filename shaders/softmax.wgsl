// out[r, :] = softmax(x[r, :] * scale), one workgroup per row; scale = 1/temperature when
// sampling. Max-subtracted, f32, shared-memory reductions.

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

#include "lib/row_reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;

    var m = -3.4e38;
    for (var i = lid; i < params.cols; i += WG) {
        m = max(m, x[base + i] * params.scale);
    }
    let row_max = workgroup_max(lid, m);

    var sum = 0.0;
    for (var i = lid; i < params.cols; i += WG) {
        let e = exp(x[base + i] * params.scale - row_max);
        out[base + i] = e;
        sum += e;
    }
    let total = workgroup_sum(lid, sum);
    let inv_sum = 1.0 / total;
    for (var i = lid; i < params.cols; i += WG) {
        out[base + i] *= inv_sum; // this thread's own writes above
    }
}
