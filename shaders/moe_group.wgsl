// A prefill's mixture-of-experts picks sorted by expert, for the grouped expert matmuls
// (matmul.wgsl's EXPERTS variant): one workgroup counts each expert's picks in workgroup
// memory, turns the counts into offsets, and places every pick's slot (token · top_k + j) in
// its expert's group. groups[0..=experts] are the offsets (group e is
// groups[experts + 1 + groups[e] ..][.. groups[e + 1] - groups[e]]); then the slots. Within a
// group the order is the atomics' (each slot's output is computed alone, so the order does not
// change any value). Missing picks (NONE) join no group.

struct Params {
    slots: u32,
    experts: u32,
    top_k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> route: array<u32>;
@group(0) @binding(2) var<storage, read_write> groups: array<u32>;

var<workgroup> counts: array<atomic<u32>, MAX_EXPERTS>;

fn expert_of(slot: u32) -> u32 {
    return route[(slot / params.top_k) * 2u * params.top_k + slot % params.top_k];
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    for (var e = lid; e < params.experts; e += WG) {
        atomicStore(&counts[e], 0u);
    }
    workgroupBarrier();
    for (var s = lid; s < params.slots; s += WG) {
        let e = expert_of(s);
        if (e < params.experts) {
            atomicAdd(&counts[e], 1u);
        }
    }
    workgroupBarrier();
    // Offsets: a serial scan by one thread (at most MAX_EXPERTS additions, once per layer).
    if (lid == 0u) {
        var running = 0u;
        for (var e = 0u; e < params.experts; e++) {
            groups[e] = running;
            let count = atomicLoad(&counts[e]);
            atomicStore(&counts[e], running);
            running += count;
        }
        groups[params.experts] = running;
    }
    workgroupBarrier();
    for (var s = lid; s < params.slots; s += WG) {
        let e = expert_of(s);
        if (e < params.experts) {
            groups[params.experts + 1u + atomicAdd(&counts[e], 1u)] = s;
        }
    }
}
