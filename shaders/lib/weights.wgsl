// Weight decoding shared by matvec, matmul and embedding. The including kernel declares
// `w_qs: array<u32>` (and `w_scales: array<u32>` when QUANTIZED); exactly one W_* flag is set.
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

// The 4-bit values of a Q4-layout word: low nibbles are weights 0..3, high nibbles 4..7.
fn nibbles(word: u32) -> Octet {
    return Octet(bytes_u8(word & 0x0f0f0f0fu), bytes_u8((word >> 4u) & 0x0f0f0f0fu));
}

#if QUANTIZED
// Byte `i` of the scale segment, counting from word `base`.
fn scale_byte(base: u32, i: u32) -> u32 {
    return (w_scales[base + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// Q4K/Q5K: (d·sc, dmin·m) of sub-block j (0..8) of the super-block whose header starts at
// word `h`. ggml packs the 6-bit values in 12 bytes: sub-blocks 0..3 in the low 6 bits of
// bytes j and j+4; 4..7 in a nibble of byte j+4 plus the top 2 bits of bytes j-4 and j.
fn k_scale_min(h: u32, j: u32) -> vec2<f32> {
    let dm = unpack2x16float(w_scales[h]);
    let a = scale_byte(h + 1u, j % 4u);
    let b = scale_byte(h + 1u, j % 4u + 4u);
    let c = scale_byte(h + 1u, 8u + j % 4u);
    let sc = select((c & 0xfu) | ((a >> 6u) << 4u), a & 63u, j < 4u);
    let m = select((c >> 4u) | ((b >> 6u) << 4u), b & 63u, j < 4u);
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(m));
}
#endif

#if W_MXFP4
// Four e2m1 codes (sign bit 3; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6) times 2^e, exactly:
// magnitude = mantissa · 2^(exponent − 2) with an implicit 2 for exponents 1..3, 0.5·m at 0.
fn e2m1(code: vec4<u32>, e: i32) -> vec4<f32> {
    let exponent = (code >> vec4<u32>(1u)) & vec4<u32>(3u);
    let m = vec4<f32>(code & vec4<u32>(1u));
    let normal = exponent != vec4<u32>(0u);
    let mantissa = select(m, 2.0 + m, normal);
    let shift = select(vec4<i32>(-1), vec4<i32>(exponent) - 2, normal) + e;
    let sign = select(vec4<f32>(1.0), vec4<f32>(-1.0), (code & vec4<u32>(8u)) != vec4<u32>(0u));
    return sign * ldexp(mantissa, shift);
}
#endif

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
    let q = nibbles(w_qs[(row * k) / 8u + o]);
    let sm = unpack2x16float(w_scales[row * (k / 32u) + o / 4u]);
    return Octet(q.lo * sm.x + sm.y, q.hi * sm.x + sm.y);
#endif
#if W_MXFP4
    // e2m1 codes in the Q4 word layout; one e8m0 exponent byte per group of 32 (4 octets).
    let w = vec4<u32>(w_qs[(row * k) / 8u + o]);
    let lo = (w >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xfu);
    let hi = (w >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(0xfu);
    let e = i32(scale_byte(row * ((k / 32u + 3u) / 4u), o / 4u)) - 127;
    return Octet(e2m1(lo, e), e2m1(hi, e));
#endif
    // K formats: super-blocks of 256 weights (32 octets); layouts in dtype.rs.
#if W_Q4K
    let q = nibbles(w_qs[row * (k / 8u) + o]);
    let sm = k_scale_min((row * (k / 256u) + o / 32u) * 4u, (o / 4u) % 8u);
    return Octet(q.lo * sm.x - sm.y, q.hi * sm.x - sm.y);
#endif
#if W_Q5K
    let row_words = k / 8u + k / 32u;
    let q = nibbles(w_qs[row * row_words + o]);
    // One high bit per weight: this octet's eight are one byte.
    let high = vec4<u32>(w_qs[row * row_words + k / 8u + o / 4u] >> (8u * (o % 4u)));
    let lo = q.lo + vec4<f32>((high >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) * 16.0;
    let hi = q.hi + vec4<f32>((high >> vec4<u32>(4u, 5u, 6u, 7u)) & vec4<u32>(1u)) * 16.0;
    let sm = k_scale_min((row * (k / 256u) + o / 32u) * 4u, (o / 4u) % 8u);
    return Octet(lo * sm.x - sm.y, hi * sm.x - sm.y);
#endif
#if W_Q6K
    let row_words = k / 8u + k / 16u;
    let q = nibbles(w_qs[row * row_words + o]);
    // Two high bits per weight: this octet's sixteen are half a word.
    let high = vec4<u32>(w_qs[row * row_words + k / 8u + o / 2u] >> (16u * (o % 2u)));
    let lo = q.lo + vec4<f32>((high >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u)) * 16.0 - 32.0;
    let hi = q.hi + vec4<f32>((high >> vec4<u32>(8u, 10u, 12u, 14u)) & vec4<u32>(3u)) * 16.0 - 32.0;
    // Header: f16 d, then one signed byte of scale per 16 weights (two octets).
    let h = (row * (k / 256u) + o / 32u) * 5u;
    let sc = bitcast<i32>(scale_byte(h + 1u, (o % 32u) / 2u) << 24u) >> 24u;
    let scale = unpack2x16float(w_scales[h]).x * f32(sc);
    return Octet(lo * scale, hi * scale);
#endif
}
