// Single-token (decode) attention with online softmax, one workgroup per (query token, tile of
// GT query heads that share a kv head, key split). The tile's heads share every key and value
// the workgroup reads, so K/V traffic is 1/GT of a workgroup per head (GT: the largest divisor of
// hq / hkv up to what workgroup memory holds: 8 heads of 256 dims, 4 of 576). The keys are
// split over workgroups (flash-decoding) and `attention_reduce` merges the partials.
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

// MAX_D (256, or 576 for MLA's latent heads) and GT come with the variant.
const DIMS_PER_THREAD: u32 = MAX_D / WG;
const NEG_BIG: f32 = -1e30; // finite, so exp(NEG_BIG - m) is 0 and never NaN

var<workgroup> q_s: array<array<f32, MAX_D>, GT>; // the tile's scaled queries
var<workgroup> p_s: array<array<f32, WG>, GT>;    // a block's scores, then probabilities
var<workgroup> m_s: array<f32, GT>;               // running max per head
var<workgroup> l_s: array<f32, GT>;               // running sum per head
var<workgroup> correction_s: array<f32, GT>;      // exp(old max - new max) for this block

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = wid.y * nwg.x + wid.x;
    let tiles = params.hq / GT;
    if (id >= params.tokens * tiles * params.n_splits) {
        return; // whole workgroup: uniform
    }
    let split = id % params.n_splits;
    let h0 = ((id / params.n_splits) % tiles) * GT;
    let t = id / (params.n_splits * tiles);
    let kv_base = (h0 / (params.hq / params.hkv)) * params.s_max;
    let d = params.d;

    let p = params.pos0 + t;
    var lo = 0u;
    if (params.window > 0u && p + 1u > params.window) {
        lo = p + 1u - params.window;
    }
    let start = lo + split * params.split_len;
    let end = min(start + params.split_len, p + 1u);

    for (var e = lid; e < GT * d; e += WG) {
        let g = e / d;
        let i = e % d;
        q_s[g][i] = q[t * params.q_stride + (h0 + g) * d + i] * params.scale;
    }
    if (lid < GT) {
        m_s[lid] = NEG_BIG;
        l_s[lid] = 0.0;
    }
    workgroupBarrier();

    var acc: array<array<f32, DIMS_PER_THREAD>, GT>;
    for (var j0 = start; j0 < end; j0 += WG) {
        let count = min(WG, end - j0);
        // Key j0 + lid's scores against every head of the tile: its row read once.
        // Zeroed by an explicit constructor each block (see attention_prefill.wgsl).
        var s = array<f32, GT>();
        if (lid < count) {
            let k_row = (kv_base + j0 + lid) * d;
            for (var i = 0u; i < d; i++) {
                let kv = k_cache[k_row + i];
                for (var g = 0u; g < GT; g++) {
                    s[g] += q_s[g][i] * kv;
                }
            }
        }
        for (var g = 0u; g < GT; g++) {
            var score = s[g];
            if (params.softcap > 0.0) {
                score = params.softcap * tanh(clamp(score / params.softcap, -15.0, 15.0));
            }
            p_s[g][lid] = select(NEG_BIG, score, lid < count);
        }
        workgroupBarrier();
        if (lid < GT) {
            var block_max = NEG_BIG;
            for (var jj = 0u; jj < count; jj++) {
                block_max = max(block_max, p_s[lid][jj]);
            }
            let m_new = max(m_s[lid], block_max);
            correction_s[lid] = exp(m_s[lid] - m_new);
            m_s[lid] = m_new;
        }
        workgroupBarrier();
        for (var g = 0u; g < GT; g++) {
            p_s[g][lid] = select(0.0, exp(p_s[g][lid] - m_s[g]), lid < count);
        }
        workgroupBarrier();
        if (lid < GT) {
            var block_sum = 0.0;
            for (var jj = 0u; jj < count; jj++) {
                block_sum += p_s[lid][jj];
            }
            l_s[lid] = l_s[lid] * correction_s[lid] + block_sum;
        }
        // Each value row read once for the tile's heads.
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * WG;
            if (i < d) {
                for (var g = 0u; g < GT; g++) {
                    acc[g][c] *= correction_s[g];
                }
                for (var jj = 0u; jj < count; jj++) {
                    let v = v_cache[(kv_base + j0 + jj) * d + i];
                    for (var g = 0u; g < GT; g++) {
                        acc[g][c] += p_s[g][jj] * v;
                    }
                }
            }
        }
        workgroupBarrier(); // p_s, correction_s and l_s are rewritten by the next block
    }

    for (var g = 0u; g < GT; g++) {
        let h = h0 + g;
#if PARTIAL
        let base = ((t * params.hq + h) * params.n_splits + split) * (d + 2u);
        if (lid == 0u) {
            out[base] = m_s[g];
            out[base + 1u] = l_s[g];
        }
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * WG;
            if (i < d) {
                out[base + 2u + i] = acc[g][c];
            }
        }
#else
        // out = acc / l, or with a sink s: acc·e^(m−M) / (l·e^(m−M) + e^(s−M)), M = max(m, s).
        var keep = 1.0;
        var total = l_s[g];
#if SINKS
        let top = max(m_s[g], sinks[h]);
        keep = exp(m_s[g] - top);
        total = l_s[g] * keep + exp(sinks[h] - top);
#endif
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * WG;
            if (i < d) {
                out[(t * params.hq + h) * d + i] = acc[g][c] * keep / total;
            }
        }
#endif
    }
}
