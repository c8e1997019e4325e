//! RoPE frequencies and the (cos, sin) table the `rope` kernel reads. Frequencies follow
//! transformers' `ROPE_INIT_FUNCTIONS` in f32; angles are `f32(pos) * inv_freq` in f32 (as
//! torch computes them) and their cos/sin are evaluated in f64, so large positions stay exact
//! instead of relying on a GPU's short-range `cos`.

use crate::device::GpuDevice;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers "linear").
    Linear {
        factor: f32,
    },
    /// Llama 3.1+ ("llama3"): long wavelengths slowed by `factor`, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: u32,
    },
    /// YaRN (GPT-OSS, DeepSeek): each frequency blends its interpolated (÷ `factor`) and
    /// original values by a ramp over the dimensions whose wavelengths fall between `beta_fast`
    /// and `beta_slow` rotations of the original context (transformers' `_compute_yarn_parameters`;
    /// `truncate` rounds the ramp's ends to whole dimensions). Its attention factor scales the
    /// table (`RopeConfig::attention_factor`).
    Yarn {
        factor: f32,
        beta_fast: f32,
        beta_slow: f32,
        original_max_position: u32,
        truncate: bool,
    },
}

/// Inverse frequencies for `rot_dims` rotary dimensions.
pub fn inv_freq(rot_dims: usize, theta: f32, scaling: RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..rot_dims / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / rot_dims as f32)).collect();
    match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
            let old = original_max_position as f32;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Yarn { factor, beta_fast, beta_slow, original_max_position, truncate } => {
            let dim = rot_dims as f64;
            // The dimension whose frequency turns `rotations` times over the original context.
            let correction_dim =
                |rotations: f64| dim * (original_max_position as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * (theta as f64).ln());
            let (mut low, mut high) = (correction_dim(beta_fast as f64), correction_dim(beta_slow as f64));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(dim - 1.0) as f32);
            if low == high {
                high += 0.001; // no zero-width ramp
            }
            base.iter()
                .enumerate()
                .map(|(i, &f)| {
                    let extrapolation = 1.0 - ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    f / factor * (1.0 - extrapolation) + f * extrapolation
                })
                .collect()
        }
    }
}

/// `positions × rot_dims/2` pairs of (cos, sin), uploaded once per model.
pub struct RopeTable {
    pub rot_dims: usize,
    pub positions: usize,
    pub gpu: Tensor,
}

/// The table's values on the CPU: `[positions][rot_dims/2]` of (cos, sin), both multiplied by
/// `attention_factor` (1 except for Phi-3's LongRoPE, which scales them).
pub fn cos_sin(inv_freq: &[f32], positions: usize, attention_factor: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(positions * inv_freq.len() * 2);
    for pos in 0..positions {
        for &f in inv_freq {
            let angle = (pos as f32 * f) as f64;
            out.push(angle.cos() as f32 * attention_factor);
            out.push(angle.sin() as f32 * attention_factor);
        }
    }
    out
}

impl RopeTable {
    /// No frequencies: a table that rotates nothing (NoPE layers), `rope_kv_append` then only
    /// copies k and v into the cache.
    pub fn new(dev: &GpuDevice, inv_freq: &[f32], positions: usize, attention_factor: f32) -> Result<Self> {
        if positions == 0 {
            return Err(Error::InvalidArgument("a rope table needs at least one position".into()));
        }
        let mut values = cos_sin(inv_freq, positions, attention_factor);
        if values.is_empty() {
            // Never read (no pair is rotated), but a binding cannot be empty.
            values = vec![1.0, 0.0];
        }
        let gpu = Tensor::from_f32(dev, "rope cos/sin", &[values.len()], &values)?;
        Ok(Self { rot_dims: inv_freq.len() * 2, positions, gpu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_slows_low_frequencies() {
        // Llama-3.2-1B: head_dim 64, theta 500000, factor 32, low 1, high 4, original 8192.
        let scaling = RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };
        let plain = inv_freq(64, 500_000.0, RopeScaling::None);
        let scaled = inv_freq(64, 500_000.0, scaling);
        assert_eq!(plain[0], 1.0);
        assert_eq!(scaled[0], 1.0, "wavelength 2π < 2048: unchanged");
        let last = plain.len() - 1;
        let wavelen = 2.0 * std::f32::consts::PI / plain[last];
        assert!(wavelen > 8192.0);
        assert_eq!(scaled[last], plain[last] / 32.0, "long wavelengths divided by the factor");
        // Medium band: strictly between the two extremes.
        let mid = plain
            .iter()
            .position(|f| {
                let w = 2.0 * std::f32::consts::PI / f;
                w > 2048.0 && w < 8192.0
            })
            .expect("a medium-frequency dimension");
        assert!(scaled[mid] < plain[mid] && scaled[mid] > plain[mid] / 32.0);
    }

    #[test]
    fn table_is_cos_and_sin_of_f32_angles() {
        let f = inv_freq(4, 10_000.0, RopeScaling::None);
        assert_eq!(f, vec![1.0, 0.01]);
        let t = cos_sin(&f, 3, 1.0);
        assert_eq!(t.len(), 3 * 2 * 2);
        assert_eq!((t[0], t[1]), (1.0, 0.0));
        assert!((t[4] - 1f32.cos()).abs() < 1e-7 && (t[5] - 1f32.sin()).abs() < 1e-7);
    }
}
