//! Grouped-query attention over a KV cache, causal or bidirectional (`visible_keys`) (the CPU twin of `shaders/attention.wgsl`).
//! Scores in f32, softmax with the running maximum subtracted. A decode step runs one task per
//! head ([`per_head`]); a prefill runs [`tiled`]: the query heads sharing a key/value head, for
//! a few tokens at once, against blocks of keys, so each key and value row is loaded once per
//! tile instead of once per (token, head).

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
    if t > 1 {
        tiled(q, k_cache, v_cache, sinks, out, p, s_max);
        return Ok(());
    }
    per_head(q, k_cache, v_cache, sinks, out, p, s_max);
    Ok(())
}

/// One task per (token, query head): a key's score is one dot product.
fn per_head(q: &[f32], k_cache: &[f32], v_cache: &[f32], sinks: Option<&[f32]>, out: &mut [f32], p: &AttentionParams, s_max: usize) {
    let (t, hq, hkv, d) = (p.tokens, p.heads_q, p.heads_kv, p.head_dim);
    let last = p.pos0 + t;
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
            let inv = normalizer(max, sum, sinks.map(|s| s[h]));
            oh.iter_mut().for_each(|a| *a *= inv);
        }
        o
    });
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(&part);
        at += part.len();
    }
}

/// What a row's weighted sum is multiplied by: 1 / sum, or with a sink logit `s` joining the
/// softmax: e^(m−M) / (sum·e^(m−M) + e^(s−M)), M = max(m, s).
fn normalizer(max: f32, sum: f32, sink: Option<f32>) -> f32 {
    match sink {
        Some(s) => {
            let top = max.max(s);
            let keep = crate::math::exp(max - top);
            keep / (sum * keep + crate::math::exp(s - top))
        }
        None => 1.0 / sum,
    }
}

/// Keys per block of [`tiled`]: one score per lane of a 512-bit register (four of 128 bits).
const KEY_BLOCK: usize = 16;
/// Tokens per task of [`tiled`], each with every query head of its key/value head.
const TILE_TOKENS: usize = 4;

/// Keys `j0..j0 + n` of one key/value head: their rows of the caches.
struct KeyBlock<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    j0: usize,
    n: usize,
}

crate::multiversion! {
    /// Folds one block of keys into a tile's rows (`rows`: (token, query head); `bounds`: each
    /// row's visible keys, inclusive): scores, their streaming softmax, the weighted values.
    fn attend_block(
        q: &[f32],
        p: &AttentionParams,
        rows: &[(usize, usize)],
        bounds: &[(usize, usize)],
        block: &KeyBlock,
        kt: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        acc: &mut [f32],
    ) {
        let d = p.head_dim;
        // Transposed: row c holds dimension c of the block's keys, one per lane.
        for (jj, key) in block.keys.chunks_exact(d).enumerate() {
            for (c, &kv) in key.iter().enumerate() {
                kt[c * KEY_BLOCK + jj] = kv;
            }
        }
        for (r, &(tok, h)) in rows.iter().enumerate() {
            let qh = &q[tok * p.q_stride + h * d..][..d];
            let mut scores = [0f32; KEY_BLOCK];
            for (&qc, kc) in qh.iter().zip(kt.chunks_exact(KEY_BLOCK)) {
                for (s, &k) in scores.iter_mut().zip(kc) {
                    *s += qc * k;
                }
            }
            scores.iter_mut().for_each(|s| *s *= p.scale);
            if p.softcap > 0.0 {
                scores.iter_mut().for_each(|s| *s = p.softcap * crate::math::tanh(*s / p.softcap));
            }
            let (lo, hi) = bounds[r];
            let mut block_max = f32::NEG_INFINITY;
            for (jj, s) in scores.iter_mut().enumerate() {
                let j = block.j0 + jj;
                *s = if jj < block.n && j >= lo && j <= hi { *s } else { f32::NEG_INFINITY };
                block_max = block_max.max(*s);
            }
            if block_max == f32::NEG_INFINITY {
                continue;
            }
            let top = max[r].max(block_max);
            // The sum and values so far were weighed against the old maximum.
            let rescale = crate::math::exp(max[r] - top);
            max[r] = top;
            let row = &mut acc[r * d..][..d];
            if rescale != 1.0 {
                sum[r] *= rescale;
                row.iter_mut().for_each(|a| *a *= rescale);
            }
            let mut weights = [0f32; KEY_BLOCK];
            for (w, &s) in weights.iter_mut().zip(&scores) {
                *w = if s == f32::NEG_INFINITY { 0.0 } else { crate::math::exp(s - top) };
            }
            sum[r] += weights.iter().sum::<f32>();
            for (&w, v) in weights.iter().zip(block.values.chunks_exact(d)) {
                if w != 0.0 {
                    for (a, &vv) in row.iter_mut().zip(v) {
                        *a += w * vv;
                    }
                }
            }
        }
    }
}

