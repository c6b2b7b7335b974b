//! The part of training that SFT and RL share: a policy, its optimizer, its progress, and one
//! optimizer step built from micro-batches.
//!
//! A [`Learner`] owns the policy on the autodiff backend, AdamW (learning rate passed per
//! step, so warmup needs no scheduler object), the checkpointed [`TrainState`] and the
//! [`TrainConfig`]. A step is: [`Learner::micro_batches`] plans and packs the step's sequences
//! (at most `micro_batch` sequences and `micro_batch_tokens` padded tokens per pass, the shared
//! prompt run once when `share_prompt`), the caller computes each micro-batch's loss with
//! [`Learner::model`] and hands it to [`Learner::backward`], which accumulates the gradients,
//! and [`Learner::apply`] clips their global norm and takes the AdamW step. What differs
//! between SFT (negative log-likelihood) and RL (clipped surrogate with advantages, KL,
//! importance weights; `rl/update.rs`) is only the loss, so only the loss lives in the
//! callers.
//!
//! Checkpoints (`save`, `snapshot`, `resume_from`) are written and read here, so SFT and RL
//! runs share one format and `sleuth train --init` can start RL from an SFT run.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::checkpoint::{self, Optim, TrainState};
use super::loss::{pack, plan_micro_batches, PackedBatch};
use super::{TrainConfig, TrainError};
use crate::model::fused::Precision;
use crate::model::{Llama, LlamaConfig};

/// A policy under training with its optimizer and progress (module docs).
pub struct Learner<B: AutodiffBackend> {
    /// The policy being trained.
    pub model: Llama<B>,
    /// Its architecture (saved with checkpoints).
    pub model_config: LlamaConfig,
    optim: Optim<B>,
    /// Training settings.
    pub cfg: TrainConfig,
    /// Progress (saved in checkpoints).
    pub state: TrainState,
    device: B::Device,
    /// Whether a LoRA run's frozen base is already on disk for the run this process writes
    /// (written with its first checkpoint, or read by [`Self::resume_from`]); until then each
    /// checkpoint carries it ([`checkpoint::Snapshot::of`]).
    base_saved: std::sync::atomic::AtomicBool,
}

/// One planned forward/backward pass: which of the step's sequences it holds (positions in
/// the slice given to [`Learner::micro_batches`]) and those sequences packed on the
/// inference backend.
pub struct MicroBatch<B: Backend> {
    /// Positions of the pass's sequences in the step's sequence list.
    pub rows: Vec<usize>,
    /// The sequences packed: tokens `[b, t]`, mask and scored positions over the targets.
    pub packed: PackedBatch<B>,
}

/// Gradients accumulated over a step's micro-batches ([`Learner::backward`]).
pub struct Gradients<B: AutodiffBackend> {
    accum: GradientsAccumulator<Llama<B>>,
    passes: usize,
}

