//! `exp` for the element-wise ops in plain f32 arithmetic that the compiler vectorises: libm's
//! `expf` is one call per value natively, and wasm has no exp instruction at all, so SiLU over a
//! prefill's gate values cost more than a fifth of the feed-forward matmul.

/// e^x within ~2 ulp (Cephes' `expf` polynomial). x is clamped to [-87, 88], where e^x stays a
/// normal f32: below, 1.6e-38 instead of smaller or 0; a NaN counts as -87.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it leaves n, rounded to nearest, in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // Not `clamp`: that keeps a NaN, which would make 2ⁿ garbage.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2ⁿ from n's bits: n + 127 in the exponent field.
    let two_n = f32::from_bits(((shifted.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) as u32) << 23);
    e_r * two_n
}

/// tanh(x) = 1 − 2/(e^{2x} + 1), with [`exp`]: within ~1e-7 absolute (not relative near 0).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// x · sigmoid(x), with [`exp`].
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU with the tanh approximation (gelu_pytorch_tanh), with [`tanh`].
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(0.797_884_6 * (x + 0.044715 * x * x * x)))
}

/// The gated MLP's act(gate) · up (GPT-OSS's clamped SwiGLU: min(g, limit) · sigmoid(alpha ·
/// min(g, limit)) · (clamp(u, ±limit) + 1)).
#[inline(always)]
pub fn gated(act: emberlm_core::ops::Activation, g: f32, u: f32) -> f32 {
    use emberlm_core::ops::Activation;
    match act {
        Activation::Silu => silu(g) * u,
        Activation::GeluTanh => gelu_tanh(g) * u,
        Activation::SwigluOai { alpha, limit } => {
            let g = g.min(limit);
            g / (1.0 + exp(-alpha * g)) * (u.clamp(-limit, limit) + 1.0)
        }
    }
}

/// ln(1 + e^x) as torch has it (x itself past 20); `ln_1p` keeps the digits when e^x is tiny.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    /// Against f64 over the whole clamped range and beyond, edge cases included.
    #[test]
    fn exp_and_tanh_agree_with_f64() {
        let mut worst = 0f64;
        let mut x = -100.0f32;
        while x < 100.0 {
            let want = (x.clamp(-87.0, 88.0) as f64).exp();
            let got = super::exp(x) as f64;
            let rel = (got - want).abs() / want;
            worst = worst.max(rel);
            let t = super::tanh(x) as f64;
            assert!((t - (x as f64).tanh()).abs() < 2e-7, "tanh({x}) = {t}");
            x += 0.00731;
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(f32::NEG_INFINITY) < 2e-38 && super::exp(f32::INFINITY).is_finite());
        assert!(super::exp(f32::NAN).is_finite());
    }
}
