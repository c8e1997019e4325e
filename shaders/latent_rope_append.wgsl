// MLA's rotary embedding and cache write (DeepSeek-V2/V3), one dispatch per step. The cache
// holds one row per position for every head, [latent | rope key]: the compressed KV that the
// heads' keys and values are decompressed from (their up-projections are absorbed into the
// query and the output, head_linear), so it is the whole KV cache. Per token this writes
//   - each head's rope query part, rotated, after that head's latent query (head_linear wrote
//     it) in the attention query rows [tokens, heads, latent + rope];
//   - the cache row: the latent (already RMS-normed in place) and the rope key, rotated.
// Attention then reads the cache as one kv head: keys are whole rows, values their latent part.
// NEOX: pairs (i, i + rope/2); else interleaved (2i, 2i+1), DeepSeek's own layout. One thread
// per rotated pair or copied latent value.

struct Params {
    tokens: u32,
    heads: u32,
    latent: u32,
    rot_half: u32,  // rope dims / 2
    pos0: u32,      // absolute position of token 0
    s_max: u32,     // cache positions
    q_stride: u32,  // floats between tokens in q
    q_offset: u32,  // column of head 0's rope dims in q
    q_head: u32,    // q column step per head
    kv_stride: u32, // floats between tokens in kv
    kv_offset: u32, // column of the latent in kv; the rope key follows it
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kv: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>; // [positions, rot_half] (cos, sin)
@group(0) @binding(4) var<storage, read_write> query: array<f32>; // [tokens, heads, latent + rope]
@group(0) @binding(5) var<storage, read_write> cache: array<f32>; // [s_max, latent + rope]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    let pairs = (params.heads + 1u) * params.rot_half; // every head's query, then the key
    let per_token = pairs + params.latent;
    if (gid >= params.tokens * per_token) {
        return;
    }
    let t = gid / per_token;
    let i = gid % per_token;
    let d = params.latent + 2u * params.rot_half;
    let row = (params.pos0 + t) * d; // the token's cache row
    let kv_row = t * params.kv_stride + params.kv_offset;
    if (i >= pairs) {
        let c = i - pairs;
        cache[row + c] = kv[kv_row + c];
        return;
    }
    let h = i / params.rot_half; // == heads: the key
    let j = i % params.rot_half;
#if NEOX
    let ia = j;
    let ib = j + params.rot_half;
#else
    let ia = 2u * j;
    let ib = ia + 1u;
#endif
    var src = kv_row + params.latent;
    if (h < params.heads) {
        src = t * params.q_stride + params.q_offset + h * params.q_head;
    }
    var a: f32;
    var b: f32;
    if (h < params.heads) {
        a = q[src + ia];
        b = q[src + ib];
    } else {
        a = kv[src + ia];
        b = kv[src + ib];
    }
    let cs = table[(params.pos0 + t) * params.rot_half + j];
    let ra = a * cs.x - b * cs.y;
    let rb = b * cs.x + a * cs.y;
    var dst = row + params.latent;
    if (h < params.heads) {
        dst = (t * params.heads + h) * d + params.latent;
        query[dst + ia] = ra;
        query[dst + ib] = rb;
    } else {
        cache[dst + ia] = ra;
        cache[dst + ib] = rb;
    }
}
