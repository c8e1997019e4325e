// Shared by the ssm_scan kernels: the step parameters, the per-head values and the time step.

#include "lib/activation.wgsl"

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    state: u32,
    groups: u32,
    // Width of an in-projection row (z at column 0, dt at dt_offset).
    proj_stride: u32,
    dt_offset: u32,
    src_slot: u32,
    dst_slot: u32,
    snap_slot: u32,
    // Tokens per chunk of a prefill.
    chunk: u32,
    _pad0: u32,
    dt_min: f32,
    dt_max: f32,
    _pad1: u32,
    _pad2: u32,
}

const NONE: u32 = 0xffffffffu;

// head_params holds [A | D | dt_bias], `heads` values each (A = -exp(A_log)).
fn head_a(h: u32) -> f32 {
    return head_params[h];
}

fn head_d(h: u32) -> f32 {
    return head_params[params.heads + h];
}

// softplus(raw + dt_bias) clamped to the model's time-step limits. log(1 + u) is taken as
// log(w)·u/(w - 1), w = 1 + u (Kahan), which keeps its digits when u = exp(x) is tiny.
fn time_step(raw: f32, h: u32) -> f32 {
    let x = raw + head_params[2u * params.heads + h];
    var dt = x;
    if (x <= 20.0) {
        let u = exp(x);
        let w = 1.0 + u;
        dt = select(log(w) * u / (w - 1.0), u, w == 1.0);
    }
    return clamp(dt, params.dt_min, params.dt_max);
}

// Row layout of the convolution's output: [x (heads·head_dim) | B (groups·state) | C (groups·state)].
fn xbc_stride() -> u32 {
    return params.heads * params.head_dim + 2u * params.groups * params.state;
}

// Column of B (C follows all groups' B) for head h's group.
fn b_col(h: u32) -> u32 {
    let group = h / (params.heads / params.groups);
    return params.heads * params.head_dim + group * params.state;
}
