// The gate's activation of a gated MLP (gated_activation, matvec's GATED variant): SiLU, or
// GELU with the tanh approximation when GELU_TANH (Gemma); `gated(gate, up)` is the MLP's
// act(gate)·up, or with SWIGLU_OAI GPT-OSS's clamped form. `silu` alone serves Mamba2's
// convolution and gate (short_conv, ssm_scan).

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn activation(g: f32) -> f32 {
#if GELU_TANH
    // 0.5·g·(1 + tanh(u)) written as g·sigmoid(2u): the same function, without the
    // cancellation in 1 + tanh(u) for negative g that costs f32 most of its digits.
    let u = 0.7978845608028654 * (g + 0.044715 * g * g * g); // sqrt(2/pi)
    return g / (1.0 + exp(-2.0 * u));
#else
    return silu(g);
#endif
}

// act(gate) · up; SWIGLU_OAI (GPT-OSS): g = min(gate, limit), u = clamp(up, ±limit),
// (u + 1) · g · sigmoid(alpha · g), alpha and limit as f32 bits in SWIGLU_ALPHA / SWIGLU_LIMIT.
fn gated(g: f32, u: f32) -> f32 {
#if SWIGLU_OAI
    let limit = bitcast<f32>(SWIGLU_LIMIT);
    let gc = min(g, limit);
    return (clamp(u, -limit, limit) + 1.0) * gc / (1.0 + exp(-bitcast<f32>(SWIGLU_ALPHA) * gc));
#else
    return activation(g) * u;
#endif
}
