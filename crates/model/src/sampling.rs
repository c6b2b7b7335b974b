//! Token sampling from logits: greedy, temperature, top-k, top-p (nucleus), seeded.
//!
//! Sampling runs on the host over one row of logits at a time (`[vocab]` f32): at G ≤ 64 rows
//! and a 49k vocabulary this costs far less than the forward pass, and it keeps the random
//! stream independent of the tensor backend, so a seed reproduces a rollout on CPU and CUDA
//! alike. The order of operations follows Hugging Face's `generate`: temperature, then
//! top-k, then top-p (Holtzman et al. 2020), then a categorical draw.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Sampling hyper-parameters. Each default is stated once, in `impl Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` means greedy (argmax). Default 1.0.
    pub temperature: f32,
    /// Nucleus mass kept, in (0, 1]; 1 disables. Default 1.0.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables. Default 0.
    pub top_k: usize,
    /// RNG seed. Default 0.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// A seeded sampler; one per rollout batch, drawing rows in a fixed order.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `cfg.seed`.
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Self { cfg, rng }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// Draws a seed from this sampler's stream (for a remote policy, which samples with its
    /// own generator seeded per request).
    pub fn next_seed(&mut self) -> u64 {
        self.rng.random()
    }

    /// Draws one token id from `logits` (`[vocab]`, unnormalised).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_logprob(logits).0
    }

    /// Draws one token id from `logits` and returns it with its log-probability under the
    /// distribution it was drawn from (after temperature and any top-k / top-p cut; under
    /// `softmax(logits)` for greedy decoding). RL compares it with the training forward's
    /// log-prob of the same token (`logprob_mismatch`).
    pub fn sample_logprob(&mut self, logits: &[f32]) -> (u32, f32) {
        if self.cfg.temperature <= 0.0 {
            let id = argmax(logits);
            return (id, log_softmax_at(logits, id as usize, 1.0));
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // (id, unnormalised probability)
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .filter(|(_, p)| *p > 0.0)
            .collect();
        let filtering = self.cfg.top_k > 0 || self.cfg.top_p < 1.0;
        if filtering {
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            if self.cfg.top_k > 0 {
                cand.truncate(self.cfg.top_k.max(1));
            }
            if self.cfg.top_p < 1.0 {
                let total: f32 = cand.iter().map(|c| c.1).sum();
                let mut acc = 0.0;
                let mut keep = cand.len();
                for (i, c) in cand.iter().enumerate() {
                    acc += c.1 / total;
                    if acc >= self.cfg.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                cand.truncate(keep.max(1));
            }
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        if cand.is_empty() || !total.is_finite() {
            let id = argmax(logits);
            return (
                id,
                log_softmax_at(logits, id as usize, self.cfg.temperature),
            );
        }
        let mut u = self.rng.random::<f32>() * total;
        let mut pick = cand.last().copied().unwrap_or((0, total));
        for &(id, p) in &cand {
            if u < p {
                pick = (id, p);
                break;
            }
            u -= p;
        }
        (pick.0, (pick.1 / total).ln())
    }
}

/// `log softmax(logits / temperature)[id]`.
pub fn log_softmax_at(logits: &[f32], id: usize, temperature: f32) -> f32 {
    let inv_t = 1.0 / temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|&l| ((l - max) * inv_t).exp()).sum();
    (logits[id] - max) * inv_t - total.ln()
}

/// Index of the largest value (the first on ties); 0 for an empty slice.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    /// The returned log-prob is that of the drawn token under `softmax(logits / T)`
    /// (untruncated), or under `softmax(logits)` for greedy decoding.
    #[test]
    fn sample_logprob_is_the_drawn_tokens_log_softmax() {
        let logits = [0.5f32, 2.0, -1.0, 1.0];
        let mut s = Sampler::new(SamplingConfig {
            temperature: 0.7,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..20 {
            let (id, lp) = s.sample_logprob(&logits);
            let want = log_softmax_at(&logits, id as usize, 0.7);
            assert!((lp - want).abs() < 1e-5, "{lp} vs {want}");
        }
        let z: f32 = logits.iter().map(|l| (l / 0.7).exp()).sum();
        assert!((log_softmax_at(&logits, 1, 0.7) - ((2.0f32 / 0.7).exp() / z).ln()).abs() < 1e-5);
        let mut g = Sampler::new(SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(
            g.sample_logprob(&logits),
            (1, log_softmax_at(&logits, 1, 1.0))
        );
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplingConfig {
            seed: 42,
            ..Default::default()
        };
        let mut a = Sampler::new(cfg.clone());
        let mut b = Sampler::new(cfg);
        let da: Vec<u32> = (0..100).map(|_| a.sample(&logits)).collect();
        let db: Vec<u32> = (0..100).map(|_| b.sample(&logits)).collect();
        assert_eq!(da, db);
        assert!(da.iter().any(|&x| x != da[0]), "temperature 1 should vary");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingConfig {
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 5.0, 4.9]), 2);
        }
    }

    #[test]
    fn top_p_excludes_tail() {
        // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingConfig {
            top_p: 0.8,
            seed: 7,
            ..Default::default()
        });
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        assert!(seen[0] > seen[1] && seen[1] > 0);
    }

    #[test]
    fn temperature_sharpens() {
        let logits = [1.0f32, 0.0];
        let count = |t: f32| {
            let mut s = Sampler::new(SamplingConfig {
                temperature: t,
                seed: 3,
                ..Default::default()
            });
            (0..4000).filter(|_| s.sample(&logits) == 0).count()
        };
        assert!(count(0.25) > count(1.0) + 500);
    }
}
