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
// EXPERTS (ops/moe.rs): W stacks a mixture's experts, `rows` rows each, and `route` holds each
// token's top_k expert ids and weights (moe_route.wgsl), so only the chosen experts' rows are
// read, without the choice coming back to the CPU. A chunk holds experts
// expert_first..expert_end; picks outside it are skipped (another chunk's dispatch takes them).
// - with GATED (`expert_gated_matvec`): workgroup z is one (token, pick) slot; each expert's rows
//   are its [gate | up]; y[slot] = weight · act(gate·x[token]) · (up·x[token]) (+ biases).
// - alone (`expert_matvec`, the down projection): workgroup z is one token; y[token] = the sum
//   over its picks of W_e · x[slot] (+ weight · bias_e), so the picks meet without another pass;
//   with ACCUMULATE (a later chunk, or a shared expert's output already there) it adds to y.
// Neither (plain matvec): workgroup z is a head of a per-head projection (`head_linear`, MLA):
// W holds `rows` rows per head and head z reads x from x_offset + z·head_x and writes y from
// y_offset + z·head_y. One head (z = 0) is the plain matvec.
// Decode's fused norms (plain and GATED, not EXPERTS; ops::MatvecEnds):
// - NORMED: x is the residual stream and the RMSNorm before the projection happens here:
//   y = W·(x ⊙ (norm_w + norm_offset)) / rms(x), 1/rms factored out of the dot product. Each
//   thread sums the squares of the x it loads anyway; a row's threads cover all of x, so their
//   sum meets the dot products' in the one reduction: no norm dispatch, no normed vector
//   written and read back, no extra barrier.
// - ACCUMULATE (plain): y += y_scale · (W·x + bias): a block's output projection adds into the
//   residual stream itself (one workgroup owns each row), the add the next norm did before.
struct Params {
    k: u32,          // row length (multiple of 8)
    rows: u32,       // rows in this chunk (GATED: outputs; W has twice as many rows); EXPERTS: per expert
    row_offset: u32, // W row (and bias index) of this chunk's first row
    y_offset: u32,   // where W's row 0 goes in y (q, k, v into one fused row)
    x_offset: u32,   // first x element, in vec4s (the last row of a [T, k] activation)
    top_k: u32,      // EXPERTS: picks per token
    expert_first: u32, // EXPERTS: this chunk's experts
    expert_end: u32,
    slot0: u32,      // EXPERTS: the slot (GATED) or token workgroup z = 0 stands for
    head_x: u32,     // plain: x step per head, in vec4s
    head_y: u32,     // plain: y step per head
    eps: f32,        // NORMED
    norm_offset: f32, // NORMED: Gemma-style (1 + w) weights
    y_scale: f32,    // plain ACCUMULATE: Granite's residual multiplier, else 1
    _pad: u32,
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
#if EXPERTS
@group(0) @binding(6) var<storage, read> route: array<u32>;
#endif
#if NORMED
@group(0) @binding(7) var<storage, read> norm_w: array<vec4<f32>>;
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
#if NORMED
// Each thread's sum of x² over its octets, and its running value (dot_rows adds to it).
var<workgroup> partial_sq: array<f32, WG>;
var<private> sum_sq: f32;
#endif
#if EXPERTS && GATED
var<workgroup> picked_expert: u32;
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.y * nwg.x + wid.x) * ROWS;
    if (row0 >= params.rows) {
        return; // whole workgroup: uniform
    }
    let lane = lid / TPR; // this thread's rows: row0 + lane + rb · LANES
    // The thread's rows, clamped (past the end: computed, never stored).
    let last = params.rows - 1u;
#if GATED
    let g0 = min(row0 + lane, last);
    let g1 = min(row0 + lane + LANES, last);
    let rows = vec4<u32>(g0, g0 + params.rows, g1, g1 + params.rows);
#else
    let rows = min(vec4<u32>(row0 + lane) + vec4<u32>(0u, 1u, 2u, 3u) * LANES, vec4<u32>(last));
#endif
#if EXPERTS && GATED
    let slot = params.slot0 + wid.z;
    let token = slot / params.top_k;
    let pick = route_base(token) + slot % params.top_k;
    // Read through workgroup memory so that the early return is uniform to the compiler too
    // (a barrier follows; browsers' WGSL compilers reject a return on a storage read there).
    if (lid == 0u) {
        picked_expert = route[pick];
    }
    let expert = workgroupUniformLoad(&picked_expert);
    if (expert < params.expert_first || expert >= params.expert_end) {
        return; // one slot per workgroup: its expert is in another chunk, or missing
    }
    let expert_row = (expert - params.expert_first) * 2u * params.rows;
    let acc = dot_rows(rows + vec4<u32>(expert_row), token * params.k / 4u, lid);
#endif
#if EXPERTS && !GATED
    let token = params.slot0 + wid.z;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < params.top_k; j++) {
        let expert = route[route_base(token) + j];
        if (expert >= params.expert_first && expert < params.expert_end) {
            let expert_row = (expert - params.expert_first) * params.rows;
            acc += dot_rows(rows + vec4<u32>(expert_row), (token * params.top_k + j) * params.k / 4u, lid);
        }
    }
