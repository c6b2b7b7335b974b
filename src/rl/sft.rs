//! Supervised fine-tuning on collected trajectories: the cold start before RL
//! (DeepSeek-R1, arXiv 2501.12948: a little SFT on well-formed samples, then RL).
//!
//! An [`SftExample`] is a trajectory as the rollout produced it — token ids with the loss
//! mask (1 on policy-written tokens, 0 on prompt and inserted documents) — so the model is
//! trained on exactly the tokens it will later see in rollouts, and retrieved text never
//! carries loss. The loss is the negative log-likelihood averaged over all masked tokens of
//! the batch; batches are drawn with the same seeded, resumable order as RL
//! ([`TrainState::next_indices`]) and checkpoints use the same format, so `sleuth train --init`
//! can start RL from an SFT run.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::loss::{pack, plan_micro_batches, token_logprobs_entropy};
use super::trainer::{adamw, clip_global_norm, Optim, TrainConfig, TrainError};
use crate::model::{Llama, LlamaConfig};

/// One training sequence: prompt (without demonstrations) and the policy's response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// The question it answers.
    pub question: String,
    /// Token ids, prompt first.
    pub tokens: Vec<u32>,
    /// 1 on tokens the policy wrote, 0 on prompt and inserted documents.
    pub mask: Vec<u8>,
    /// Number of prompt tokens.
    pub prompt_len: usize,
}

/// Errors reading SFT data.
#[derive(Debug, thiserror::Error)]
pub enum SftDataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a valid example.
    #[error("{path}:{line}: {reason}")]
    Bad {
        /// File.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads SFT examples from JSONL (as written by `sleuth collect`), checking that tokens and
/// mask agree in length.
///
/// # Errors
/// [`SftDataError`] naming the file and, for a bad row, the line.
pub fn read_examples(path: &Path) -> Result<Vec<SftExample>, SftDataError> {
    let io = |source| SftDataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| SftDataError::Bad {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let ex: SftExample = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if ex.tokens.len() != ex.mask.len() || ex.prompt_len > ex.tokens.len() {
            return Err(bad(format!(
                "{} tokens, {} mask entries, prompt_len {}",
                ex.tokens.len(),
                ex.mask.len(),
                ex.prompt_len
            )));
        }
        out.push(ex);
    }
    Ok(out)
}

/// Appends `ex` as one JSON line.
///
/// # Errors
/// The writer's I/O error.
pub fn write_example(w: &mut impl Write, ex: &SftExample) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, ex)?;
    w.write_all(b"\n")
}

/// One line of an SFT run's `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SftMetrics {
    /// Optimizer step just taken (1-based).
    pub step: usize,
    /// Passes over the data completed before this step.
    pub epoch: usize,
    /// Mean negative log-likelihood per policy token (nats).
    pub loss: f64,
    /// Policy tokens in the batch.
    pub tokens: usize,
    /// Mean policy entropy over the batch's policy tokens (nats per token, temperature 1),
    /// measured in the step's forward pass, before the update. `[train] sft_stop_entropy`
    /// stops the run when it falls below that bound.
    #[serde(default)]
    pub entropy: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Seconds for the step.
    pub seconds: f64,
    /// Peak resident memory of the process so far, MiB (Linux `VmHWM`; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_peak_mib: Option<f64>,
}

/// Supervised fine-tuning state: policy, optimizer, data, progress.
pub struct SftTrainer<B: AutodiffBackend> {
    /// The policy being trained.
    pub model: Llama<B>,
    /// Its architecture (saved with checkpoints).
    pub model_config: LlamaConfig,
    optim: Optim<B>,
    /// Optimizer settings (`learning_rate`, `grad_clip`, `micro_batch`, `warmup_steps`,
    /// AdamW parameters) and the seed; `questions_per_step` is the number of sequences per
    /// step.
    pub cfg: TrainConfig,
    data: Vec<SftExample>,
    /// Progress (saved in checkpoints).
    pub state: TrainState,
    device: B::Device,
}

impl<B: AutodiffBackend> SftTrainer<B> {
    /// Assembles an SFT run.
    ///
    /// # Errors
    /// [`TrainError::NoData`] for an empty example list.
    pub fn new(
        model: Llama<B>,
        model_config: LlamaConfig,
        cfg: TrainConfig,
        data: Vec<SftExample>,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        if data.is_empty() {
            return Err(TrainError::NoData);
        }
        Ok(Self {
            model: model.with_canonical_param_ids(),
            model_config,
            optim: adamw(&cfg),
            state: TrainState {
                seed: cfg.seed,
                ..Default::default()
            },
            cfg,
            data,
            device,
        })
    }

