// Causal attention with online softmax, one workgroup per (query token, query head, key split).
// Prefill runs with one split (each workgroup walks all its keys); single-token decode splits
// the keys over many workgroups (flash-decoding) and `attention_reduce` merges the partials.
// Grouped-query: query head h reads kv head h / (hq / hkv). Keys j are visible to the query
// at absolute position p when j <= p and, with a sliding window w > 0, p - j < w.
// Optional tanh soft-capping of the scores (Gemma 2). SINKS (GPT-OSS): each head's softmax also
// counts a learned logit that weighs no value, added where the sum is finished (here, or in
// attention_reduce for split decoding).

struct Params {
    tokens: u32,
    hq: u32,
    hkv: u32,
    d: u32,         // head dim, <= MAX_D
    s_max: u32,     // KV cache capacity (positions)
    pos0: u32,      // absolute position of query token 0
    window: u32,    // sliding window, 0 = none
    n_splits: u32,
    split_len: u32, // keys per split
    q_stride: u32,  // floats between query tokens
    scale: f32,
    softcap: f32,   // 0 = none
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>; // [hkv, s_max, d]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>; // [hkv, s_max, d]
// PARTIAL: [tokens, hq, n_splits, d + 2] = (m, l, acc[d]); else [tokens, hq, d].
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#if SINKS && !PARTIAL
@group(0) @binding(5) var<storage, read> sinks: array<f32>; // [hq]
#endif

// MAX_D (256, or 576 for MLA's latent heads) comes with the variant: it sizes q_s and acc.
const DIMS_PER_THREAD: u32 = MAX_D / WG;
const NEG_BIG: f32 = -1e30; // finite, so exp(NEG_BIG - m) is 0 and never NaN

var<workgroup> q_s: array<f32, MAX_D>;
var<workgroup> p_s: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = wid.y * nwg.x + wid.x;
    if (id >= params.tokens * params.hq * params.n_splits) {
        return;
    }
    let split = id % params.n_splits;
    let h = (id / params.n_splits) % params.hq;
    let t = id / (params.n_splits * params.hq);
    let kv_head = h / (params.hq / params.hkv);
    let d = params.d;

    let p = params.pos0 + t;
    var lo = 0u;
    if (params.window > 0u && p + 1u > params.window) {
        lo = p + 1u - params.window;
    }
    let start = lo + split * params.split_len;
    let end = min(start + params.split_len, p + 1u);

    for (var i = lid; i < d; i += WG) {
        q_s[i] = q[t * params.q_stride + h * d + i] * params.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<f32, DIMS_PER_THREAD>;
    let kv_base = kv_head * params.s_max;
    for (var j0 = start; j0 < end; j0 += WG) {
        let count = min(WG, end - j0);
        var s = NEG_BIG;
        if (lid < count) {
            let k_row = (kv_base + j0 + lid) * d;
            var dot_qk = 0.0;
            for (var i = 0u; i < d; i++) {
                dot_qk += q_s[i] * k_cache[k_row + i];
            }
            if (params.softcap > 0.0) {
                dot_qk = params.softcap * tanh(clamp(dot_qk / params.softcap, -15.0, 15.0));
            }
            s = dot_qk;
        }
        p_s[lid] = s;
        workgroupBarrier();
        var block_max = NEG_BIG;
        for (var jj = 0u; jj < count; jj++) {
            block_max = max(block_max, p_s[jj]);
        }
        let m_new = max(m, block_max);
        let correction = exp(m - m_new);
        workgroupBarrier();
        p_s[lid] = select(0.0, exp(s - m_new), lid < count);
        workgroupBarrier();
        var block_sum = 0.0;
        for (var jj = 0u; jj < count; jj++) {
            block_sum += p_s[jj];
        }
        l = l * correction + block_sum;
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * WG;
            if (i < d) {
                var a = acc[c] * correction;
                for (var jj = 0u; jj < count; jj++) {
                    a += p_s[jj] * v_cache[(kv_base + j0 + jj) * d + i];
                }
                acc[c] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }

#if PARTIAL
    let base = id * (d + 2u);
    if (lid == 0u) {
        out[base] = m;
        out[base + 1u] = l;
    }
    for (var c = 0u; c < DIMS_PER_THREAD; c++) {
        let i = lid + c * WG;
        if (i < d) {
            out[base + 2u + i] = acc[c];
        }
    }
#else
    // out = acc / l, or with a sink s: acc·e^(m−M) / (l·e^(m−M) + e^(s−M)), M = max(m, s).
    var keep = 1.0;
    var total = l;
#if SINKS
    let top = max(m, sinks[h]);
    keep = exp(m - top);
    total = l * keep + exp(sinks[h] - top);
#endif
    for (var c = 0u; c < DIMS_PER_THREAD; c++) {
        let i = lid + c * WG;
        if (i < d) {
            out[(t * params.hq + h) * d + i] = acc[c] * keep / total;
        }
    }
#endif
}
