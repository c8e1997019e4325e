// Mamba2's selective state update for one token (decode), one thread per (head h, channel p):
//   dt = softplus(dt_raw + dt_bias);  s[n] = exp(dt·A)·s[n] + dt·x[p]·B[n]
//   y[p] = (Σ_n s[n]·C[n] + D·x[p]) · silu(z[p])
// The state slots hold [heads][state][head_dim] f32, so neighbouring threads touch neighbouring
// values. The step reads slot src_slot (NONE: zeros) and writes dst_slot; a thread reads each of
// its values before writing it, so the two may be the same slot.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> xbc: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> head_params: array<f32>;
@group(0) @binding(4) var<storage, read_write> ssm_state: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

#include "lib/ssm.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    let pd = params.head_dim;
    if (gid >= params.heads * pd) {
        return;
    }
    let h = gid / pd;
    let p = gid % pd;
    let n_state = params.state;
    let slot_len = params.heads * n_state * pd;
    let dt = time_step(proj[params.dt_offset + h], h);
    let decay = exp(dt * head_a(h));
    let x = xbc[gid];
    let dtx = dt * x;
    let b0 = b_col(h);
    let c0 = b0 + params.groups * n_state;
    let base = h * n_state * pd + p;
    var y = 0.0;
    for (var n = 0u; n < n_state; n++) {
        var s = 0.0;
        if (params.src_slot != NONE) {
            s = ssm_state[params.src_slot * slot_len + base + n * pd];
        }
        s = s * decay + dtx * xbc[b0 + n];
        ssm_state[params.dst_slot * slot_len + base + n * pd] = s;
        y += s * xbc[c0 + n];
    }
    y += head_d(h) * x;
    out[gid] = y * silu(proj[gid]);
}
