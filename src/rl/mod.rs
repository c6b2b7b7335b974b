//! Reinforcement learning on the policy: trajectories → rewards → advantages → clipped
//! policy-gradient updates (DESIGN §5).
//!
//! [`advantage`] holds GRPO and Reinforce++ estimators (host-side, per sample or per token);
//! [`loss`] the token log-prob computation and the clipped surrogate with k3 KL;
//! [`checkpoint`] atomic, resumable checkpoints; [`guard`] the collapse guard (rollback and
//! learning-rate cut); [`metrics`] the per-step figures both the trainer and the guard use;
//! [`trainer`] one RL step that ties rollout, dynamic sampling, reward, update and metrics
//! together.
//!
//! One rollout batch feeds exactly one optimizer step (gradients accumulated over
//! micro-batches), so the rollout policy π_old equals π_θ at update time: the ratio is 1 and
//! its gradient is the plain policy gradient. The clipped form is kept so that multi-epoch
//! updates can be added without changing the loss.

pub mod advantage;
pub mod checkpoint;
pub mod collect;
pub mod guard;
pub mod loss;
pub mod metrics;
pub mod run;
pub mod sft;
pub mod trainer;

pub use advantage::{Algo, GroupNorm};
pub use guard::GuardConfig;
pub use loss::KlEstimator;
pub use metrics::{GuardEvent, StepMetrics};
pub use trainer::{TrainConfig, TrainError, Trainer};