impl<B: AutodiffBackend> Learner<B> {
    /// Wraps an initial policy; the optimizer starts empty and progress at step 0 with the
    /// config's seed. The policy's products run in the config's `precision` where this CPU
    /// can ([`Precision::effective`]; a warning says when `bf16` falls back to f32). With
    /// `[train] lora` the base is frozen and adapters are attached ([`Llama::with_lora`],
    /// seeded by the config's seed; matching adapters the policy already has are trained
    /// further); without it any adapters are folded into the weights and every weight trains.
    pub fn new(
        model: Llama<B>,
        model_config: LlamaConfig,
        cfg: TrainConfig,
        device: B::Device,
    ) -> Self {
        let model = match &cfg.lora {
            Some(lora) => model.with_lora(lora, cfg.seed),
            None => model.merge_lora(),
        };
        Self {
            model: model
                .with_canonical_param_ids()
                .with_precision(precision(&cfg)),
            model_config,
            optim: adamw(&cfg),
            state: TrainState {
                seed: cfg.seed,
                ..Default::default()
            },
            cfg,
            device,
            base_saved: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What trains, for a run's first log line: `"all 134.5 M weights"` or
    /// `"LoRA r = 8, alpha 16 on q_proj, …: 4.9 M adapter weights (base frozen)"`.
    pub fn trained_weights(&self) -> String {
        let m = |n: usize| format!("{:.1} M", n as f64 / 1e6);
        match self.model.lora_config() {
            Some(l) => format!(
                "LoRA r = {}, alpha {} on {}: {} adapter weights (base frozen)",
                l.rank,
                l.alpha,
                l.targets
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                m(self.model.lora_params())
            ),
            None => format!("all {} weights", m(self.model.num_params())),
        }
    }

    /// The device the policy lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Restores model, optimizer and progress from `run`'s checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn resume_from(&mut self, run: &Path) -> Result<(), TrainError> {
        let state = checkpoint::load_state(run)?;
        let (saved, now) = (checkpoint::load_lora(run)?, self.model.lora_config());
        if saved != now {
            let say = |l: &Option<crate::model::LoraConfig>| match l {
                Some(l) => format!("LoRA rank {} alpha {} on {:?}", l.rank, l.alpha, l.targets),
                None => "every weight (no LoRA)".to_string(),
            };
            return Err(TrainError::Checkpoint(checkpoint::CheckpointError::Record {
                path: checkpoint::dir(run),
                message: format!(
                    "this run trained {}, but [train] lora now asks for {}: resume with the run's own settings, or start a new run with --init",
                    say(&saved),
                    say(&now)
                ),
            }));
        }
        let model = checkpoint::load_model(run, self.model.clone(), &self.device)?;
        self.optim = checkpoint::load_optimizer(run, adamw(&self.cfg), &self.device)?;
        self.model = model;
        self.state = state;
        self.base_saved.store(
            checkpoint::is_adapter_only(run),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// Saves a checkpoint of model, optimizer, architecture and progress into `run`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn save(&self, run: &Path) -> Result<(), TrainError> {
        self.snapshot().write(run)?;
        Ok(())
    }

    /// The checkpoint [`Self::save`] would write, copied out so that another thread can write
    /// it while training goes on ([`checkpoint::Snapshot`]).
    pub fn snapshot(&self) -> checkpoint::Snapshot<B> {
        let with_base = !self
            .base_saved
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        checkpoint::Snapshot::of(
            &self.model,
            &self.optim,
            &self.model_config,
            &self.state,
            with_base,
        )
    }

    /// Replaces the weights and restarts AdamW's moments (the collapse guard's rollback).
    pub fn restore(&mut self, model: Llama<B>) {
        self.model = model.with_precision(precision(&self.cfg));
        self.optim = adamw(&self.cfg);
    }

    /// Plans and packs a step's sequences `(tokens, loss mask, prompt length)` into
    /// micro-batches ([`plan_micro_batches`], [`pack`]) on the inference backend.
    pub fn micro_batches(
        &self,
        seqs: &[(&[u32], &[u8], usize)],
    ) -> Vec<MicroBatch<B::InnerBackend>> {
        let share = self.cfg.share_prompt;
        let lens: Vec<(&[u32], usize)> = seqs.iter().map(|&(t, _, p)| (t, p)).collect();
        let device = self.model.embed_tokens.device();
        plan_micro_batches(
            &lens,
            share,
            self.cfg.micro_batch,
            self.cfg.micro_batch_tokens,
        )
        .into_iter()
        .map(|rows| {
            // The plan holds positions in `seqs`.
            let chunk: Vec<_> = rows.iter().filter_map(|&i| seqs.get(i).copied()).collect();
            let packed = pack::<B::InnerBackend>(&chunk, share, &device);
            MicroBatch { rows, packed }
        })
        .collect()
    }

    /// An empty gradient accumulator for one step.
    pub fn gradients(&self) -> Gradients<B> {
        Gradients {
            accum: GradientsAccumulator::new(),
            passes: 0,
        }
    }

    /// Back-propagates one micro-batch's `loss` (already divided by the step's token count)
    /// and adds its gradients to `grads`.
    pub fn backward(&self, grads: &mut Gradients<B>, loss: Tensor<B, 1>) {
        let g = GradientsParams::from_grads(loss.backward(), &self.model);
        grads.accum.accumulate(&self.model, g);
        grads.passes += 1;
    }

    /// Clips the accumulated gradients' global L2 norm to `grad_clip` and takes one AdamW step
    /// at learning rate `lr`. Returns the norm before clipping, or `None` (and changes nothing)
    /// when no micro-batch was back-propagated.
    pub fn apply(&mut self, mut grads: Gradients<B>, lr: f64) -> Option<f64> {
        if grads.passes == 0 {
            return None;
        }
        let mut grads = grads.accum.grads();
        let norm = clip_global_norm::<B>(&self.model, &mut grads, self.cfg.grad_clip);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        Some(norm)
    }
}

/// The precision `cfg` asks for, as this process can run it (warns when `bf16` falls back).
fn precision(cfg: &TrainConfig) -> Precision {
    let p = cfg.precision.effective();
    if p != cfg.precision {
        tracing::warn!(
            "[train] precision = \"bf16\" needs AMX-BF16, which this CPU (or kernel) does not offer: training in f32"
        );
    }
    p
}

/// AdamW with the config's betas, epsilon and weight decay (the learning rate is passed per
/// step, so warmup needs no scheduler object).
fn adamw<B: AutodiffBackend>(cfg: &TrainConfig) -> Optim<B> {
    AdamWConfig::new()
        .with_beta_1(cfg.beta1)
        .with_beta_2(cfg.beta2)
        .with_epsilon(cfg.adam_eps)
        .with_weight_decay(cfg.weight_decay)
        .init::<B, Llama<B>>()
}

/// Visits every float parameter's gradient to sum squares, or to scale it.
struct GradNorm<'a> {
    grads: &'a mut GradientsParams,
    scale: Option<f64>,
    sum_sq: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        match self.scale {
            None => {
                if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                    self.sum_sq += sum_of_squares(&g.into_data());
                }
            }
            Some(scale) => {
                if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                    self.grads
                        .register::<B::InnerBackend, D>(param.id, g.mul_scalar(scale));
                }
            }
        }
    }
}

/// `Σ x²` over a gradient's values, summed in f64 in index order: the same bits on every run.
/// burn-flex's parallel `sum` splits its work as rayon's threads steal it, so its f32 result
/// varied in the last bits between two runs of one seed (grad-norm 5.613879648 vs 5.613879606
/// at step 2 of the main job's first SFT phase), and through the clipping scale every weight
/// after it did too.
fn sum_of_squares(data: &burn::tensor::TensorData) -> f64 {
    match data.as_slice::<f32>() {
        Ok(v) => v.iter().map(|&x| f64::from(x) * f64::from(x)).sum(),
        Err(_) => data.iter::<f64>().map(|x| x * x).sum(),
    }
}

/// Clips the global L2 norm of `grads` to `max_norm` (0 disables); returns the norm before
/// clipping. burn's built-in clipping is per tensor; RL recipes clip the global norm.
fn clip_global_norm<B: AutodiffBackend>(
    model: &Llama<B>,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let mut v = GradNorm {
        grads,
        scale: None,
        sum_sq: 0.0,
    };
    model.visit(&mut v);
    let norm = v.sum_sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let mut v = GradNorm {
            grads,
            scale: Some(max_norm / (norm + 1e-6)),
            sum_sq: 0.0,
        };
        model.visit(&mut v);
    }
    norm
}
