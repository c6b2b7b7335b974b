//! The training loop: rollout → reward → advantages → accumulated update → metrics →
//! checkpoint.
//!
//! [`Trainer`] owns the policy (on the autodiff backend), an optional frozen reference copy
//! (inference backend), AdamW, the retriever, the reward rule and the question order. Each
//! [`Trainer::step`] draws `questions_per_step` questions, runs `G` episodes each, scores
//! them, and takes one optimizer step whose gradient is the masked-token mean over the whole
//! batch (micro-batches of `micro_batch` sequences are accumulated). The step's figures come
//! back as [`StepMetrics`], one JSON line of `metrics.jsonl`.

use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::advantage::{self, Algo};
use super::checkpoint::{self, CheckpointError, TrainState};
use super::guard::{CollapseGuard, GuardConfig, GuardEvent};
use super::loss::{
    pack, policy_loss, token_logprobs, token_logprobs_entropy, KlEstimator, LossInputs, PackedBatch,
};
use crate::env::{rollout, Episode, PromptConfig, RolloutConfig};
use crate::model::{Llama, LlamaConfig, Sampler, Tokenizer};
use crate::reward::RewardFn;
use crate::search::Retriever;

/// Training hyper-parameters (`[train]` in an env config). Defaults stated once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Advantage estimator. Default `grpo`.
    pub algo: Algo,
    /// Questions per optimizer step (each sampled G times). Default 2.
    pub questions_per_step: usize,
    /// Sequences per forward/backward pass; gradients are accumulated. Default 2.
    pub micro_batch: usize,
    /// AdamW learning rate (after warmup). Default 1e-6.
    pub learning_rate: f64,
    /// Linear warmup length in steps. Default 0.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay. Default 0.01.
    pub weight_decay: f32,
    /// AdamW β1. Default 0.9.
    pub beta1: f32,
    /// AdamW β2. Default 0.999.
    pub beta2: f32,
    /// AdamW ε. Default 1e-8.
    pub adam_eps: f32,
    /// Global gradient-norm clip; 0 disables. Default 1.0.
    pub grad_clip: f64,
    /// PPO clip range ε_c. Default 0.2.
    pub clip_eps: f64,
    /// KL coefficient β (GRPO: loss term; Reinforce++: in the reward). Default 0.0.
    pub kl_coef: f64,
    /// KL estimator for the GRPO loss term and the logged `kl`. Default `k3`. (Reinforce++
    /// puts the per-token log-ratio, i.e. k1, into the reward, as its paper defines.)
    pub kl_estimator: KlEstimator,
    /// Keep a frozen reference model and log KL even when `kl_coef` is 0. Default true.
    pub track_kl: bool,
    /// Save a checkpoint every this many steps (and at the end). Default 1.
    pub checkpoint_every: usize,
    /// Seed for question order and sampling. Default 0.
    pub seed: u64,
    /// Collapse guard bounds (`[train.guard]`); see [`super::guard`].
    pub guard: GuardConfig,
}

