// The gate's activation of a gated MLP (gated_activation, matvec's GATED variant): SiLU, or
// GELU with the tanh approximation when GELU_TANH (Gemma). `silu` alone serves Mamba2's
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