    /// Restores model, optimizer and progress from `run`'s checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn resume_from(&mut self, run: &Path) -> Result<(), TrainError> {
        self.state = checkpoint::load_state(run)?;
        self.model = checkpoint::load_model(run, self.model.clone(), &self.device)?;
        self.optim = checkpoint::load_optimizer(run, adamw(&self.cfg), &self.device)?;
        Ok(())
    }

    /// Saves a checkpoint into `run` (same format as RL checkpoints).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn save(&self, run: &Path) -> Result<(), TrainError> {
        checkpoint::save(
            run,
            &self.model,
            &self.optim,
            &self.model_config,
            &self.state,
        )?;
        Ok(())
    }

    /// The checkpoint [`Self::save`] would write, copied out so that another thread can write
    /// it while training goes on ([`checkpoint::Snapshot`]).
    pub fn snapshot(&self) -> checkpoint::Snapshot<B> {
        checkpoint::Snapshot::of(&self.model, &self.optim, &self.model_config, &self.state)
    }

    /// Whether the entropy stop rule (`sft_stop_entropy`) says the run should end after a step
    /// with these figures.
    pub fn should_stop(&self, m: &SftMetrics) -> bool {
        self.cfg.sft_stop_entropy > 0.0 && m.tokens > 0 && m.entropy < self.cfg.sft_stop_entropy
    }

    /// One optimizer step on the next `questions_per_step` examples.
    pub fn step(&mut self) -> SftMetrics {
        let t0 = Instant::now();
        let step = self.state.step + 1;
        let epoch = self.state.epoch;
        let idx = self
            .state
            .next_indices(self.data.len(), self.cfg.questions_per_step.max(1));
        // `next_indices` yields positions below `data.len()`.
        let batch: Vec<&SftExample> = idx.iter().filter_map(|&i| self.data.get(i)).collect();
        let total: usize = batch
            .iter()
            .map(|e| e.mask.iter().filter(|&&m| m == 1).count())
            .sum();
        let lr = self.cfg.lr_at(step);
        let mut metrics = SftMetrics {
            step,
            epoch,
            tokens: total,
            lr,
            ..Default::default()
        };
        if total > 0 {
            let mut accum = GradientsAccumulator::<Llama<B>>::new();
            let (mut nll, mut entropy_sum) = (0.0, 0.0);
            let share = self.cfg.share_prompt;
            let plan = plan_micro_batches(
                &batch
                    .iter()
                    .map(|e| (&e.tokens[..], e.prompt_len))
                    .collect::<Vec<_>>(),
                share,
                self.cfg.micro_batch,
                self.cfg.micro_batch_tokens,
            );
            for chunk in plan {
                // The plan holds positions in `batch`.
                let seqs: Vec<_> = chunk
                    .iter()
                    .filter_map(|&i| batch.get(i))
                    .map(|e| (e.tokens.as_slice(), e.mask.as_slice(), e.prompt_len))
                    .collect();
                let packed = pack::<B::InnerBackend>(&seqs, share, &self.device);
                let tokens = Tensor::<B, 2, Int>::from_inner(packed.tokens);
                let mask = Tensor::<B, 2>::from_inner(packed.mask);
                let scored = Tensor::<B, 1, Int>::from_inner(packed.scored);
                let (logp, ent) = token_logprobs_entropy(
                    &self.model,
                    tokens,
                    packed.start,
                    packed.shared,
                    1.0,
                    true,
                    Some(scored),
                );
                if let Some(e) = ent {
                    entropy_sum += (e * mask.clone().detach())
                        .sum()
                        .into_scalar()
                        .elem::<f64>();
                }
                let loss = (logp * mask).sum().neg().div_scalar(total as f64);
                nll += loss.clone().detach().into_scalar().elem::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &self.model);
                accum.accumulate(&self.model, grads);
            }
            let mut grads = accum.grads();
            metrics.grad_norm = clip_global_norm::<B>(&self.model, &mut grads, self.cfg.grad_clip);
            metrics.loss = nll;
            metrics.entropy = entropy_sum / total as f64;
            self.model = self.optim.step(lr, self.model.clone(), grads);
        }
        self.state.step = step;
        metrics.seconds = t0.elapsed().as_secs_f64();
        metrics.rss_peak_mib = super::metrics::rss_peak_mib();
        metrics
    }
}
