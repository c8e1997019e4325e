// Rotary position embedding and the KV cache write of one step, in one dispatch over fused
// [q heads | k heads | v heads] rows: q heads are rotated in place (attention reads them
// there), k heads are rotated on their way into the k cache and v heads copied into the v
// cache, both laid out [kv_heads, s_max, d] so attention reads each head's keys contiguously.
// The keys are not written back into the rows: nothing reads them there.
// The (cos, sin) table is computed on the CPU in f64 from f32 angles (rope_table.rs, incl.
// Llama-3 frequency scaling) and indexed by absolute position, so the GPU never evaluates cos
// of a large argument.
// NEOX: pairs (i, i + rot/2) ("rotate_half", HF Llama/Qwen/Gemma); else interleaved (2i, 2i+1).
// Dims at or past rot_half * 2 are not rotated (partial rotary). One thread per pair of dims.

struct Params {
    tokens: u32,
    heads_q: u32,
    heads_kv: u32,
    d: u32,
    rot_half: u32,   // rotary dims / 2
    pos0: u32,       // absolute position of token 0
    row_stride: u32, // floats between tokens
    s_max: u32,      // cache positions
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>; // [positions, rot_half] (cos, sin)
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    let half = params.d / 2u;
    let heads = params.heads_q + params.heads_kv; // q and k heads; v heads ride with k
    if (gid >= params.tokens * heads * half) {
        return;
    }
    let j = gid % half;
    let h = (gid / half) % heads;
    let t = gid / (half * heads);
    let base = t * params.row_stride + h * params.d;
    // Pair j's dims: a rotated pair, or (past the rotary dims) two that are only copied.
    var ia = 2u * j;
    var ib = ia + 1u;
#if NEOX
    if (j < params.rot_half) {
        ia = j;
        ib = j + params.rot_half;
    }
#endif
    var a = qkv[base + ia];
    var b = qkv[base + ib];
    if (j < params.rot_half) {
        let cs = table[(params.pos0 + t) * params.rot_half + j];
        let ra = a * cs.x - b * cs.y;
        b = b * cs.x + a * cs.y;
        a = ra;
    }
    if (h < params.heads_q) {
        qkv[base + ia] = a;
        qkv[base + ib] = b;
        return;
    }
    let slot = ((h - params.heads_q) * params.s_max + params.pos0 + t) * params.d;
    k_cache[slot + ia] = a;
    k_cache[slot + ib] = b;
    let v = base + params.heads_kv * params.d; // this k head's v head
    v_cache[slot + ia] = qkv[v + ia];
    v_cache[slot + ib] = qkv[v + ib];
}