impl TrainConfig {
    /// Learning rate at optimizer step `step` (1-based): linear warmup over `warmup_steps`,
    /// then constant.
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            self.learning_rate * step as f64 / self.warmup_steps as f64
        } else {
            self.learning_rate
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            algo: Algo::Grpo,
            questions_per_step: 2,
            micro_batch: 2,
            learning_rate: 1e-6,
            warmup_steps: 0,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            clip_eps: 0.2,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            track_kl: true,
            checkpoint_every: 1,
            seed: 0,
            guard: GuardConfig::default(),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step just taken (1-based).
    pub step: usize,
    /// Mean scalar reward.
    pub reward_mean: f64,
    /// Standard deviation of the reward over the batch.
    pub reward_std: f64,
    /// Mean answer component of the reward.
    pub reward_answer: f64,
    /// Mean retrieval-format component.
    pub reward_retrieval_format: f64,
    /// Mean answer-format component.
    pub reward_answer_format: f64,
    /// Mean format penalty.
    pub reward_penalty: f64,
    /// Fraction of episodes whose format checks all hold.
    pub format_ok_rate: f64,
    /// Fraction of episodes that closed `</answer>`.
    pub finished_rate: f64,
    /// Mean exact match of the predictions.
    pub em: f64,
    /// Mean cover-EM.
    pub cover_em: f64,
    /// Mean token F1.
    pub f1: f64,
    /// Mean searches per episode.
    pub searches_mean: f64,
    /// Mean policy tokens per episode.
    pub response_tokens_mean: f64,
    /// Mean KL estimate (`kl_estimator`) to the reference over the policy tokens of the micro-batches that carried
    /// gradient; `null` without a reference model or when no micro-batch carried gradient
    /// (all advantages zero), since then no forward pass ran.
    pub kl: Option<f64>,
    /// Mean policy entropy (nats) over the same tokens as `kl`; `null` when no pass ran.
    pub entropy: Option<f64>,
    /// Mean loss per policy token.
    pub loss: f64,
    /// Fraction of policy tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Episodes in the batch (questions × G).
    pub episodes: usize,
    /// Seconds generating (prefill + decode), excluding search.
    pub seconds_generate: f64,
    /// Seconds in the retriever.
    pub seconds_search: f64,
    /// Seconds of the whole rollout phase (generate + search + bookkeeping).
    pub seconds_rollout: f64,
    /// Seconds computing rewards.
    pub seconds_reward: f64,
    /// Seconds in reference/old log-probs, backward passes and the optimizer step.
    pub seconds_update: f64,
    /// Policy tokens sampled per rollout second.
    pub tokens_per_s: f64,
    /// Set when the collapse guard tripped at this step: why, which weights it restored, and
    /// the learning-rate scale from now on. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardEvent>,
}

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
    /// The collapse guard tripped `max_trips` times.
    #[error("collapse guard tripped {trips} times (max_trips); last: {reason}. Lower [train].learning_rate or loosen [train.guard]")]
    Collapsed {
        /// Trips so far.
        trips: usize,
        /// The last tripped bound.
        reason: String,
    },
}

/// A question with its gold answers.
#[derive(Debug, Clone)]
pub struct Question {
    /// Question text.
    pub question: String,
    /// Acceptable answers.
    pub answers: Vec<String>,
}

pub(crate) type Optim<B> = OptimizerAdaptor<AdamW, Llama<B>, B>;
type OptimRecord<B> = <Optim<B> as Optimizer<Llama<B>, B>>::Record;

/// Policy and optimizer moments as they were after optimizer step `step` (cheap: burn
/// tensors are reference-counted and updates allocate new ones).
struct Snapshot<B: AutodiffBackend> {
    model: Llama<B>,
    optim: OptimRecord<B>,
    step: usize,
}

/// AdamW with the config's betas, epsilon and weight decay (the learning rate is passed per
/// step, so warmup needs no scheduler object).
pub(crate) fn adamw<B: AutodiffBackend>(cfg: &TrainConfig) -> Optim<B> {
    AdamWConfig::new()
        .with_beta_1(cfg.beta1)
        .with_beta_2(cfg.beta2)
        .with_epsilon(cfg.adam_eps)
        .with_weight_decay(cfg.weight_decay)
        .init::<B, Llama<B>>()
}

