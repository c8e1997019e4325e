// Copies this step's keys and values, [tokens, heads, d] each (inside fused QKV rows: values
// right after keys), into the caches laid out [heads, s_max, d] at positions pos0.., so attention
// reads each head's keys contiguously. One dispatch for both caches.

struct Params {
    tokens: u32,
    heads: u32,
    d: u32,
    s_max: u32,
    pos0: u32,
    row_stride: u32,
    head_offset: u32, // the first key head within a row; value heads follow the key heads
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    if (gid >= params.tokens * params.heads * params.d) {
        return;
    }
    let i = gid % params.d;
    let h = (gid / params.d) % params.heads;
    let t = gid / (params.d * params.heads);
    let slot = (h * params.s_max + params.pos0 + t) * params.d + i;
    let k_at = t * params.row_stride + (params.head_offset + h) * params.d + i;
    k_cache[slot] = src[k_at];
    v_cache[slot] = src[k_at + params.heads * params.d];
}
