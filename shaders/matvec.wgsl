// y[row] = dot(W[row, :], x) (+ bias[row]) for one chunk of W's rows: the decode-time matmul.
// Memory-bound. TPR threads share a row, walking it in 8-weight octets (adjacent threads read
// adjacent words), so a 64-thread workgroup reduces WG / TPR rows side by side, each thread
// RB rows apart reusing the x it loads for all of them: ROWS = RB · WG / TPR rows per workgroup.
// TPR follows k (8 for k = 576, 64 for k >= 4096) so every thread has several octets per row:
// with a fixed 64 threads per row a small model's rows gave each thread one octet, and the
// workgroup count and per-workgroup reduction dominated (SwiftShader: ~27 µs per workgroup).
// Weights are decoded in registers (weights.wgsl) and never written out; sums are f32; one
// barrier, then one thread per row adds its TPR partial sums.
// GATED (`gated_matvec`): W is fused [gate | up] (2·rows rows) and y[row] = act(gate·x) ·
// (up·x), the decode step's MLP input in one dispatch: each thread's four rows are two gate
// rows and the up rows that pair with them, so no gate|up vector is written or read back.
struct Params {
    k: u32,          // row length (multiple of 8)
    rows: u32,       // rows in this chunk (GATED: outputs; W has twice as many rows)
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
#if GATED
#include "lib/activation.wgsl"
#endif

const LANES: u32 = WG / TPR; // rows reduced side by side
#if GATED
const ROWS: u32 = RB / 2u * LANES; // outputs per workgroup: each takes a gate and an up row
#else
const ROWS: u32 = RB * LANES; // rows per workgroup
#endif

// The body below is unrolled for RB = 4 rows per thread (ROWS_PER_THREAD in ops/matvec.rs).
const_assert RB == 4u;
var<workgroup> partial: array<array<f32, RB>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.y * nwg.x + wid.x) * ROWS;
    if (row0 >= params.rows) {
        return; // whole workgroup: uniform
    }
    let octets = params.k / 8u;
    let lane = lid / TPR; // this thread's rows: row0 + lane + rb · LANES
    // Named accumulators, unrolled over the RB = 4 rows: an array indexed in a loop stays in
    // memory on software adapters (SwiftShader, lavapipe), named ones stay in registers.
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    // The thread's rows, clamped (past the end: computed, never stored).
    let last = params.rows - 1u;
#if GATED
    let g0 = min(row0 + lane, last);
    let g1 = min(row0 + lane + LANES, last);
    let rows = vec4<u32>(g0, g0 + params.rows, g1, g1 + params.rows);
#else
    let rows = min(vec4<u32>(row0 + lane) + vec4<u32>(0u, 1u, 2u, 3u) * LANES, vec4<u32>(last));
#endif
    for (var o = lid % TPR; o < octets; o += TPR) {
        let xa = x[params.x_offset + 2u * o];
        let xb = x[params.x_offset + 2u * o + 1u];
        acc0 += row_dot(rows.x, o, xa, xb);
        acc1 += row_dot(rows.y, o, xa, xb);
        acc2 += row_dot(rows.z, o, xa, xb);
        acc3 += row_dot(rows.w, o, xa, xb);
    }
    partial[lid][0] = acc0;
    partial[lid][1] = acc1;
    partial[lid][2] = acc2;
    partial[lid][3] = acc3;
    workgroupBarrier();
    // Thread i < ROWS finishes output row0 + i = row0 + lane' + slot · LANES.
    if (lid < ROWS && row0 + lid < params.rows) {
        let first = (lid % LANES) * TPR;
        let slot = lid / LANES;
#if GATED
        // One chunk holds all the rows (row_offset 0): gate row r pairs with up row rows + r.
        let r = row0 + lid;
        let gate = partial_sum(first, 2u * slot) + bias_of(r);
        let up = partial_sum(first, 2u * slot + 1u) + bias_of(params.rows + r);
        y[params.y_offset + r] = activation(gate) * up;
#else
        let r = params.row_offset + row0 + lid;
        y[params.y_offset + r] = partial_sum(first, slot) + bias_of(r);
#endif
    }
}

// Row slot `rb`'s sum over the TPR threads from `first`.
fn partial_sum(first: u32, rb: u32) -> f32 {
    var total = 0.0;
    for (var t = 0u; t < TPR; t++) {
        total += partial[first + t][rb];
    }
    return total;
}

fn bias_of(r: u32) -> f32 {
#if BIAS
    return bias[r];
#else
    return 0.0;
#endif
}

// One octet of a row's dot product.
fn row_dot(row: u32, o: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let w = weight_octet(row, o, params.k);
    return dot(w.lo, xa) + dot(w.hi, xb);
}
