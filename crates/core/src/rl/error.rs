//! The error that stops a training run (SFT or RL): the one error enum of `rl`'s boundary.

use super::checkpoint::CheckpointError;

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Rollout failed.
    #[error(transparent)]
    Rollout(#[from] crate::env::rollout::RolloutError),
    /// Checkpoint I/O failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The training set is empty.
    #[error("no training questions")]
    NoData,
    /// The run directory already holds a run and `--resume` was not given.
    #[error("{0} already holds a run; pass --resume to continue it or choose another --out")]
    AlreadyExists(std::path::PathBuf),
    /// The rollout's sampling settings cannot be trained on.
    #[error("{reason}")]
    Sampling {
        /// Which setting and why.
        reason: String,
    },
    /// The served rollout engine (`[rollout] engine = "openai"`) cannot be used: a setting
    /// it needs, an adapter it refused, a folder that could not be written.
    #[error("{reason}")]
    Engine {
        /// What failed, naming the server or path.
        reason: String,
    },
    /// The collapse guard tripped `max_trips` times.
    #[error("collapse guard tripped {trips} times (max_trips); last: {reason}. Lower [train].learning_rate or loosen [train.guard]")]
    Collapsed {
        /// Trips so far.
        trips: usize,
        /// The last tripped bound.
        reason: String,
    },
}
