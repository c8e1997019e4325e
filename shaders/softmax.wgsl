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

var<workgroup> partial: array<f32, WG>;

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
    partial[lid] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] = max(partial[lid], partial[lid + stride]);
        }
        workgroupBarrier();
    }
    let row_max = partial[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var i = lid; i < params.cols; i += WG) {
        let e = exp(x[base + i] * params.scale - row_max);
        out[base + i] = e;
        sum += e;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let inv_sum = 1.0 / partial[0];
    for (var i = lid; i < params.cols; i += WG) {
        out[base + i] *= inv_sum; // this thread's own writes above
    }
}
