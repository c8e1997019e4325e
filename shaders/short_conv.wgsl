// A causal depthwise convolution over the last KERNEL positions, one thread per channel c over
// all the step's tokens, in one of two styles:
//   LFM2's gated short convolution (default), over [B | C | x] blocks of the input rows:
//     bx[t] = B[t, c] · x[t, c];  out[t, c] = C[t, c] · (bias[c] + Σ_j w[c, j] · bx[t - (KERNEL-1) + j])
//   Mamba2's (SILU), over one block of the input rows:
//     out[t, c] = silu(bias[c] + Σ_j w[c, j] · x[t - (KERNEL-1) + j, c])
// The blocks start at column in_offset of rows in_stride wide (an in-projection's output). The inputs before
// the step come from a rolling state of the last KERNEL-1 inputs, which the thread updates:
// `state` holds slots of [KERNEL-1][channels] (oldest input first). The step reads slot
// src_slot (NONE: zeros, the start of a sequence), writes the state after its last token to
// dst_slot and, if snap_slot is not NONE, the state after all but its last token there (the
// checkpoint a regenerated reply restarts from). Channels are independent, so a thread may
// read and write the same slot: it reads its channel's state before writing it.

struct Params {
    tokens: u32,
    channels: u32,
    kernel: u32,
    src_slot: u32,
    dst_slot: u32,
    snap_slot: u32,
    in_stride: u32,
    in_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

#include "lib/activation.wgsl"

const NONE: u32 = 0xffffffffu;
const MAX_KERNEL: u32 = 8u;

fn write_state(slot: u32, win: ptr<function, array<f32, MAX_KERNEL>>, c: u32) {
    let past = params.kernel - 1u;
    for (var j = 0u; j < past; j++) {
        state[(slot * past + j) * params.channels + c] = (*win)[j];
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wid.y * nwg.x + wid.x) * WG + lid;
    let ch = params.channels;
    if (c >= ch) {
        return;
    }
    let past = params.kernel - 1u;
    // win[0..past): the inputs before the current token, oldest first; win[past]: the current one.
    var win: array<f32, MAX_KERNEL>;
    var w: array<f32, MAX_KERNEL>;
    for (var j = 0u; j < params.kernel; j++) {
        w[j] = weight[c * params.kernel + j];
        win[j] = 0.0;
    }
    if (params.src_slot != NONE) {
        for (var j = 0u; j < past; j++) {
            win[j] = state[(params.src_slot * past + j) * ch + c];
        }
    }
    var b = 0.0;
#if BIAS
    b = bias[c];
#endif
    if (params.tokens == 1u && params.snap_slot != NONE) {
        write_state(params.snap_slot, &win, c);
    }
    for (var t = 0u; t < params.tokens; t++) {
        let row = t * params.in_stride + params.in_offset;
#if SILU
        win[past] = input[row + c];
#else
        win[past] = input[row + c] * input[row + 2u * ch + c];
#endif
        var acc = b;
        for (var j = 0u; j < params.kernel; j++) {
            acc += w[j] * win[j];
        }
#if SILU
        out[t * ch + c] = silu(acc);
#else
        out[t * ch + c] = input[row + ch + c] * acc;
#endif
        for (var j = 0u; j < past; j++) {
            win[j] = win[j + 1u];
        }
        if (t + 2u == params.tokens && params.snap_slot != NONE) {
            write_state(params.snap_slot, &win, c);
        }
    }
    write_state(params.dst_slot, &win, c);
}