/// A prefill: one task per (key/value head, tile of tokens); its rows are the tile's tokens ×
/// the query heads sharing that key/value head. Keys go in blocks of [`KEY_BLOCK`], transposed
/// once per block so that a row's scores are `d` multiply-adds of a query scalar into a vector
/// of the block's scores (no horizontal sums), and a streaming softmax (running maximum and sum,
/// the weighted values rescaled when the maximum grows) folds each block in.
fn tiled(q: &[f32], k_cache: &[f32], v_cache: &[f32], sinks: Option<&[f32]>, out: &mut [f32], p: &AttentionParams, s_max: usize) {
    let (t, hq, hkv, d) = (p.tokens, p.heads_q, p.heads_kv, p.head_dim);
    let last = p.pos0 + t - 1;
    let group = hq / hkv;
    let tiles = t.div_ceil(TILE_TOKENS);
    let parts = map_ranges(hkv * tiles, 1, |range| {
        let mut outs = Vec::with_capacity(range.len());
        let mut kt = vec![0f32; d * KEY_BLOCK];
        for task in range {
            let (h_kv, tile) = (task / tiles, task % tiles);
            let tokens = tile * TILE_TOKENS..((tile + 1) * TILE_TOKENS).min(t);
            let rows: Vec<(usize, usize)> = tokens.clone().flat_map(|tok| (0..group).map(move |g| (tok, h_kv * group + g))).collect();
            let bounds: Vec<(usize, usize)> =
                rows.iter().map(|&(tok, _)| emberlm_core::ops::visible_keys(p.causal, p.window, p.pos0 + tok, last).into_inner()).collect();
            let (lo, hi) = (bounds.iter().map(|b| b.0).min().unwrap_or(0), bounds.iter().map(|b| b.1).max().unwrap_or(0));
            let mut max = vec![f32::NEG_INFINITY; rows.len()];
            let mut sum = vec![0f32; rows.len()];
            let mut acc = vec![0f32; rows.len() * d];
            for j0 in (lo..=hi).step_by(KEY_BLOCK) {
                let n = KEY_BLOCK.min(hi + 1 - j0);
                let block = KeyBlock { keys: &k_cache[(h_kv * s_max + j0) * d..][..n * d], values: &v_cache[(h_kv * s_max + j0) * d..][..n * d], j0, n };
                attend_block(q, p, &rows, &bounds, &block, &mut kt, &mut max, &mut sum, &mut acc);
            }
            for (r, &(_, h)) in rows.iter().enumerate() {
                let inv = normalizer(max[r], sum[r], sinks.map(|s| s[h]));
                acc[r * d..][..d].iter_mut().for_each(|a| *a *= inv);
            }
            outs.push((rows, acc));
        }
        outs
    });
    for (rows, acc) in parts.into_iter().flatten() {
        for ((tok, h), o) in rows.into_iter().zip(acc.chunks_exact(d)) {
            out[(tok * hq + h) * d..][..d].copy_from_slice(o);
        }
    }
}
