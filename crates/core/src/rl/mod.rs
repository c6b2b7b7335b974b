//! Reinforcement learning on the policy: trajectories → rewards → advantages → clipped
//! policy-gradient updates (DESIGN §5).
//!
//! Where each part lives:
//! - [`learner`]: what SFT and RL share — the policy, AdamW, progress, checkpoints, and one
//!   optimizer step accumulated over micro-batches; [`config`] its settings, [`error`] the one
//!   error of a run.
//! - [`sft`]: supervised fine-tuning on collected trajectories (the cold start);
//!   [`collect`] makes those trajectories (scripted or sampled, rejection-filtered).
//! - [`group`]: the group sampler (questions drawn, G rollouts each, rewards, dynamic
//!   sampling, retirement); [`advantage`] the GRPO / Dr. GRPO / Reinforce++ estimators;
//!   [`loss`] token log-probs, micro-batch packing and the clipped surrogate with KL;
//!   `update` one RL optimizer step from them; [`trainer`] one RL step that ties sampling,
//!   update, metrics and the collapse guard ([`guard`]) together.
//! - [`served`]: a served rollout engine (vLLM) that samples for the trainer and receives
//!   each new LoRA adapter.
//! - [`run`]: the step loop both trainers run (metrics lines, checkpoints in the
//!   background, resume); [`checkpoint`] the atomic checkpoint format; [`metrics`] the
//!   per-step figures.
//!
//! One rollout batch feeds exactly one optimizer step (gradients accumulated over
//! micro-batches), so the rollout policy π_old equals π_θ at update time: the ratio is 1 and
//! its gradient is the plain policy gradient. The clipped form is kept so that multi-epoch
//! updates can be added without changing the loss.

pub mod advantage;
pub mod checkpoint;
pub mod collect;
pub mod config;
pub mod error;
pub mod group;
pub mod guard;
pub mod learner;
pub mod loss;
pub mod metrics;
pub mod run;
pub mod served;
pub mod sft;
pub mod trainer;
mod update;

pub use advantage::{Algo, GroupNorm};
pub use config::TrainConfig;
pub use error::TrainError;
pub use group::Question;
pub use guard::GuardConfig;
pub use learner::Learner;
pub use loss::KlEstimator;
pub use metrics::{GuardEvent, StepMetrics};
pub use trainer::Trainer;
