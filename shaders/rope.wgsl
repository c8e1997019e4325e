// Rotary position embedding, in place on q or k rows. The (cos, sin) table is computed on the
// CPU in f64 from f32 angles (rope_table.rs, incl. Llama-3 frequency scaling) and indexed by
// absolute position, so the GPU never evaluates cos of a large argument.
// NEOX: pairs (i, i + rot/2) ("rotate_half", HF Llama/Qwen/Gemma); else interleaved (2i, 2i+1).
// Dims at or past rot_half * 2 are left alone (partial rotary).

struct Params {
    tokens: u32,
    heads: u32,
    d: u32,
    rot_half: u32,    // rotary dims / 2
    pos0: u32,        // absolute position of token 0
    row_stride: u32,  // floats between tokens
    head_offset: u32, // first head to rotate within a row (fused QKV rows)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>; // [positions, rot_half] (cos, sin)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    if (gid >= params.tokens * params.heads * params.rot_half) {
        return;
    }
    let i = gid % params.rot_half;
    let h = (gid / params.rot_half) % params.heads;
    let t = gid / (params.rot_half * params.heads);
    let base = t * params.row_stride + (params.head_offset + h) * params.d;
    let cs = table[(params.pos0 + t) * params.rot_half + i];
#if NEOX
    let ia = base + i;
    let ib = base + i + params.rot_half;
#else
    let ia = base + 2u * i;
    let ib = ia + 1u;
#endif
    let a = x[ia];
    let b = x[ib];
    x[ia] = a * cs.x - b * cs.y;
    x[ib] = b * cs.x + a * cs.y;
}
