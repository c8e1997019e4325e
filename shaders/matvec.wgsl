// y[row] = dot(W[row, :], x) (+ bias[row]) for one chunk of W's rows: the decode-time matmul.
// Memory-bound, so each workgroup computes ROWS rows and every thread reuses the x it loads
// for all of them; threads walk a row in 8-weight octets, so adjacent threads read adjacent
// words. Weights are decoded in registers (weights.wgsl) and never written out; sums are f32.
// Reduction: subgroupAdd then one slot per subgroup when SUBGROUPS, a shared-memory tree otherwise.
#if ENABLE_SUBGROUPS_DIRECTIVE
enable subgroups; // browsers (Tint) require the directive; naga, natively, rejects it
#endif

struct Params {
    k: u32,          // row length (multiple of 8)
    rows: u32,       // rows in this chunk
    row_offset: u32, // W row (and bias index) of this chunk's first row
    y_offset: u32,   // where W's row 0 goes in y (q, k, v into one fused row)
    x_offset: u32,   // first x element, in vec4s (the last row of a [T, k] activation)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> w_qs: array<u32>;
#if QUANTIZED
@group(0) @binding(4) var<storage, read> w_scales: array<u32>;
#endif
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

#include "lib/weights.wgsl"

var<workgroup> partial: array<array<f32, ROWS>, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
    let row0 = (wid.y * nwg.x + wid.x) * ROWS;
    if (row0 >= params.rows) {
        return; // whole workgroup: uniform
    }
    let octets = params.k / 8u;
    var acc: array<f32, ROWS>;
    for (var o = lid; o < octets; o += WG) {
        let xa = x[params.x_offset + 2u * o];
        let xb = x[params.x_offset + 2u * o + 1u];
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, params.rows - 1u); // clamped rows are computed, never stored
            let w = weight_octet(row, o, params.k);
            acc[r] += dot(w.lo, xa) + dot(w.hi, xb);
        }
    }

#if SUBGROUPS
    // Subgroups are numbered by lid / sg_size (linear layout, as on every known driver).
    for (var r = 0u; r < ROWS; r++) {
        let s = subgroupAdd(acc[r]);
        if (sg_lane == 0u) {
            partial[lid / sg_size][r] = s;
        }
    }
    workgroupBarrier();
    if (lid < ROWS && row0 + lid < params.rows) {
        var total = 0.0;
        for (var i = 0u; i < WG / sg_size; i++) {
            total += partial[i][lid];
        }
        store(row0 + lid, total);
    }
#else
    for (var r = 0u; r < ROWS; r++) {
        partial[lid][r] = acc[r];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            for (var r = 0u; r < ROWS; r++) {
                partial[lid][r] += partial[lid + stride][r];
            }
        }
        workgroupBarrier();
    }
    if (lid < ROWS && row0 + lid < params.rows) {
        store(row0 + lid, partial[0][lid]);
    }
#endif
}

fn store(row: u32, value: f32) {
    let r = params.row_offset + row;
#if BIAS
    y[params.y_offset + r] = value + bias[r];
#else
    y[params.y_offset + r] = value;
#endif
}
