//! Collapse guard: notice when training goes off the rails, roll back, slow down.
//!
//! RL on small policies fails in recognisable ways: entropy falls to ~0 (the policy repeats
//! one continuation), entropy shoots up (it emits noise), the KL to the reference explodes, or
//! the format-valid rate that stage 1 worked for drops away. [`CollapseGuard::check`] tests a
//! step's [`StepMetrics`] against the bounds of [`GuardConfig`]; the trainer restores the last
//! weights that passed, multiplies the learning rate by `lr_factor`, and records a
//! [`GuardEvent`] in that step's metrics line.
//!
//! **Which weights a step's figures describe.** Every figure logged at step N — the rollout's
//! format rate, and the entropy and KL of the update's forward pass — is measured on θ_{N−1},
//! the weights *before* step N's optimizer step (the last checkpoint), not on θ_N. So the
//! weights to distrust when step N trips are θ_{N−1}, and "last good" must be older: the
//! trainer keeps an in-memory snapshot of θ_{N−1} (with the optimizer moments) during step N
//! and promotes it to last-good only when step N's figures pass. Rolling back to the latest
//! checkpoint instead would restore exactly the weights that misbehaved.
//!
//! **Windowed trips.** The format-valid check averages `window` steps, so when it trips at
//! step N the degraded figures span steps N−window+1 … N, which measured θ_{N−window} …
//! θ_{N−1}. Restoring the newest passing weights would restore weights from *inside* that
//! window; the trainer keeps the last `window + 1` passing snapshots and restores the newest
//! one from before the window (θ_{N−window−1} or older). Snapshots hold weights only (a full
//! copy of AdamW's moments per snapshot would triple their memory), so a rollback also
//! restarts AdamW's moments: the gradient history that led into the collapse is dropped with
//! it.
//!
//! The step counter, data position and sampling seed keep moving forward after a rollback,
//! so the restored policy sees new questions and new samples rather than replaying the
//! rollout that tripped. The learning-rate scale is part of the checkpointed
//! [`TrainState`](super::checkpoint::TrainState), so a resumed run keeps it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use super::metrics::GuardEvent;
use super::metrics::StepMetrics;

/// Bounds of the collapse guard (`[train.guard]` in an env config). Defaults stated once, here;
/// they are loose on purpose (they catch collapse, not ordinary noise of 8-episode steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Check every step and roll back on a trip. Default true.
    pub enabled: bool,
    /// Trip when the mean policy entropy (nats per policy token) falls below this. Default 0.05.
    pub min_entropy: f64,
    /// Trip when the mean policy entropy rises above this (nats; the 49k-token vocabulary's
    /// uniform entropy is 10.8). Default 7.0.
    pub max_entropy: f64,
    /// Trip when the mean KL estimate to the reference rises above this (nats per token).
    /// Default 0.5.
    pub max_kl: f64,
    /// Trip when the format-valid rate, averaged over the last `window` steps, falls more than
    /// this below the best such average seen since the last trip. Default 0.5.
    pub max_format_drop: f64,
    /// Steps averaged for the format-valid rate. Default 4.
    pub window: usize,
    /// Learning-rate multiplier applied at each trip. Default 0.5.
    pub lr_factor: f64,
    /// Stop training after this many trips. Default 5.
    pub max_trips: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_entropy: 0.05,
            max_entropy: 7.0,
            max_kl: 0.5,
            max_format_drop: 0.5,
            window: 4,
            lr_factor: 0.5,
            max_trips: 5,
        }
    }
}

/// A tripped bound.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardTrip {
    /// Which bound tripped, with the measured value.
    pub reason: String,
    /// Steps whose figures the verdict rests on, ending at the tripping step: 1 for entropy
    /// and KL, `window` for the format-valid rate. Every weight those steps measured is
    /// suspect, so the trainer restores weights from before the first of them.
    pub steps: usize,
}

/// Running state of the checks (format-rate window and its best mean).
#[derive(Debug, Clone, Default)]
pub struct CollapseGuard {
    format: VecDeque<f64>,
    best_format: Option<f64>,
}

