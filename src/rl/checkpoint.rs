//! Resumable checkpoints, written atomically.
//!
//! A checkpoint is a folder `checkpoint/` inside the run directory holding `model.mpk`
//! (burn's named MessagePack record, f32), `optimizer.mpk` (AdamW moments), `model_config.json`
//! (the architecture, so evaluation can rebuild the model without the original file) and
//! `state.json` ([`TrainState`]: step, data position, seed). It is written to
//! `checkpoint.tmp/` and renamed into place, so a run killed mid-write keeps its previous
//! checkpoint intact.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::{Llama, LlamaConfig};

/// Progress counters saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Passes over the training questions completed.
    pub epoch: usize,
    /// Index of the next question within the current epoch's order.
    pub position: usize,
    /// Seed of the run (question order and sampling derive from it and the step).
    pub seed: u64,
    /// Multiplier on the configured learning rate; the collapse guard halves it at each trip
    /// ([`super::guard`]). 1.0 in checkpoints written before the guard existed.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Collapse-guard trips so far.
    #[serde(default)]
    pub guard_trips: usize,
    /// Per training question (by index in the data): how often it was sampled and solved, and
    /// whether it was retired (`[train] retire_after`). Empty in checkpoints written before
    /// pass rates were tracked; grown on demand.
    #[serde(default)]
    pub pass: Vec<PassRecord>,
}

/// One training question's record over a run (DAPO / DeepResearcher-style difficulty
/// tracking): groups drawn, samples drawn, samples solved (cover-EM correct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PassRecord {
    /// Groups (rollouts of G samples) drawn for the question.
    pub groups: usize,
    /// Samples drawn.
    pub samples: usize,
    /// Samples whose answer was cover-EM correct.
    pub solved: usize,
    /// Retired: always or never solved after `retire_after` groups; no longer drawn.
    pub retired: bool,
}

impl PassRecord {
    /// Solved share of the samples (0 when never sampled).
    pub fn pass_rate(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.solved as f64 / self.samples as f64
        }
    }
}

fn one() -> f64 {
    1.0
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            step: 0,
            epoch: 0,
            position: 0,
            seed: 0,
            lr_scale: 1.0,
            guard_trips: 0,
            pass: Vec::new(),
        }
    }
}

impl TrainState {
    /// The data order of `epoch` over `len` items: a shuffle seeded by (`seed`, `epoch`).
    pub fn order(&self, epoch: usize, len: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..len).collect();
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        idx.shuffle(&mut rng);
        idx
    }

    /// The next `n` item indices (of `len`), advancing `position` and `epoch`; a resumed run
    /// continues exactly where the saved one stopped.
    pub fn next_indices(&mut self, len: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if len == 0 {
            return out;
        }
        let mut order = self.order(self.epoch, len);
        while out.len() < n {
            if self.position >= order.len() {
                self.epoch += 1;
                self.position = 0;
                order = self.order(self.epoch, len);
            }
            out.push(order[self.position]);
            self.position += 1;
        }
        out
    }
}

/// Errors reading or writing checkpoints; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path at fault.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// burn could not (de)serialize a record.
    #[error("{path}: {message}")]
    Record {
        /// Path at fault.
        path: PathBuf,
        /// burn's error text.
        message: String,
    },
    /// A JSON file is malformed.
    #[error("{path}: {source}")]
    Json {
        /// Path at fault.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint folder of run directory `run`.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// Whether `run` holds a complete checkpoint.
pub fn exists(run: &Path) -> bool {
    dir(run).join("state.json").is_file()
}

/// Writes model, optimizer, config and state to `run/checkpoint/` atomically.
///
/// # Errors
/// [`CheckpointError`] naming the file that failed.
pub fn save<B, O>(
    run: &Path,
    model: &Llama<B>,
    optim: &O,
    config: &LlamaConfig,
    state: &TrainState,
) -> Result<(), CheckpointError>
where
    B: AutodiffBackend,
    O: Optimizer<Llama<B>, B>,
{
    let tmp = run.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let rec = recorder();
    let model_path = tmp.join("model");
    model
        .clone()
        .save_file(model_path.clone(), &rec)
        .map_err(|e| CheckpointError::Record {
            path: model_path.clone(),
            message: e.to_string(),
        })?;
    let optim_path = tmp.join("optimizer");
    Recorder::<B>::record(&rec, optim.to_record(), optim_path.clone()).map_err(|e| {
        CheckpointError::Record {
            path: optim_path.clone(),
            message: e.to_string(),
        }
    })?;
    let cfg_path = tmp.join("model_config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(config).expect("config serializes"),
    )
    .map_err(io(&cfg_path))?;
    let state_path = tmp.join("state.json");
    std::fs::write(
        &state_path,
        serde_json::to_vec_pretty(state).expect("state serializes"),
    )
    .map_err(io(&state_path))?;
    let final_dir = dir(run);
    let old = run.join("checkpoint.old");
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&tmp))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Reads the architecture saved with a checkpoint.
///
/// # Errors
/// [`CheckpointError`] naming the file.
pub fn load_config(run: &Path) -> Result<LlamaConfig, CheckpointError> {
    let path = dir(run).join("model_config.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

/// Reads the saved progress counters.
///
/// # Errors
/// [`CheckpointError`] naming the file.
pub fn load_state(run: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir(run).join("state.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

/// Loads the saved weights into `model` (which must have the saved architecture).
///
/// # Errors
/// [`CheckpointError::Record`] when the file is missing or does not match.
pub fn load_model<B: burn::tensor::backend::Backend>(
    run: &Path,
    model: Llama<B>,
    device: &B::Device,
) -> Result<Llama<B>, CheckpointError> {
    let path = dir(run).join("model");
    model
        .load_file(path.clone(), &recorder(), device)
        .map_err(|e| CheckpointError::Record {
            path,
            message: e.to_string(),
        })
}

/// A model of the architecture saved with the checkpoint, holding its weights: `(model,
/// architecture)`. What every command that starts from a run directory (`--checkpoint`,
/// `serve`, `export`) loads.
///
/// # Errors
/// [`load_config`]'s and [`load_model`]'s.
pub fn load_saved<B: burn::tensor::backend::Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(Llama<B>, LlamaConfig), CheckpointError> {
    let arch = load_config(run)?;
    let model = load_model(run, Llama::<B>::random(&arch, device), device)?;
    Ok((model, arch))
}

/// Loads the saved optimizer state into `optim`.
///
/// # Errors
/// [`CheckpointError::Record`] when the file is missing or does not match.
pub fn load_optimizer<B, O>(run: &Path, optim: O, device: &B::Device) -> Result<O, CheckpointError>
where
    B: AutodiffBackend,
    O: Optimizer<Llama<B>, B>,
{
    let path = dir(run).join("optimizer");
    let record = Recorder::<B>::load(&recorder(), path.clone(), device).map_err(|e| {
        CheckpointError::Record {
            path,
            message: e.to_string(),
        }
    })?;
    Ok(optim.load_record(record))
}
