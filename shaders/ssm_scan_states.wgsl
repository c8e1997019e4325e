// Mamba2 prefill, pass 1 of 2: the state at every chunk start. One thread per state value
// (head h, state n, channel p) runs the recurrence s = exp(dt_t·A)·s + dt_t·x_t[p]·B_t[n] over
// all tokens — no barrier per token, every value in parallel — and stores s before each chunk's
// first token in chunk_states[chunk], before the last token in snap_slot (the checkpoint a
// regenerated reply restarts from), after the last in dst_slot. The workgroup's threads share
// a head: each block of WG tokens' dt and exp(dt·A) is computed once into workgroup memory, and
// the head's first workgroup also stores dt and its running sum within the chunk (Σ dt·A) in
// dt_cum for pass 2 (ssm_scan_output).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> xbc: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> head_params: array<f32>;
@group(0) @binding(4) var<storage, read_write> ssm_state: array<f32>;
@group(0) @binding(5) var<storage, read_write> chunk_states: array<f32>;
@group(0) @binding(6) var<storage, read_write> dt_cum: array<f32>;

#include "lib/ssm.wgsl"

var<workgroup> block_dt: array<f32, WG>;
var<workgroup> block_decay: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pd = params.head_dim;
    let per_head = params.state * pd;
    let blocks = (per_head + WG - 1u) / WG;
    let index = wid.y * nwg.x + wid.x;
    if (index >= params.heads * blocks) {
        return;
    }
    let h = index / blocks;
    let e = (index % blocks) * WG + lid;
    let live = e < per_head;
    let writer = index % blocks == 0u && lid == 0u;
    let n = e / pd;
    let p = e % pd;
    let slot_len = params.heads * per_head;
    let at = h * per_head + e;
    let a = head_a(h);
    let xs = xbc_stride();
    let x_col = h * pd + p;
    let b_at = b_col(h) + n;
    var s = 0.0;
    if (live && params.src_slot != NONE) {
        s = ssm_state[params.src_slot * slot_len + at];
    }
    var cum = 0.0;
    for (var t0 = 0u; t0 < params.tokens; t0 += WG) {
        let mine = t0 + lid;
        if (mine < params.tokens) {
            let dt = time_step(proj[mine * params.proj_stride + params.dt_offset + h], h);
            block_dt[lid] = dt;
            block_decay[lid] = exp(dt * a);
        }
        workgroupBarrier();
        let count = min(WG, params.tokens - t0);
        for (var i = 0u; i < count; i++) {
            let t = t0 + i;
            let chunk_start = t % params.chunk == 0u;
            if (live) {
                if (chunk_start) {
                    chunk_states[(t / params.chunk) * slot_len + at] = s;
                }
                if (t + 1u == params.tokens && params.snap_slot != NONE) {
                    ssm_state[params.snap_slot * slot_len + at] = s;
                }
                s = s * block_decay[i] + block_dt[i] * xbc[t * xs + x_col] * xbc[t * xs + b_at];
            }
            if (writer) {
                cum = select(cum, 0.0, chunk_start) + block_dt[i] * a;
                dt_cum[(t * params.heads + h) * 2u] = block_dt[i];
                dt_cum[(t * params.heads + h) * 2u + 1u] = cum;
            }
        }
        workgroupBarrier();
    }
    if (live) {
        ssm_state[params.dst_slot * slot_len + at] = s;
    }
}
