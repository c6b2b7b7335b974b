//! Supervised fine-tuning on collected trajectories: the cold start before RL
//! (DeepSeek-R1, arXiv 2501.12948: a little SFT on well-formed samples, then RL).
//!
//! An [`SftExample`] is a trajectory as the rollout produced it — token ids with the loss
//! mask (1 on policy-written tokens, 0 on prompt and inserted documents) — so the model is
//! trained on exactly the tokens it will later see in rollouts, and retrieved text never
//! carries loss. The loss is the negative log-likelihood averaged over all masked tokens of
//! the batch; batches are drawn with the same seeded, resumable order as RL
//! ([`TrainState::next_indices`](super::checkpoint::TrainState::next_indices)) and checkpoints use the same format, so `sleuth train --init`
//! can start RL from an SFT run.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::learner::Learner;
use super::loss::token_logprobs_entropy;
use super::{TrainConfig, TrainError};
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

/// Supervised fine-tuning state: the [`Learner`] (policy, optimizer, settings, progress) and
/// the examples. Of [`TrainConfig`], SFT reads `learning_rate`, `grad_clip`, `micro_batch`,
/// `micro_batch_tokens`, `share_prompt`, `warmup_steps`, the AdamW parameters, the seed and
/// `sft_stop_entropy`; `questions_per_step` is the number of sequences per step.
pub struct SftTrainer<B: AutodiffBackend> {
    /// The policy, its optimizer, settings and progress.
    pub learner: Learner<B>,
    data: Vec<SftExample>,
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
            learner: Learner::new(model, model_config, cfg, device),
            data,
        })
    }

    /// Whether the entropy stop rule (`sft_stop_entropy`) says the run should end after a step
    /// with these figures.
    pub fn should_stop(&self, m: &SftMetrics) -> bool {
        self.learner.cfg.sft_stop_entropy > 0.0
            && m.tokens > 0
            && m.entropy < self.learner.cfg.sft_stop_entropy
    }

    /// One optimizer step on the next `questions_per_step` examples: the negative
    /// log-likelihood of their policy tokens, averaged over all of them.
    pub fn step(&mut self) -> SftMetrics {
        let t0 = Instant::now();
        let l = &mut self.learner;
        let step = l.state.step + 1;
        let epoch = l.state.epoch;
        let idx = l
            .state
            .next_indices(self.data.len(), l.cfg.questions_per_step.max(1));
        // `next_indices` yields positions below `data.len()`.
        let batch: Vec<&SftExample> = idx.iter().filter_map(|&i| self.data.get(i)).collect();
        let total: usize = batch
            .iter()
            .map(|e| e.mask.iter().filter(|&&m| m == 1).count())
            .sum();
        let lr = l.cfg.lr_at(step);
        let mut metrics = SftMetrics {
            step,
            epoch,
            tokens: total,
            lr,
            ..Default::default()
        };
        if total > 0 {
            let (mut nll, mut entropy_sum) = (0.0, 0.0);
            let seqs: Vec<_> = batch
                .iter()
                .map(|e| (e.tokens.as_slice(), e.mask.as_slice(), e.prompt_len))
                .collect();
            let mut grads = l.gradients();
            for mb in l.micro_batches(&seqs) {
                let packed = mb.packed;
                let tokens = Tensor::<B, 2, Int>::from_inner(packed.tokens);
                let mask = Tensor::<B, 2>::from_inner(packed.mask);
                let scored = Tensor::<B, 1, Int>::from_inner(packed.scored);
                let (logp, ent) = token_logprobs_entropy(
                    &l.model,
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
                l.backward(&mut grads, loss);
            }
            metrics.grad_norm = l.apply(grads, lr).unwrap_or(0.0);
            metrics.loss = nll;
            metrics.entropy = entropy_sum / total as f64;
        }
        l.state.step = step;
        metrics.seconds = t0.elapsed().as_secs_f64();
        metrics.rss_peak_mib = super::metrics::rss_peak_mib();
        metrics
    }
}
