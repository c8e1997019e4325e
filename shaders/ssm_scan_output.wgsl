// Mamba2 prefill, pass 2 of 2: the outputs, one workgroup per (token i, head h), threads over
// the channels p. With S the state at the start of i's chunk (pass 1) and cum_t = Σ dt·A over
// the chunk up to t:
//   y[p] = exp(cum_i)·Σ_n C_i[n]·S[n][p]                                  (the chunks before)
//        + Σ_{j in chunk, j ≤ i} (C_i·B_j)·exp(cum_i - cum_j)·dt_j·x_j[p]   (the chunk itself)
//        + D·x_i[p],                  then · silu(z_i[p])
// — the chunked form of the scan (SSD): the in-chunk part is matrix-shaped work over tokens, in
// parallel, instead of one token after another. The weights of WG tokens j are computed
// once per workgroup (one dot product over the state per thread), then shared.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> xbc: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> head_params: array<f32>;
@group(0) @binding(4) var<storage, read> chunk_states: array<f32>;
@group(0) @binding(5) var<storage, read> dt_cum: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

#include "lib/ssm.wgsl"

// Channels per thread: head_dim ≤ MAX_PER_THREAD · WG.
const MAX_PER_THREAD: u32 = 4u;

var<workgroup> weights: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = wid.y * nwg.x + wid.x;
    if (index >= params.tokens * params.heads) {
        return;
    }
    let i = index / params.heads;
    let h = index % params.heads;
    let pd = params.head_dim;
    let n_state = params.state;
    let xs = xbc_stride();
    let b0 = b_col(h);
    let c_i = i * xs + b0 + params.groups * n_state;
    let cum_i = dt_cum[(i * params.heads + h) * 2u + 1u];
    let chunk = i / params.chunk;
    let chunk_start = chunk * params.chunk;
    var acc: array<f32, MAX_PER_THREAD>;
    for (var j0 = chunk_start; j0 <= i; j0 += WG) {
        let j = j0 + lid;
        var w = 0.0;
        if (j <= i) {
            var dot = 0.0;
            for (var n = 0u; n < n_state; n++) {
                dot += xbc[c_i + n] * xbc[j * xs + b0 + n];
            }
            let at = (j * params.heads + h) * 2u;
            w = dot * exp(cum_i - dt_cum[at + 1u]) * dt_cum[at];
        }
        weights[lid] = w;
        workgroupBarrier();
        let count = min(WG, i + 1u - j0);
        for (var k = 0u; k < MAX_PER_THREAD; k++) {
            let p = lid + k * WG;
            if (p < pd) {
                for (var jj = 0u; jj < count; jj++) {
                    acc[k] += weights[jj] * xbc[(j0 + jj) * xs + h * pd + p];
                }
            }
        }
        workgroupBarrier();
    }
    let decay = exp(cum_i);
    let slot_len = params.heads * n_state * pd;
    let s0 = chunk * slot_len + h * n_state * pd;
    for (var k = 0u; k < MAX_PER_THREAD; k++) {
        let p = lid + k * WG;
        if (p < pd) {
            var from_state = 0.0;
            for (var n = 0u; n < n_state; n++) {
                from_state += xbc[c_i + n] * chunk_states[s0 + n * pd + p];
            }
            let x = xbc[i * xs + h * pd + p];
            let y = acc[k] + decay * from_state + head_d(h) * x;
            out[i * params.heads * pd + h * pd + p] = y * silu(proj[i * params.proj_stride + h * pd + p]);
        }
    }
}
