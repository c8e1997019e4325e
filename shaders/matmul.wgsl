// Y[m, n] = dot(X[m, :], W[n, :]) (+ bias[n]) for one chunk of W's rows: the prefill matmul.
// 32×32 output tiles, K walked in steps of 32 (one quantisation group), both operands staged in
// workgroup memory (8.4 KiB, under the 16 KiB portable floor); each of 256 threads owns a 2×2
// block of outputs. Weights are decoded once per tile load (weights.wgsl); sums are f32.

struct Params {
    m: u32,          // rows of X (tokens)
    k: u32,          // shared dimension (multiple of 8)
    n: u32,          // W rows in this chunk
    row_offset: u32, // W row (and bias index) of this chunk's first row
    ldy: u32,        // row stride of Y
    y_offset: u32,   // column of Y where W's row 0 goes (q, k, v into one fused row)
    _pad0: u32,
    _pad1: u32,
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

const TILE: u32 = 32u;
// +1 column keeps threads of a row from hitting the same bank.
var<workgroup> x_tile: array<array<f32, 33>, 32>;
var<workgroup> w_tile: array<array<f32, 33>, 32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>) {
    let n0 = wid.x * TILE;
    let m0 = wid.y * TILE;
    let lid = local.y * 16u + local.x;
    var acc = array<vec2<f32>, 2>(vec2<f32>(0.0), vec2<f32>(0.0));

    for (var k0 = 0u; k0 < params.k; k0 += TILE) {
        // X: 32 rows × 8 vec4s, one vec4 per thread.
        {
            let r = lid / 8u;
            let c = (lid % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (m0 + r < params.m && k0 + c < params.k) {
                v = x[((m0 + r) * params.k + k0 + c) / 4u];
            }
            x_tile[r][c] = v.x;
            x_tile[r][c + 1u] = v.y;
            x_tile[r][c + 2u] = v.z;
            x_tile[r][c + 3u] = v.w;
        }
        // W: 32 rows × 4 octets, one octet each for the first 128 threads.
        if (lid < 128u) {
            let r = lid / 4u;
            let c = (lid % 4u) * 8u;
            var w = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
            if (n0 + r < params.n && k0 + c < params.k) {
                w = weight_octet(n0 + r, (k0 + c) / 8u, params.k);
            }
            for (var i = 0u; i < 4u; i++) {
                w_tile[r][c + i] = w.lo[i];
                w_tile[r][c + 4u + i] = w.hi[i];
            }
        }
        workgroupBarrier();
        let steps = min(TILE, params.k - k0);
        for (var kk = 0u; kk < steps; kk++) {
            let a = vec2<f32>(x_tile[local.y * 2u][kk], x_tile[local.y * 2u + 1u][kk]);
            let b = vec2<f32>(w_tile[local.x * 2u][kk], w_tile[local.x * 2u + 1u][kk]);
            acc[0] += a.x * b;
            acc[1] += a.y * b;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 2u; i++) {
        let m = m0 + local.y * 2u + i;
        for (var j = 0u; j < 2u; j++) {
            let n = n0 + local.x * 2u + j;
            if (m < params.m && n < params.n) {
                let col = params.row_offset + n;
#if BIAS
                y[m * params.ldy + params.y_offset + col] = acc[i][j] + bias[col];
#else
                y[m * params.ldy + params.y_offset + col] = acc[i][j];
#endif
            }
        }
    }
}