#endif
#if !EXPERTS
    let head_row = wid.z * params.rows; // 0 but in head_linear
    let acc = dot_rows(rows + vec4<u32>(head_row), params.x_offset + wid.z * params.head_x, lid);
#endif
    partial[lid][0] = acc.x;
    partial[lid][1] = acc.y;
    partial[lid][2] = acc.z;
    partial[lid][3] = acc.w;
#if NORMED
    partial_sq[lid] = sum_sq;
#endif
    workgroupBarrier();
    // Thread i < ROWS finishes output row0 + i = row0 + lane' + slot · LANES.
    if (lid < ROWS && row0 + lid < params.rows) {
        let first = (lid % LANES) * TPR;
        let inv = inv_rms(first);
        let rb = lid / LANES;
        let r = row0 + lid;
#if EXPERTS && GATED
        // Bias rows: the expert's [gate | up] biases, 2·rows per expert.
        let b = expert * 2u * params.rows + r;
        let gate = partial_sum(first, 2u * rb) + bias_of(b);
        let up = partial_sum(first, 2u * rb + 1u) + bias_of(b + params.rows);
        y[slot * params.rows + r] = bitcast<f32>(route[pick + params.top_k]) * gated(gate, up);
#endif
#if EXPERTS && !GATED
        var total = partial_sum(first, rb);
#if BIAS
        // The expert biases, weighted as their outputs were (x was scaled by the weights).
        for (var j = 0u; j < params.top_k; j++) {
            let expert = route[route_base(token) + j];
            if (expert >= params.expert_first && expert < params.expert_end) {
                total += bitcast<f32>(route[route_base(token) + params.top_k + j]) * bias[expert * params.rows + r];
            }
        }
#endif
#if ACCUMULATE
        total += y[token * params.rows + r];
#endif
        y[token * params.rows + r] = total;
#endif
#if GATED && !EXPERTS
        // One chunk holds all the rows (row_offset 0): gate row r pairs with up row rows + r.
        let gate = partial_sum(first, 2u * rb) * inv + bias_of(r);
        let up = partial_sum(first, 2u * rb + 1u) * inv + bias_of(params.rows + r);
        y[params.y_offset + r] = gated(gate, up);
#endif
#if !GATED && !EXPERTS
        let row = params.row_offset + r;
        let at = params.y_offset + wid.z * params.head_y + row;
        let value = partial_sum(first, rb) * inv + bias_of(row);
#if ACCUMULATE
        y[at] += params.y_scale * value;
#else
        y[at] = value;
#endif
#endif
    }
}

// The four rows' dot products with x from vec4 `xo` on, over this thread's octets. Named
// accumulators: an array indexed in a loop stays in memory on software adapters (SwiftShader,
// lavapipe), named ones stay in registers.
fn dot_rows(rows: vec4<u32>, xo: u32, lid: u32) -> vec4<f32> {
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    let octets = params.k / 8u;
    for (var o = lid % TPR; o < octets; o += TPR) {
#if NORMED
        let ra = x[xo + 2u * o];
        let rb = x[xo + 2u * o + 1u];
        sum_sq += dot(ra, ra) + dot(rb, rb);
        let xa = ra * (norm_w[2u * o] + params.norm_offset);
        let xb = rb * (norm_w[2u * o + 1u] + params.norm_offset);
#else
        let xa = x[xo + 2u * o];
        let xb = x[xo + 2u * o + 1u];
#endif
        acc0 += row_dot(rows.x, o, xa, xb);
        acc1 += row_dot(rows.y, o, xa, xb);
        acc2 += row_dot(rows.z, o, xa, xb);
        acc3 += row_dot(rows.w, o, xa, xb);
    }
    return vec4<f32>(acc0, acc1, acc2, acc3);
}

// Row rb's sum over the TPR threads from `first`.
fn partial_sum(first: u32, rb: u32) -> f32 {
    var total = 0.0;
    for (var t = 0u; t < TPR; t++) {
        total += partial[first + t][rb];
    }
    return total;
}

// NORMED: 1/rms(x) from the TPR threads' sums of squares from `first`; else 1.
fn inv_rms(first: u32) -> f32 {
#if NORMED
    var total = 0.0;
    for (var t = 0u; t < TPR; t++) {
        total += partial_sq[first + t];
    }
    return inverseSqrt(total / f32(params.k) + params.eps);
#else
    return 1.0;
#endif
}

fn bias_of(r: u32) -> f32 {
#if BIAS
    return bias[r];
#else
    return 0.0;
#endif
}

#if EXPERTS
// Where token t's picks start in `route`: top_k ids, then top_k weights.
fn route_base(t: u32) -> u32 {
    return t * 2u * params.top_k;
}
#endif

// One octet of a row's dot product.
fn row_dot(row: u32, o: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let w = weight_octet(row, o, params.k);
    return dot(w.lo, xa) + dot(w.hi, xb);
}
