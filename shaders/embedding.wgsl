// out[t, :] = table[ids[t], :] * scale for one chunk of the table's rows, decoding quantised
// rows on the fly (weights.wgsl), one thread per 8 values. Ids at or past `vocab` give zeros.

struct Params {
    tokens: u32,
    k: u32,     // row length (hidden size)
    row0: u32,  // first table row in this chunk
    rows: u32,  // table rows in this chunk
    vocab: u32, // table rows in all chunks
    scale: f32, // e.g. sqrt(hidden) for Gemma, else 1
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> w_qs: array<u32>;
#if QUANTIZED
@group(0) @binding(4) var<storage, read> w_scales: array<u32>;
#endif

#include "lib/weights.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let octets = params.k / 8u;
    let gid = (wid.y * nwg.x + wid.x) * WG + lid;
    if (gid >= params.tokens * octets) {
        return;
    }
    let t = gid / octets;
    let o = gid % octets;
    let id = ids[t];
    var w = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
    if (id >= params.row0 && id < params.row0 + params.rows) {
        w = weight_octet(id - params.row0, o, params.k);
    } else if (!(id >= params.vocab && params.row0 + params.rows == params.vocab)) {
        return; // another chunk owns this id
    }
    let base = t * params.k + o * 8u;
    for (var i = 0u; i < 4u; i++) {
        out[base + i] = w.lo[i] * params.scale;
        out[base + 4u + i] = w.hi[i] * params.scale;
    }
}