impl CollapseGuard {
    /// Tests one step's figures; `Err` when a bound is crossed. `entropy` and `kl` are
    /// skipped when the step ran no forward pass (`None`).
    ///
    /// # Errors
    /// A [`GuardTrip`]: the tripped bound as text, e.g. `"entropy 0.012 < min_entropy 0.05"`,
    /// and how many steps of evidence it spans (1 for entropy and KL, `window` for the
    /// format-valid rate).
    pub fn check(&mut self, cfg: &GuardConfig, m: &StepMetrics) -> Result<(), GuardTrip> {
        let one = |reason| GuardTrip { reason, steps: 1 };
        if let Some(e) = m.entropy {
            if e < cfg.min_entropy {
                return Err(one(format!(
                    "entropy {e:.4} < min_entropy {}",
                    cfg.min_entropy
                )));
            }
            if e > cfg.max_entropy {
                return Err(one(format!(
                    "entropy {e:.4} > max_entropy {}",
                    cfg.max_entropy
                )));
            }
        }
        if let Some(k) = m.kl {
            if k > cfg.max_kl {
                return Err(one(format!("kl {k:.4} > max_kl {}", cfg.max_kl)));
            }
        }
        let w = cfg.window.max(1);
        self.format.push_back(m.format_ok_rate);
        if self.format.len() > w {
            self.format.pop_front();
        }
        if self.format.len() == w {
            let mean = self.format.iter().sum::<f64>() / w as f64;
            let best = self.best_format.map_or(mean, |b| b.max(mean));
            self.best_format = Some(best);
            if best - mean > cfg.max_format_drop {
                return Err(GuardTrip {
                    reason: format!(
                        "format-valid rate over {w} steps {mean:.3} fell {:.3} below its best {best:.3} (max_format_drop {})",
                        best - mean,
                        cfg.max_format_drop
                    ),
                    steps: w,
                });
            }
        }
        Ok(())
    }

    /// Forgets the format history (after a rollback the restored weights set a new baseline).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(entropy: Option<f64>, kl: Option<f64>, fmt: f64) -> StepMetrics {
        StepMetrics {
            entropy,
            kl,
            format_ok_rate: fmt,
            ..Default::default()
        }
    }

    #[test]
    fn entropy_bounds_trip_both_ways_and_skip_when_absent() {
        let cfg = GuardConfig::default();
        let mut g = CollapseGuard::default();
        assert!(g.check(&cfg, &metrics(Some(1.5), None, 0.0)).is_ok());
        let low = g
            .check(&cfg, &metrics(Some(0.01), None, 0.0))
            .unwrap_err()
            .reason;
        assert!(low.contains("min_entropy"), "{low}");
        let high = g
            .check(&cfg, &metrics(Some(9.0), None, 0.0))
            .unwrap_err()
            .reason;
        assert!(high.contains("max_entropy"), "{high}");
        assert!(g.check(&cfg, &metrics(None, None, 0.0)).is_ok());
    }

    #[test]
    fn kl_bound_trips() {
        let cfg = GuardConfig::default();
        let mut g = CollapseGuard::default();
        assert!(g.check(&cfg, &metrics(Some(1.0), Some(0.49), 0.0)).is_ok());
        let e = g
            .check(&cfg, &metrics(Some(1.0), Some(0.8), 0.0))
            .unwrap_err();
        assert!(e.reason.starts_with("kl 0.8000 > max_kl"), "{e:?}");
        assert_eq!(e.steps, 1);
    }

    #[test]
    fn format_rate_trips_on_windowed_drop_from_best_not_on_one_bad_step() {
        let cfg = GuardConfig {
            window: 2,
            max_format_drop: 0.3,
            ..Default::default()
        };
        let mut g = CollapseGuard::default();
        // Window means: (0.8+0.8)/2 = 0.8 best; (0.8+0.4)/2 = 0.6 (drop 0.2, fine);
        // (0.4+0.2)/2 = 0.3 (drop 0.5 > 0.3, trip).
        for f in [0.8, 0.8, 0.4] {
            assert!(g.check(&cfg, &metrics(None, None, f)).is_ok());
        }
        let e = g.check(&cfg, &metrics(None, None, 0.2)).unwrap_err();
        assert!(
            e.reason.contains("fell 0.500 below its best 0.800"),
            "{e:?}"
        );
        assert_eq!(e.steps, 2, "the verdict rests on the whole window");
        // After a reset the low rate is the new baseline.
        g.reset();
        for f in [0.2, 0.2, 0.3] {
            assert!(g.check(&cfg, &metrics(None, None, f)).is_ok());
        }
    }
}
