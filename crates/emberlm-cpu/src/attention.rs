//! Grouped-query attention over a KV cache, causal or bidirectional (`visible_keys`) (the CPU twin of `shaders/attention.wgsl`):
//! one task per (token, head), scores in f32, softmax with the running maximum subtracted.

use emberlm_core::ops::AttentionParams;
use emberlm_core::{Error, Result};

use crate::matvec::RowKernels;
use crate::parallel::map_ranges;

/// `q`: [tokens, q_stride]; caches: [heads_kv, s_max, head_dim]; `out`: [tokens, heads_q · head_dim];
/// `sinks`: one logit per query head that joins its softmax's sum and weighs no value (GPT-OSS).
pub fn attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], sinks: Option<&[f32]>, out: &mut [f32], p: &AttentionParams) -> Result<()> {
    let (t, hq, hkv, d) = (p.tokens, p.heads_q, p.heads_kv, p.head_dim);
    if hkv == 0 || d == 0 || hq % hkv != 0 {
        return Err(Error::Shape { op: "attention", detail: format!("{hq} query heads cannot share {hkv} key/value heads") });
    }
    let s_max = k_cache.len() / (hkv * d);
    let last = p.pos0 + t;
    if last > s_max || v_cache.len() < hkv * s_max * d || q.len() < (t - 1) * p.q_stride + hq * d || out.len() < t * hq * d {
        return Err(Error::Shape {
            op: "attention",
            detail: format!("{t} tokens from position {} do not fit a cache of {s_max} or the given buffers", p.pos0),
        });
    }
    let group = hq / hkv;
    let kern = RowKernels::get();
    // A decode step's few heads over a short cache are microseconds of work: one task then,
    // rather than paying for fork/join and per-task buffers.
    let work = t * hq * (p.pos0 + t) * d;
    let parts = map_ranges(t * hq, if work < 1 << 20 { t * hq } else { 1 }, |range| {
        let mut o = vec![0f32; range.len() * d];
        let mut scores = Vec::new();
        for (idx, oh) in range.zip(o.chunks_exact_mut(d)) {
            let (tok, h) = (idx / hq, idx % hq);
            let keys = emberlm_core::ops::visible_keys(p.causal, p.window, p.pos0 + tok, last - 1);
            let qh = &q[tok * p.q_stride + h * d..][..d];
            let base = (h / group) * s_max;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in keys.clone() {
                let mut s = kern.dot(qh, &k_cache[(base + j) * d..][..d]) * p.scale;
                if p.softcap > 0.0 {
                    s = p.softcap * (s / p.softcap).tanh();
                }
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = crate::math::exp(*s - max);
                sum += *s;
            }
            for (j, &w) in keys.zip(&scores) {
                let v = &v_cache[(base + j) * d..][..d];
                for (a, b) in oh.iter_mut().zip(v) {
                    *a += w * b;
                }
            }
            let inv = match sinks {
                // acc·e^(m−M) / (sum·e^(m−M) + e^(s−M)), M = max(m, s).
                Some(s) => {
                    let top = max.max(s[h]);
                    let keep = crate::math::exp(max - top);
                    keep / (sum * keep + crate::math::exp(s[h] - top))
                }
                None => 1.0 / sum,
            };
            oh.iter_mut().for_each(|a| *a *= inv);
        }
        o
    });
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(&part);
        at += part.len();
    }
    Ok(())
}
