// Y[m, n] = dot(X[m, :], W[n, :]) (+ bias[n]) for one chunk of W's rows: the prefill matmul.
// Register-tiled: 64 threads (8 × 8), each owning TM tokens × 8 rows of outputs, so a workgroup
// computes (8·TM) tokens × 64 rows. K is walked one quantisation group (32) at a time: both
// operands are staged in workgroup memory k-major as vec4s, so per k a thread reads one vec4
// (or vec2, or scalar) of X and two vec4s of W for 8·TM multiply-adds (the previous 2×2 tile read
// 4 values per 4). Weights are decoded once per tile load (weights.wgsl); sums are f32.
// TM (1, 2 or 4) follows the prompt length so a short prompt does not pad to 32 tokens.
// The sums live in named variables, not an array indexed in a loop: software adapters keep such
// an array in memory (SwiftShader ran this kernel 3.4× slower, lavapipe 2×).
// EXPERTS (`expert_matmul`, a mixture's prefill): W stacks experts of `n` rows each; workgroup z
// is one expert of this chunk and its tokens are that expert's group of picks (moe_group.wgsl):
// X row = slot / x_div (the token's row, or the pick's own), Y row = slot. A workgroup past its
// group's end returns at once, so the grid is sized for the worst case without a read-back.
// Otherwise workgroup z is a head of a per-head projection (`head_linear`, MLA): W holds `n`
// rows per head and head z reads X from column x_offset + z·head_x and writes Y from column
// y_offset + z·head_y. X rows are ldx apart (k for a plain matmul, whose one head is z = 0).

