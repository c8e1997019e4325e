// out[r] = index of the largest x[r, :], one workgroup per row; ties go to the lowest index
// (as torch.argmax) and NaNs are skipped. Greedy decoding reads back only this one u32.
// MASKED: only columns whose bit is set in `mask` (bit i % 32 of word i / 32, the same for
// every row) compete: a constrained step's grammar mask, uploaded as cols / 8 bytes, so the
// logits need not come back to the CPU. No allowed column: NONE. Bits past cols are ignored.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
#if MASKED
@group(0) @binding(3) var<storage, read> mask: array<u32>;
#endif

#include "lib/ranking.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    var bv = 0.0;
    var bi = NONE;
#if MASKED
    // A thread per mask word, visiting only its allowed columns: a grammar usually allows few
    // tokens, so most logits are never read.
    for (var w = lid; w * 32u < params.cols; w += WG) {
        var bits = mask[w];
        if (w * 32u + 32u > params.cols) {
            bits &= (1u << (params.cols - w * 32u)) - 1u;
        }
        while (bits != 0u) {
            let i = w * 32u + firstTrailingBit(bits);
            bits &= bits - 1u;
            let v = x[base + i];
            if (v == v && better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
    }
#else
    for (var i = lid; i < params.cols; i += WG) {
        let v = x[base + i];
        if (v == v && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#endif
    reduce_best(lid, bv, bi);
    if (lid == 0u) {
#if MASKED
        out[row] = best_idx[0];
#else
        out[row] = select(best_idx[0], 0u, best_idx[0] == NONE);
#endif
    }
}
