// (value, index) ranking shared by argmax and top_k: larger values first, ties to the lower
// index, NONE for "no candidate". The including kernel's workgroup size is WG.

const NONE: u32 = 0xffffffffu;
var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return bi == NONE || v > bv || (v == bv && i < bi);
}

// Tree-reduces every thread's candidate; the winner ends in best_val[0] / best_idx[0].
// Must be called by the whole workgroup (it has barriers).
fn reduce_best(lid: u32, bv: f32, bi: u32) {
    best_val[lid] = bv;
    best_idx[lid] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let oi = best_idx[lid + stride];
            if (oi != NONE && better(best_val[lid + stride], oi, best_val[lid], best_idx[lid])) {
                best_val[lid] = best_val[lid + stride];
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
}