struct Params {
    m: u32,          // rows of X (tokens)
    k: u32,          // shared dimension (multiple of 8)
    n: u32,          // W rows in this chunk
    row_offset: u32, // W row (and bias index) of this chunk's first row
    ldy: u32,        // row stride of Y
    y_offset: u32,   // column of Y where W's row 0 goes (q, k, v into one fused row)
    expert_first: u32, // EXPERTS: this chunk's first expert
    experts: u32,    // EXPERTS: all experts (where the groups' slots start)
    x_div: u32,      // EXPERTS: slots per X row (top_k, or 1)
    ldx: u32,        // row stride of X (multiple of 4)
    x_offset: u32,   // column of X where head 0's k values start (multiple of 4)
    head_x: u32,     // X column step per head (multiple of 4)
    head_y: u32,     // Y column step per head
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
#if EXPERTS
@group(0) @binding(6) var<storage, read> groups: array<u32>;
#endif

#include "lib/weights.wgsl"

// The workgroup's tokens: `tile_m` of them (params.m, or its expert's group size), and for
// EXPERTS its expert, the group's first slot index and the chunk's first row of the expert.
var<private> tile_m: u32;
var<private> expert: u32;
var<private> group_first: u32;
var<private> w_row0: u32;
var<private> x_col0: u32; // X column of the workgroup's k = 0
var<private> y_col0: u32; // Y column of its row 0
#if EXPERTS
var<workgroup> group_range: vec2<u32>;
#endif

// X row and Y row of the workgroup's token i.
fn x_row(i: u32) -> u32 {
#if EXPERTS
    return groups[params.experts + 1u + group_first + i] / params.x_div;
#else
    return i;
#endif
}

fn y_row(i: u32) -> u32 {
#if EXPERTS
    return groups[params.experts + 1u + group_first + i];
#else
    return i;
#endif
}

const KSTEP: u32 = 32u;
const BN: u32 = 64u;      // W rows per workgroup
const BM: u32 = 8u * TM;  // tokens per workgroup

// x_tile[kk][t]: token t's value at k0 + kk, tokens packed TM to an element. w_tile[kk][j]:
// rows 4j..4j+3 at k0 + kk. Thread (tx, ty) reads x_tile[kk][ty], w_tile[kk][tx] and
// w_tile[kk][8 + tx]: adjacent threads, adjacent elements.
var<workgroup> x_tile: array<array<XVec, 8>, KSTEP>;
var<workgroup> w_tile: array<array<vec4<f32>, 16>, KSTEP>;

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>) {
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let lid = local.y * 8u + local.x;
#if EXPERTS
    expert = params.expert_first + wid.z;
    // Through workgroup memory, so that the early return is uniform to the compiler too.
    if (lid == 0u) {
        group_range = vec2<u32>(groups[expert], groups[expert + 1u]);
    }
    let range = workgroupUniformLoad(&group_range);
    group_first = range.x;
    tile_m = range.y - range.x;
    w_row0 = wid.z * params.n;
    if (m0 >= range.y - range.x) {
        return; // the expert's group ends before this tile
    }
    x_col0 = 0u;
    y_col0 = params.y_offset;
#else
    tile_m = params.m;
    w_row0 = wid.z * params.n;
    x_col0 = params.x_offset + wid.z * params.head_x;
    y_col0 = params.y_offset + wid.z * params.head_y;
#endif
    // Sums for token ty·TM + i, rows 4·tx + (0..3) and 32 + 4·tx + (0..3): r(2i) and r(2i + 1)
    // (the TM < 4 variants leave the later ones unused).
    var r0 = vec4<f32>(0.0);
    var r1 = vec4<f32>(0.0);
    var r2 = vec4<f32>(0.0);
    var r3 = vec4<f32>(0.0);
    var r4 = vec4<f32>(0.0);
    var r5 = vec4<f32>(0.0);
    var r6 = vec4<f32>(0.0);
    var r7 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < params.k; k0 += KSTEP) {
        // X: BM tokens × 8 vec4s of k; thread lid loads vec4s lid, lid + 64, ...
        for (var e = lid; e < BM * 8u; e += 64u) {
            let t = e / 8u;
            let c = (e % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (m0 + t < tile_m && k0 + c < params.k) {
                v = x[(x_row(m0 + t) * params.ldx + x_col0 + k0 + c) / 4u];
            }
            for (var i = 0u; i < 4u; i++) {
                set_x(c + i, t, v[i]);
            }
        }
        // W: 64 rows × 4 octets, four octets per thread.
        for (var e = lid; e < BN * 4u; e += 64u) {
            let r = e / 4u;
            let c = (e % 4u) * 8u;
            var w = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
            if (n0 + r < params.n && k0 + c < params.k) {
                w = weight_octet(w_row0 + n0 + r, (k0 + c) / 8u, params.k);
            }
            for (var i = 0u; i < 4u; i++) {
                w_tile[c + i][r / 4u][r % 4u] = w.lo[i];
                w_tile[c + 4u + i][r / 4u][r % 4u] = w.hi[i];
            }
        }
        workgroupBarrier();
        let steps = min(KSTEP, params.k - k0);
        for (var kk = 0u; kk < steps; kk++) {
            let a = x_tile[kk][local.y];
            let b0 = w_tile[kk][local.x];
            let b1 = w_tile[kk][8u + local.x];
            r0 += x_component(a, 0u) * b0;
            r1 += x_component(a, 0u) * b1;
#if TM_1
#else
            r2 += x_component(a, 1u) * b0;
            r3 += x_component(a, 1u) * b1;
#endif
#if TM_4
            r4 += a.z * b0;
            r5 += a.z * b1;
            r6 += a.w * b0;
            r7 += a.w * b1;
#endif
        }
        workgroupBarrier();
    }
    let m = m0 + local.y * TM;
    let n = n0 + local.x * 4u;
    store_token(m, n, r0, r1);
#if TM_1
#else
    store_token(m + 1u, n, r2, r3);
#endif
#if TM_4
    store_token(m + 2u, n, r4, r5);
    store_token(m + 3u, n, r6, r7);
#endif
}

// Token m's sums for rows n..n+3 (lo) and n+32..n+35 (hi).
fn store_token(m: u32, n: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (m >= tile_m) {
        return;
    }
    let row = y_row(m);
    for (var j = 0u; j < 4u; j++) {
        store(row, n + j, lo[j]);
        store(row, n + 32u + j, hi[j]);
    }
}

fn store(m: u32, n: u32, value: f32) {
    if (n < params.n) {
#if EXPERTS
        // Each expert's rows land at columns 0..n; its biases are `n` per expert.
        let col = n;
        let b = expert * params.n + n;
#else
        let col = params.row_offset + n;
        let b = col;
#endif
#if BIAS
        y[m * params.ldy + y_col0 + col] = value + bias[b];
#else
        y[m * params.ldy + y_col0 + col] = value;
#endif
    }
}

// Token t of the tile sits in element t / TM, component t % TM.
#if TM_1
alias XVec = f32;
fn set_x(kk: u32, t: u32, v: f32) {
    x_tile[kk][t] = v;
}
fn x_component(a: XVec, i: u32) -> f32 {
    return a;
}
#else
#if TM_2
alias XVec = vec2<f32>;
#else
alias XVec = vec4<f32>;
#endif
fn set_x(kk: u32, t: u32, v: f32) {
    x_tile[kk][t / TM][t % TM] = v;
}
fn x_component(a: XVec, i: u32) -> f32 {
    return a[i];
}
#endif
