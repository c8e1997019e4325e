// Weight decoding shared by matvec, matmul and embedding. The including kernel declares
// `w_qs: array<u32>` (and `w_scales: array<u32>` for q8/q4); exactly one W_* flag is set.
// Layouts are documented in crates/emberlm-core/src/dtype.rs. Everything is u32 words, so no
// kernel needs `shader-f16`.

// Eight consecutive weights of one row: lo = weights 0..3, hi = weights 4..7.
struct Octet {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The four bytes of a word as floats (byte 0 first).
fn bytes_u8(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu));
}

// The four bytes of a word as signed int8 values, as floats.
fn bytes_i8(word: u32) -> vec4<f32> {
    let shifted = bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u));
    return vec4<f32>(shifted >> vec4<u32>(24u));
}

// Octet `o` (weights 8o..8o+7) of row `row` of a [rows, k] matrix.
fn weight_octet(row: u32, o: u32, k: u32) -> Octet {
#if W_F32
    let base = row * k + o * 8u;
    let lo = vec4<u32>(w_qs[base], w_qs[base + 1u], w_qs[base + 2u], w_qs[base + 3u]);
    let hi = vec4<u32>(w_qs[base + 4u], w_qs[base + 5u], w_qs[base + 6u], w_qs[base + 7u]);
    return Octet(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
#endif
#if W_F16
    let base = (row * k) / 2u + o * 4u;
    let lo = vec4<f32>(unpack2x16float(w_qs[base]), unpack2x16float(w_qs[base + 1u]));
    let hi = vec4<f32>(unpack2x16float(w_qs[base + 2u]), unpack2x16float(w_qs[base + 3u]));
    return Octet(lo, hi);
#endif
#if W_Q8
    // Scales: one f16 per group of 32 (4 octets), two per word, rows padded to whole words.
    let groups = k / 32u;
    let g = o / 4u;
    let pair = unpack2x16float(w_scales[row * ((groups + 1u) / 2u) + g / 2u]);
    let scale = select(pair.x, pair.y, (g & 1u) == 1u);
    let base = (row * k) / 4u + o * 2u;
    return Octet(bytes_i8(w_qs[base]) * scale, bytes_i8(w_qs[base + 1u]) * scale);
#endif
#if W_Q4
    // One word per octet; scales: (f16 scale, f16 min) per group of 32.
    let word = w_qs[(row * k) / 8u + o];
    let sm = unpack2x16float(w_scales[row * (k / 32u) + o / 4u]);
    let lo = bytes_u8(word & 0x0f0f0f0fu);
    let hi = bytes_u8((word >> 4u) & 0x0f0f0f0fu);
    return Octet(lo * sm.x + sm.y, hi * sm.x + sm.y);
#endif
}
