//! Token sampling on the CPU, in transformers' order: repetition penalty, temperature, top-k,
//! top-p, min-p, then a draw from a seeded generator (the same seed gives the same tokens on
//! every platform).

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off; > 1 discourages tokens already in the prompt or the output.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

/// Temperatures below this are greedy: 1/T past ~1e5 leaves only the argmax with any
/// probability anyway, and 1e-40 made every scaled logit overflow to a NaN distribution.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-5;

pub struct Sampler {
    options: SamplingOptions,
    state: u64,
}

impl Sampler {
    pub fn new(options: &SamplingOptions) -> Result<Self> {
        let o = options;
        let bad = |m: &str| Err(ModelError::Config(format!("sampling: {m}")));
        if !(o.temperature >= 0.0 && o.temperature.is_finite()) {
            return bad("temperature must be ≥ 0");
        }
        if !(o.top_p > 0.0 && o.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&o.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(o.repetition_penalty > 0.0 && o.repetition_penalty.is_finite()) {
            return bad("repetition_penalty must be > 0");
        }
        Ok(Self { options: options.clone(), state: o.seed ^ 0x9E37_79B9_7F4A_7C15 })
    }

    /// Greedy decoding needs no logits on the CPU: the GPU's argmax is the answer.
    pub fn is_greedy(&self) -> bool {
        self.options.temperature < GREEDY_BELOW_TEMPERATURE && self.options.repetition_penalty == 1.0
    }

    /// splitmix64 → uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` (modified in place); `history` is prompt + output.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let o = &self.options;
        if o.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &id in history {
                if let Some(l) = logits.get_mut(id as usize) {
                    if seen.insert(id) {
                        *l = if *l > 0.0 { *l / o.repetition_penalty } else { *l * o.repetition_penalty };
                    }
                }
            }
        }
        let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
        if o.temperature < GREEDY_BELOW_TEMPERATURE {
            return argmax();
        }
        // Candidates sorted by logit, best first; ties keep the lower id first. Scaled in f64.
        let mut cand: Vec<(u32, f64)> =
            logits.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| (i as u32, v as f64 / o.temperature as f64)).collect();
        if cand.is_empty() {
            return argmax();
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if o.top_k > 0 {
            cand.truncate(o.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if o.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= o.top_p as f64
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if o.min_p > 0.0 {
            let floor = probs[0] * o.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.uniform() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r < 0.0 {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(o: SamplingOptions) -> Sampler {
        Sampler::new(&o).unwrap()
    }

    #[test]
    fn temperature_zero_is_argmax_and_penalty_applies() {
        let mut s = sampler(SamplingOptions { repetition_penalty: 2.0, ..Default::default() });
        assert!(!s.is_greedy());
        // Token 1 (logit 3) is in the history: 3/2 = 1.5 < 2 → token 2 wins.
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.0], &[1]), 2);
        assert!(sampler(SamplingOptions::default()).is_greedy());
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_candidates() {
        let logits = [5.0, 4.9, 0.0, -1.0];
        for _ in 0..200 {
            let mut s = sampler(SamplingOptions { temperature: 1.0, top_k: 2, seed: 7, ..Default::default() });
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
        }
        let mut s = sampler(SamplingOptions { temperature: 1.0, top_p: 0.4, seed: 3, ..Default::default() });
        for _ in 0..200 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0, "top-p 0.4 keeps only the best");
        }
        let mut s = sampler(SamplingOptions { temperature: 1.0, min_p: 0.5, seed: 3, ..Default::default() });
        for _ in 0..200 {
            assert!(s.sample(&mut logits.clone(), &[]) < 2, "min-p drops tokens under half the best probability");
        }
    }

    #[test]
    fn a_seed_gives_the_same_draws_and_frequencies_follow_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()];
        let draw = |seed| {
            let mut s = sampler(SamplingOptions { temperature: 1.0, seed, ..Default::default() });
            (0..6000).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        let counts = draw(42).iter().fold([0usize; 3], |mut c, &t| {
            c[t as usize] += 1;
            c
        });
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = counts[i] as f64 / 6000.0;
            assert!((got - want).abs() < 0.03, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn a_near_zero_temperature_is_greedy_not_nan() {
        for t in [1e-40f32, 1e-30, 1e-6] {
            let mut s = sampler(SamplingOptions { temperature: t, seed: 1, ..Default::default() });
            assert!(s.is_greedy(), "{t}");
            for _ in 0..50 {
                assert_eq!(s.sample(&mut [1.0, 3.0, 2.9, -1.0], &[]), 1, "temperature {t}");
            }
        }
        // Small but sampled: still a proper distribution (the best token, never garbage).
        let mut s = sampler(SamplingOptions { temperature: 1e-4, seed: 1, ..Default::default() });
        assert!(!s.is_greedy());
        assert_eq!(s.sample(&mut [1.0, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(Sampler::new(&SamplingOptions { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(&SamplingOptions { top_p: 0.0, ..Default::default() }).is_err());
    }
}