/// Everything a training run holds; see the module docs.
pub struct Trainer<B: AutodiffBackend> {
    /// The policy being trained.
    pub model: Llama<B>,
    /// Its architecture (saved with checkpoints).
    pub model_config: LlamaConfig,
    reference: Option<Llama<B::InnerBackend>>,
    optim: Optim<B>,
    tokenizer: Tokenizer,
    retriever: Box<dyn Retriever>,
    reward: Box<dyn RewardFn>,
    /// Prompt template.
    pub prompt: PromptConfig,
    /// Rollout settings.
    pub rollout: RolloutConfig,
    /// Training settings.
    pub cfg: TrainConfig,
    data: Vec<Question>,
    /// Progress (saved in checkpoints).
    pub state: TrainState,
    device: B::Device,
    guard: CollapseGuard,
    /// The newest weights whose figures passed the guard.
    last_good: Option<Snapshot<B>>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Assembles a trainer around an initial policy.
    ///
    /// # Errors
    /// [`TrainError::NoData`] for an empty question list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Llama<B>,
        model_config: LlamaConfig,
        tokenizer: Tokenizer,
        retriever: Box<dyn Retriever>,
        reward: Box<dyn RewardFn>,
        prompt: PromptConfig,
        rollout: RolloutConfig,
        cfg: TrainConfig,
        data: Vec<Question>,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        if data.is_empty() {
            return Err(TrainError::NoData);
        }
        let reference = (cfg.track_kl || cfg.kl_coef != 0.0).then(|| model.valid());
        let optim = adamw(&cfg);
        let state = TrainState {
            seed: cfg.seed,
            ..Default::default()
        };
        Ok(Self {
            model,
            model_config,
            reference,
            optim,
            tokenizer,
            retriever,
            reward,
            prompt,
            rollout,
            cfg,
            data,
            state,
            device,
            guard: CollapseGuard::default(),
            last_good: None,
        })
    }

    /// Restores model, optimizer and progress from `run`'s checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn resume_from(&mut self, run: &std::path::Path) -> Result<(), TrainError> {
        let state = checkpoint::load_state(run)?;
        let model = checkpoint::load_model(run, self.model.clone(), &self.device)?;
        let optim = adamw(&self.cfg);
        self.optim = checkpoint::load_optimizer(run, optim, &self.device)?;
        self.model = model;
        self.state = state;
        self.guard.reset();
        self.last_good = None;
        Ok(())
    }

    /// Saves a checkpoint of the current state into `run`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn save(&self, run: &std::path::Path) -> Result<(), TrainError> {
        checkpoint::save(
            run,
            &self.model,
            &self.optim,
            &self.model_config,
            &self.state,
        )?;
        Ok(())
    }

    /// The next `n` questions, advancing the data position.
    fn next_questions(&mut self, n: usize) -> Vec<Question> {
        self.state
            .next_indices(self.data.len(), n)
            .into_iter()
            .map(|i| self.data[i].clone())
            .collect()
    }

    /// Runs one RL step (rollout, reward, update) and returns its metrics.
    ///
    /// # Errors
    /// [`TrainError::Rollout`] when generation fails (e.g. a prompt longer than the context).
    pub fn step(&mut self) -> Result<StepMetrics, TrainError> {
        let step = self.state.step + 1;
        let _span = tracing::info_span!("train_step", step).entered();
        let questions = self.next_questions(self.cfg.questions_per_step);
        let g = self.rollout.samples_per_question.max(1);

        // Rollout with the current policy (inference backend, no graph).
        let t0 = Instant::now();
        let policy = self.model.valid();
        let mut sampler = Sampler::new(
            self.rollout.sampling(
                self.state
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(step as u64),
            ),
        );
        let texts: Vec<String> = questions.iter().map(|q| q.question.clone()).collect();
        let (episodes, rstats) = rollout(
            &policy,
            &self.tokenizer,
            self.retriever.as_ref(),
            &self.prompt,
            &self.rollout,
            &texts,
            &mut sampler,
        )?;
        drop(policy);
        let seconds_rollout = t0.elapsed().as_secs_f64();

        // Rewards.
        let t0 = Instant::now();
        let scored: Vec<_> = episodes
            .iter()
            .map(|e| {
                self.reward
                    .score(&e.solution, &questions[e.question_index].answers)
            })
            .collect();
        let rewards: Vec<f32> = scored.iter().map(|s| s.total).collect();
        let seconds_reward = t0.elapsed().as_secs_f64();

        // Update. The weights the rollout used (θ_{N−1}) are kept until the guard has judged
        // this step's figures, which all describe them.
        let before = self.cfg.guard.enabled.then(|| Snapshot {
            model: self.model.clone(),
            optim: self.optim.to_record(),
            step: step - 1,
        });
        let t0 = Instant::now();
        let lr = self.cfg.lr_at(step) * self.state.lr_scale;
        let upd = self.update(&episodes, &rewards, g, lr);
        let seconds_update = t0.elapsed().as_secs_f64();
        self.state.step = step;

        let n = episodes.len().max(1) as f64;
        let mean = |f: &dyn Fn(usize) -> f64| (0..episodes.len()).map(f).sum::<f64>() / n;
        let reward_mean = mean(&|i| rewards[i] as f64);
        let reward_std = (mean(&|i| (rewards[i] as f64 - reward_mean).powi(2))).sqrt();
        let mut metrics = StepMetrics {
            step,
            reward_mean,
            reward_std,
            reward_answer: mean(&|i| scored[i].answer as f64),
            reward_retrieval_format: mean(&|i| scored[i].retrieval_format as f64),
            reward_answer_format: mean(&|i| scored[i].answer_format as f64),
            reward_penalty: mean(&|i| scored[i].penalty as f64),
            format_ok_rate: mean(&|i| scored[i].format_ok as u8 as f64),
            finished_rate: mean(&|i| episodes[i].finished() as u8 as f64),
            em: mean(&|i| scored[i].metrics.em as u8 as f64),
            cover_em: mean(&|i| scored[i].metrics.cover_em as u8 as f64),
            f1: mean(&|i| scored[i].metrics.f1),
            searches_mean: mean(&|i| episodes[i].searches.len() as f64),
            response_tokens_mean: mean(&|i| episodes[i].policy_tokens() as f64),
            kl: upd.kl,
            entropy: upd.entropy,
            loss: upd.loss,
            clip_frac: upd.clip_frac,
            grad_norm: upd.grad_norm,
            lr,
            episodes: episodes.len(),
            seconds_generate: rstats.seconds_generate,
            seconds_search: rstats.seconds_search,
            seconds_rollout,
            seconds_reward,
            seconds_update,
            tokens_per_s: rstats.sampled_tokens as f64 / rstats.seconds_total.max(1e-9),
            guard: None,
        };
        if let Some(before) = before {
            metrics.guard = self.apply_guard(&metrics, before)?;
        }
        Ok(metrics)
    }

    /// Judges a step's figures (which describe `before`, the weights the step started from).
    /// On a pass `before` becomes the last good state; on a trip the last good state is
    /// restored and the learning-rate scale multiplied by `lr_factor`.
    ///
    /// # Errors
    /// [`TrainError::Collapsed`] once the guard has tripped `max_trips` times.
    fn apply_guard(
        &mut self,
        m: &StepMetrics,
        before: Snapshot<B>,
    ) -> Result<Option<GuardEvent>, TrainError> {
        let cfg = self.cfg.guard.clone();
        let reason = match self.guard.check(&cfg, m) {
            Ok(()) => {
                self.last_good = Some(before);
                return Ok(None);
            }
            Err(r) => r,
        };
        self.state.guard_trips += 1;
        if self.state.guard_trips > cfg.max_trips {
            return Err(TrainError::Collapsed {
                trips: self.state.guard_trips,
                reason,
            });
        }
        let restored_step = self.last_good.as_ref().map(|good| {
            self.model = good.model.clone();
            self.optim = adamw::<B>(&self.cfg).load_record(good.optim.clone());
            good.step
        });
        self.state.lr_scale *= cfg.lr_factor;
        self.guard.reset();
        let event = GuardEvent {
            reason,
            restored_step,
            lr_scale: self.state.lr_scale,
        };
        tracing::warn!(
            step = m.step,
            reason = %event.reason,
            restored_step = ?event.restored_step,
            lr_scale = event.lr_scale,
            "collapse guard tripped"
        );
        Ok(Some(event))
    }

    /// One optimizer step on `episodes`.
    ///
    /// Micro-batches whose advantages are all zero (e.g. a GRPO group with equal rewards)
    /// carry no gradient when KL is not a loss term, so they skip the forward and backward
    /// passes; the loss is still divided by every policy token of the batch, so the result is
    /// the same as computing them.
    fn update(&mut self, episodes: &[Episode], rewards: &[f32], g: usize, lr: f64) -> UpdateStats {
        let _span = tracing::info_span!("update", episodes = episodes.len()).entered();
        let total_tokens: f64 = episodes.iter().map(|e| e.policy_tokens() as f64).sum();
        if total_tokens == 0.0 {
            return UpdateStats::default();
        }
        let mb = self.cfg.micro_batch.max(1);
        let chunks: Vec<Vec<usize>> = (0..episodes.len())
            .collect::<Vec<_>>()
            .chunks(mb)
            .map(|c| c.to_vec())
            .collect();
        let seqs = |c: &[usize]| -> Vec<(&[u32], &[u8], usize)> {
            c.iter()
                .map(|&i| {
                    (
                        &episodes[i].tokens[..],
                        &episodes[i].mask[..],
                        episodes[i].prompt_len,
                    )
                })
                .collect()
        };
        let inner_device = self.model.embed_tokens.device();
        let packed: Vec<PackedBatch<B::InnerBackend>> = chunks
            .iter()
            .map(|c| pack::<B::InnerBackend>(&seqs(c), &inner_device))
            .collect();
        let kl_in_loss = if self.cfg.algo == Algo::Grpo {
            self.cfg.kl_coef
        } else {
            0.0
        };

        // Reinforce++ with KL in the reward needs log π_old − log π_ref of every token before
        // any advantage can be normalized.
        let needs_kl_reward = self.cfg.algo != Algo::Grpo && self.cfg.kl_coef != 0.0;
        let mut ref_lp: Vec<Option<Vec<Vec<f32>>>> = vec![None; chunks.len()];
        let mut kl_reward: Vec<Vec<Vec<f32>>> = packed
            .iter()
            .map(|p| p.mask_host.iter().map(|row| vec![0.0; row.len()]).collect())
            .collect();
        if needs_kl_reward {
            let inner = self.model.valid();
            for (ci, p) in packed.iter().enumerate() {
                let old = rows(token_logprobs(&inner, p.tokens.clone(), p.start));
                if let Some(r) = &self.reference {
                    let rf = rows(token_logprobs(r, p.tokens.clone(), p.start));
                    kl_reward[ci] = old
                        .iter()
                        .zip(&rf)
                        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
                        .collect();
                    ref_lp[ci] = Some(rf);
                }
            }
        }

        // Advantages per chunk, row, token.
        let adv: Vec<Vec<Vec<f32>>> = match self.cfg.algo {
            Algo::Grpo => {
                let a = advantage::grpo(rewards, g);
                chunks
                    .iter()
                    .zip(&packed)
                    .map(|(c, p)| {
                        c.iter()
                            .zip(&p.mask_host)
                            .map(|(&i, row)| vec![a[i]; row.len()])
                            .collect()
                    })
                    .collect()
            }
            Algo::ReinforcePp | Algo::ReinforcePpBaseline => {
                let r = if self.cfg.algo == Algo::ReinforcePpBaseline {
                    advantage::subtract_group_mean(rewards, g)
                } else {
                    rewards.to_vec()
                };
                let flat_mask: Vec<Vec<u8>> =
                    packed.iter().flat_map(|p| p.mask_host.clone()).collect();
                let flat_kl: Vec<Vec<f32>> = kl_reward.into_iter().flatten().collect();
                let flat_r: Vec<f32> = chunks.iter().flatten().map(|&i| r[i]).collect();
                let flat =
                    advantage::reinforce_pp(&flat_r, &flat_mask, &flat_kl, self.cfg.kl_coef as f32);
                let mut it = flat.into_iter();
                chunks
                    .iter()
                    .map(|c| c.iter().map(|_| it.next().expect("row")).collect())
                    .collect()
            }
        };

        // Forward/backward on the micro-batches that carry gradient, accumulated.
        let mut accum = GradientsAccumulator::<Llama<B>>::new();
        let (mut loss_sum, mut kl_sum, mut clipped, mut kl_tokens, mut entropy_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut any = false;
        for (ci, p) in packed.iter().enumerate() {
            let carries = kl_in_loss != 0.0 || adv[ci].iter().flatten().any(|&a| a != 0.0);
            if !carries {
                continue;
            }
            any = true;
            if ref_lp[ci].is_none() {
                ref_lp[ci] = self
                    .reference
                    .as_ref()
                    .map(|r| rows(token_logprobs(r, p.tokens.clone(), p.start)));
            }
            let tokens = Tensor::<B, 2, Int>::from_inner(p.tokens.clone());
            let mask = Tensor::<B, 2>::from_inner(p.mask.clone());
            let (logp, ent) = token_logprobs_entropy(&self.model, tokens, p.start, true);
            if let Some(e) = ent {
                let m = Tensor::<B, 2>::from_inner(p.mask.clone());
                entropy_sum += (e * m).sum().into_scalar().elem::<f64>();
            }
            let [b, tp] = logp.dims();
            let inputs = LossInputs {
                old_logp: logp.clone().detach(),
                ref_logp: ref_lp[ci]
                    .as_ref()
                    .map(|r| to_tensor::<B>(r, b, tp, &self.device)),
                advantages: to_tensor::<B>(&adv[ci], b, tp, &self.device),
                mask,
            };
            let (loss, parts) = policy_loss(
                logp,
                &inputs,
                self.cfg.clip_eps,
                kl_in_loss,
                self.cfg.kl_estimator,
                total_tokens,
            );
            loss_sum += parts.loss_sum;
            kl_sum += parts.kl_sum;
            clipped += parts.clipped;
            kl_tokens += p.mask_host.iter().flatten().filter(|&&m| m == 1).count() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            accum.accumulate(&self.model, grads);
        }
        if !any {
            return UpdateStats::default();
        }
        let mut grads = accum.grads();
        let grad_norm = clip_global_norm::<B>(&self.model, &mut grads, self.cfg.grad_clip);
        let model = self.model.clone();
        self.model = self.optim.step(lr, model, grads);
        UpdateStats {
            loss: loss_sum / total_tokens,
            kl: (self.reference.is_some() && kl_tokens > 0.0).then(|| kl_sum / kl_tokens),
            entropy: (kl_tokens > 0.0).then(|| entropy_sum / kl_tokens),
            clip_frac: clipped / total_tokens,
            grad_norm,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct UpdateStats {
    loss: f64,
    kl: Option<f64>,
    entropy: Option<f64>,
    clip_frac: f64,
    grad_norm: f64,
}

fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [b, tp] = t.dims();
    let v = t.into_data().to_vec::<f32>().expect("f32");
    (0..b).map(|i| v[i * tp..(i + 1) * tp].to_vec()).collect()
}

pub(crate) fn to_tensor<B: Backend>(
    rows: &[Vec<f32>],
    b: usize,
    tp: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut flat = Vec::with_capacity(b * tp);
    for r in rows {
        flat.extend_from_slice(&r[..tp]);
    }
    Tensor::from_data(TensorData::new(flat, [b, tp]), device)
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
                    let s: f32 = g.powi_scalar(2).sum().into_scalar().elem();
                    self.sum_sq += s as f64;
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

use burn::tensor::ElementConversion;

/// Clips the global L2 norm of `grads` to `max_norm` (0 disables); returns the norm before
/// clipping. burn's built-in clipping is per tensor; RL recipes clip the global norm.
pub(crate) fn clip_global_norm<B: AutodiffBackend>(
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
