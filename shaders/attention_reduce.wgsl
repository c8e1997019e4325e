// Merges the per-split partials (m, l, acc) written by `attention` with PARTIAL into the final
// output, one workgroup per (token, head): out = Σ acc_s e^(m_s − M) / Σ l_s e^(m_s − M).
// SINKS: the head's sink logit s joins the denominator, e^(s − M), and M.

struct Params {
    rows: u32, // tokens × hq
    d: u32,
    n_splits: u32,
    hq: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#if SINKS
@group(0) @binding(3) var<storage, read> sinks: array<f32>; // [hq]
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let stride = params.d + 2u;
    let first = row * params.n_splits;
    var m_max = -1e30;
    for (var s = 0u; s < params.n_splits; s++) {
        m_max = max(m_max, partials[(first + s) * stride]);
    }
    var l_sum = 0.0;
#if SINKS
    let sink = sinks[row % params.hq];
    m_max = max(m_max, sink);
    l_sum = exp(sink - m_max);
#endif
    for (var s = 0u; s < params.n_splits; s++) {
        let base = (first + s) * stride;
        l_sum += partials[base + 1u] * exp(partials[base] - m_max);
    }
    for (var i = lid; i < params.d; i += WG) {
        var o = 0.0;
        for (var s = 0u; s < params.n_splits; s++) {
            let base = (first + s) * stride;
            o += partials[base + 2u + i] * exp(partials[base] - m_max);
        }
        out[row * params.d + i] = o / l_sum;
    }
}
