// Causal attention for several query tokens (prefill), flash-attention style: one workgroup per
// (tile of QT query tokens, query head). The tile's queries share every key and value the
// workgroup reads, so K/V traffic is 1/QT of one workgroup per (token, head); softmax is online
// (running max and sum per query), so scores never leave workgroup memory.
// Threads: one per key of a KT-key block for the scores, one per head dimension (strided) for
// the weighted sum of values. Grouped-query: query head h reads kv head h / (hq / hkv). Key j is
// visible to the query at absolute position p when j <= p and, with a window w > 0, p - j < w;
// BIDIRECTIONAL (embedding models): every key of the input, within w / 2 either side.
// Optional tanh soft-capping of the scores (Gemma 2); SINKS: each head's learned logit joins
// the softmax's sum (GPT-OSS). Single-token decode uses `attention`.

struct Params {
    tokens: u32,
    hq: u32,
    hkv: u32,
    d: u32,         // head dim, <= MAX_D
    s_max: u32,     // KV cache capacity (positions)
    pos0: u32,      // absolute position of query token 0
    window: u32,    // sliding window, 0 = none
    n_splits: u32,  // unused (always one split)
    split_len: u32, // unused
    q_stride: u32,  // floats between query tokens
    scale: f32,
    softcap: f32,   // 0 = none
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>; // [hkv, s_max, d]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>; // [hkv, s_max, d]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [tokens, hq, d]
#if SINKS
@group(0) @binding(5) var<storage, read> sinks: array<f32>; // [hq]
#endif

// MAX_D and QT (query tokens per workgroup) come with the variant: 256 and 8, or for MLA's
// latent heads 576 and 4, so q_s stays within WebGPU's 16 KiB of workgroup memory.
const KT: u32 = 64u; // keys per block = threads
const DIMS_PER_THREAD: u32 = MAX_D / KT;
const NEG_BIG: f32 = -1e30; // finite: exp(NEG_BIG - m) is 0, never NaN

var<workgroup> q_s: array<array<f32, MAX_D>, QT>; // scaled queries
var<workgroup> p_s: array<array<f32, KT>, QT>;    // a block's scores, then probabilities
var<workgroup> m_s: array<f32, QT>;               // running max per query
var<workgroup> l_s: array<f32, QT>;               // running sum per query
var<workgroup> correction_s: array<f32, QT>;      // exp(old max - new max) for this block

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = wid.y * nwg.x + wid.x;
    let tiles = (params.tokens + QT - 1u) / QT;
    if (id >= tiles * params.hq) {
        return; // whole workgroup: uniform
    }
    let h = id % params.hq;
    let t0 = (id / params.hq) * QT;
    let nq = min(QT, params.tokens - t0);
    let d = params.d;
    let kv_base = (h / (params.hq / params.hkv)) * params.s_max;

    for (var e = lid; e < QT * d; e += KT) {
        let qi = e / d;
        let i = e % d;
        var v = 0.0;
        if (qi < nq) {
            v = q[(t0 + qi) * params.q_stride + h * d + i] * params.scale;
        }
        q_s[qi][i] = v;
    }
    if (lid < QT) {
        m_s[lid] = NEG_BIG;
        l_s[lid] = 0.0;
    }
    workgroupBarrier();

    // Keys any query of the tile sees: from the first query's window start to the last query
    // (bidirectional: to the last key of the input, or the last query's window end).
    let p_first = params.pos0 + t0;
    var lo = 0u;
#if BIDIRECTIONAL
    let half = params.window / 2u;
    var end = params.pos0 + params.tokens;
    if (params.window > 0u) {
        lo = p_first - min(p_first, half);
        end = min(end, p_first + nq + half);
    }
#else
    if (params.window > 0u && p_first + 1u > params.window) {
        lo = p_first + 1u - params.window;
    }
    let end = p_first + nq;
#endif
    var acc: array<array<f32, DIMS_PER_THREAD>, QT>;

    for (var j0 = lo; j0 < end; j0 += KT) {
        // Scores of key j0 + lid against every query of the tile.
        let j = j0 + lid;
        // Zeroed by an explicit constructor: Dawn on SwiftShader kept a declaration-only
        // `var s: array<f32, QT>;` from the previous block instead of zeroing it each iteration.
        var s = array<f32, QT>();
        if (j < end) {
            let k_row = (kv_base + j) * d;
            for (var i = 0u; i < d; i++) {
                let kv = k_cache[k_row + i];
                for (var qi = 0u; qi < QT; qi++) {
                    s[qi] += q_s[qi][i] * kv;
                }
            }
        }
        for (var qi = 0u; qi < QT; qi++) {
            let p = p_first + qi;
#if BIDIRECTIONAL
            let visible = j < end && qi < nq && (params.window == 0u || max(p, j) - min(p, j) <= half);
#else
            let visible = j < end && qi < nq && j <= p && (params.window == 0u || p - j < params.window);
#endif
            var score = s[qi];
            if (params.softcap > 0.0) {
                score = params.softcap * tanh(clamp(score / params.softcap, -15.0, 15.0));
            }
            p_s[qi][lid] = select(NEG_BIG, score, visible);
        }
        workgroupBarrier();
        if (lid < QT) {
            var block_max = NEG_BIG;
            for (var jj = 0u; jj < KT; jj++) {
                block_max = max(block_max, p_s[lid][jj]);
            }
            let m_new = max(m_s[lid], block_max);
            correction_s[lid] = exp(m_s[lid] - m_new);
            m_s[lid] = m_new;
        }
        workgroupBarrier();
        for (var qi = 0u; qi < QT; qi++) {
            let score = p_s[qi][lid];
            // Masked keys count 0 even while a query has seen no visible key yet (max NEG_BIG).
            p_s[qi][lid] = select(0.0, exp(score - m_s[qi]), score > 0.5 * NEG_BIG);
        }
        workgroupBarrier();
        if (lid < QT) {
            var block_sum = 0.0;
            for (var jj = 0u; jj < KT; jj++) {
                block_sum += p_s[lid][jj];
            }
            l_s[lid] = l_s[lid] * correction_s[lid] + block_sum;
        }
        let count = min(KT, end - j0);
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * KT;
            if (i < d) {
                for (var qi = 0u; qi < QT; qi++) {
                    acc[qi][c] *= correction_s[qi];
                }
                for (var jj = 0u; jj < count; jj++) {
                    let v = v_cache[(kv_base + j0 + jj) * d + i];
                    for (var qi = 0u; qi < QT; qi++) {
                        acc[qi][c] += p_s[qi][jj] * v;
                    }
                }
            }
        }
        workgroupBarrier(); // p_s and correction_s are rewritten by the next block
    }

    for (var qi = 0u; qi < nq; qi++) {
        // acc / l, or with a sink s: acc·e^(m−M) / (l·e^(m−M) + e^(s−M)), M = max(m, s).
        var keep = 1.0;
        var total = l_s[qi];
#if SINKS
        let top = max(m_s[qi], sinks[h]);
        keep = exp(m_s[qi] - top);
        total = l_s[qi] * keep + exp(sinks[h] - top);
#endif
        for (var c = 0u; c < DIMS_PER_THREAD; c++) {
            let i = lid + c * KT;
            if (i < d) {
                out[((t0 + qi) * params.hq + h) * d + i] = acc[qi][c] * keep / total;
            }
        }
    }
}
