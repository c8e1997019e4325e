// In place x = cap * tanh(x / cap): Gemma 2's final logit soft-capping. The argument is clamped
// because tanh(±15) is already ±1 in f32 and some tanh implementations overflow via exp.

struct Params {
    len: u32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.len) {
        return;
    }
    x[i] = params.cap * tanh(clamp(x[i] / params.cap, -15.0, 15.0));
}
