//! One RL step: rollout → reward → advantages → accumulated update → metrics.
//!
//! [`Trainer`] owns the policy (on the autodiff backend), an optional frozen reference copy
//! (inference backend), AdamW, the retriever, the reward rule and the question order. Each
//! [`Trainer::step`] draws `questions_per_step` questions, runs `G` episodes each, scores
//! them, and takes one optimizer step whose gradient is the masked-token mean over the whole
//! batch (micro-batches of `micro_batch` sequences are accumulated). The step's figures come
//! back as [`StepMetrics`], one JSON line of `metrics.jsonl`.
//!
//! **Informative groups.** A GRPO group whose G rewards are equal has zero advantage. With
//! `dynamic_sampling` (DAPO) the step keeps drawing questions until it holds
//! `questions_per_step` groups whose rewards differ, for at most `max_resample` extra rounds,
//! and trains on those only; `groups_sampled` / `groups_kept` report it. Every question's
//! pass rate is tracked in the checkpointed [`TrainState`]; with `retire_after` a question
//! that is always or never solved after that many groups stops being drawn.
//!
//! **Sampling and scoring agree.** Rollouts sample `softmax(logits / T)` without truncation
//! and the loss scores the same distribution (the rollout temperature is applied in
//! [`super::loss::token_logprobs_entropy`]); configs with top-k / top-p are refused.

use std::collections::VecDeque;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::advantage::{self, Algo, GroupNorm};
use super::checkpoint::{self, CheckpointError, PassRecord, TrainState};
use super::guard::{CollapseGuard, GuardConfig, GuardEvent};
use super::loss::{
    pack, plan_micro_batches, policy_loss, token_logprobs_entropy, KlEstimator, LossInputs,
    PackedBatch,
};
pub use super::metrics::StepMetrics;

/// Log-probs of the next tokens at the rollout temperature, no entropy.
/// Only the batch's policy-token positions are scored (the rest read 0).
fn logprobs_at<B: Backend>(model: &Llama<B>, p: &PackedBatch<B>, temperature: f32) -> Tensor<B, 2> {
    token_logprobs_entropy(
        model,
        p.tokens.clone(),
        p.start,
        p.shared,
        temperature,
        false,
        Some(p.scored.clone()),
    )
    .0
}
use crate::env::{rollout, Env, Episode, RolloutConfig};
use crate::model::{Engine, Llama, LlamaConfig, Sampler};
use crate::reward::{step_retrieval_reward, RewardBreakdown, Rewards, StepReward};

/// Training hyper-parameters (`[train]` in an env config). Defaults stated once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Advantage estimator. Default `grpo`.
    pub algo: Algo,
    /// How `algo = "grpo"` scales a group's centred rewards: `grpo` divides by the group's
    /// standard deviation (DeepSeekMath), `dr_grpo` does not (Dr. GRPO, Liu et al. 2025,
    /// arXiv 2503.20783), so a group that differs only by a small side reward (one more gold
    /// title found) gets small advantages instead of the same ±0.87 as a group that differs
    /// in the answer. Ignored by the Reinforce++ estimators. Default `grpo`.
    pub advantage: GroupNorm,
    /// Questions per optimizer step (each sampled G times). Default 2.
    pub questions_per_step: usize,
    /// Sequences per forward/backward pass; gradients are accumulated. Default 2.
    pub micro_batch: usize,
    /// Most padded tokens (sequences × longest) per forward/backward pass, so episodes long
    /// with documents go fewer to a pass ([`super::loss::micro_batches`]); one longer than
    /// this goes alone; 0 = no cap. Default 2048.
    pub micro_batch_tokens: usize,
    /// Run the leading tokens that a forward pass's sequences share (a group's prompt; the
    /// system prompt and demonstration of different questions) once, with their keys and
    /// values broadcast to the sequences ([`crate::model::Llama::forward_shared`]), instead of
    /// once per sequence. Same log-probs and gradients (tested); `false` only for before/after
    /// measurements. Default true.
    pub share_prompt: bool,
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
    /// Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
    /// brings you off-policy RL training"): when > 0, each policy token's surrogate loss is
    /// weighted by `min(π_train / π_rollout, tis_cap)`, correcting for rollouts decoded from
    /// other weights than the loss scores: the Q8_0 / Q4_1 engine (`[rollout] weights`, the
    /// default) or a remote server. With f32 rollouts the ratio is 1 up to rounding and the
    /// weight changes nothing. 0 disables. Default 2.0 (the cap of Yao et al.'s recipe); the
    /// mismatch is logged either way as `logprob_mismatch` (0.02–0.05 nats per token with
    /// Q8_0 rollouts here).
    pub tis_cap: f64,
    /// KL estimator for the GRPO loss term and the logged `kl`. Default `k3`. (Reinforce++
    /// puts the per-token log-ratio, i.e. k1, into the reward, as its paper defines.)
    pub kl_estimator: KlEstimator,
    /// Keep a frozen reference model and log KL even when `kl_coef` is 0. Default true.
    pub track_kl: bool,
    /// Save a checkpoint every this many steps (and at the end). Default 1.
    pub checkpoint_every: usize,
    /// Seed for question order and sampling. Default 0.
    pub seed: u64,
    /// Dynamic sampling (DAPO, Yu et al. 2025, arXiv 2503.14476): keep drawing questions
    /// until the step holds `questions_per_step` groups whose rewards differ (a group of
    /// equal rewards has zero advantage and teaches nothing), for at most `max_resample` extra
    /// rollout rounds. Default false.
    pub dynamic_sampling: bool,
    /// Extra rollout rounds a step may run to fill its informative groups (with
    /// `dynamic_sampling`); after them the step trains on the informative groups it has.
    /// Default 4.
    pub max_resample: usize,
    /// Retire a question once it has been drawn this many groups and its pass rate (cover-EM
    /// correct samples) is 0 or 1: always or never solved, it has nothing left to teach
    /// (DeepResearcher and Logic-RL grade difficulty the same way). Retirement never leaves
    /// fewer than `questions_per_step` questions active. 0 disables. Default 0.
    pub retire_after: usize,
    /// SFT only: stop the run once the mean policy entropy (nats per policy token, measured
    /// in the step's forward pass) falls below this, so the cold start leaves variance for
    /// RL. 0 disables. Default 0.0.
    pub sft_stop_entropy: f64,
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
            advantage: GroupNorm::Grpo,
            questions_per_step: 2,
            micro_batch: 2,
            micro_batch_tokens: 2048,
            share_prompt: true,
            learning_rate: 1e-6,
            warmup_steps: 0,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            clip_eps: 0.2,
            tis_cap: 2.0,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            track_kl: true,
            checkpoint_every: 1,
            seed: 0,
            dynamic_sampling: false,
            max_resample: 4,
            retire_after: 0,
            sft_stop_entropy: 0.0,
            guard: GuardConfig::default(),
        }
    }
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
    /// The run directory already holds a run and `--resume` was not given.
    #[error("{0} already holds a run; pass --resume to continue it or choose another --out")]
    AlreadyExists(std::path::PathBuf),
    /// The rollout's sampling settings cannot be trained on.
    #[error("{reason}")]
    Sampling {
        /// Which setting and why.
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

/// A training question with its gold answers and, when the data has them, its gold support
/// titles (HotpotQA `support_titles`) and type (`bridge` / `comparison`).
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// Question text.
    pub question: String,
    /// Acceptable answers.
    pub answers: Vec<String>,
    /// Gold support-paragraph titles; empty when unknown. Used by the step-level retrieval
    /// reward and by multi-hop scripted episodes.
    pub support_titles: Vec<String>,
    /// HotpotQA question type when known (`bridge`, `comparison`).
    pub kind: Option<String>,
}

impl From<crate::eval::QaExample> for Question {
    fn from(q: crate::eval::QaExample) -> Self {
        Self {
            question: q.question,
            answers: q.answers,
            support_titles: q.support_titles,
            kind: q.kind,
        }
    }
}

pub use super::checkpoint::Optim;

/// Policy weights as they were after optimizer step `step` (cheap to take: burn tensors are
/// reference-counted and updates allocate new ones; each kept snapshot holds one copy of the
/// weights).
struct Snapshot<B: AutodiffBackend> {
    model: Llama<B>,
    step: usize,
}

/// One sampled episode with its scores.
struct Sampled {
    episode: Episode,
    rule: RewardBreakdown,
    step: StepReward,
    /// `rule.total + step.total`: what the advantage is computed from.
    reward: f32,
}

/// RL scores tokens under the distribution the rollout sampled from ([`super::loss`]); top-k
/// and top-p truncation are not modelled in the loss, so they are refused.
fn check_sampling(r: &RolloutConfig) -> Result<(), TrainError> {
    let bad = |reason: String| Err(TrainError::Sampling { reason });
    if r.temperature <= 0.0 {
        return bad(format!(
            "[rollout] temperature = {} (RL needs sampling: temperature > 0)",
            r.temperature
        ));
    }
    if r.top_p < 1.0 || r.top_k_sampling > 0 {
        return bad(format!(
            "[rollout] top_p = {}, top_k_sampling = {}: RL rollouts must sample the untruncated \
             distribution (top_p = 1.0, top_k_sampling = 0) so the loss scores tokens under the \
             distribution they were drawn from; lower `temperature` to sharpen instead",
            r.top_p, r.top_k_sampling
        ));
    }
    Ok(())
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
    /// Tokenizer, retriever, prompt and rollout settings.
    pub env: Env,
    rewards: Rewards,
    /// Training settings.
    pub cfg: TrainConfig,
    data: Vec<Question>,
    /// Progress (saved in checkpoints).
    pub state: TrainState,
    device: B::Device,
    guard: CollapseGuard,
    /// The newest `window + 1` weights whose figures passed the guard, oldest first.
    passing: VecDeque<Snapshot<B>>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Assembles a trainer around an initial policy.
    ///
    /// # Errors
    /// [`TrainError::NoData`] for an empty question list.
    pub fn new(
        model: Llama<B>,
        model_config: LlamaConfig,
        env: Env,
        rewards: Rewards,
        cfg: TrainConfig,
        data: Vec<Question>,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        if data.is_empty() {
            return Err(TrainError::NoData);
        }
        check_sampling(&env.rollout)?;
        let model = model.with_canonical_param_ids();
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
            env,
            rewards,
            cfg,
            data,
            state,
            device,
            guard: CollapseGuard::default(),
            passing: VecDeque::new(),
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
        self.passing.clear();
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

    /// The checkpoint [`Self::save`] would write, copied out so that another thread can write
    /// it while training goes on ([`checkpoint::Snapshot`]).
    pub fn snapshot(&self) -> checkpoint::Snapshot<B> {
        checkpoint::Snapshot::of(&self.model, &self.optim, &self.model_config, &self.state)
    }

    /// The indices of the next `n` questions that are not retired, advancing the data
    /// position (retired questions are skipped; at most two passes over the data are read).
    fn next_question_indices(&mut self, n: usize) -> Vec<usize> {
        let len = self.data.len();
        let mut out = Vec::with_capacity(n);
        let mut reads = 0;
        while out.len() < n && reads < 2 * len.max(1) {
            reads += 1;
            let i = self.state.next_indices(len, 1)[0];
            if !self.state.pass.get(i).is_some_and(|p| p.retired) {
                out.push(i);
            }
        }
        out
    }

    /// Questions retired so far.
    pub fn questions_retired(&self) -> usize {
        self.state.pass.iter().filter(|p| p.retired).count()
    }

    /// Records a group's outcome for question `qi`; retires the question when it has been
    /// drawn `retire_after` groups and is always or never solved, unless that would leave fewer
    /// than `questions_per_step` active questions.
    fn record_group(&mut self, qi: usize, samples: usize, solved: usize, step: usize) {
        if self.state.pass.len() < self.data.len() {
            self.state
                .pass
                .resize(self.data.len(), PassRecord::default());
        }
        let active = self.data.len() - self.questions_retired();
        let k = self.cfg.retire_after;
        let rec = &mut self.state.pass[qi];
        rec.groups += 1;
        rec.samples += samples;
        rec.solved += solved;
        if k > 0
            && !rec.retired
            && rec.groups >= k
            && (rec.solved == 0 || rec.solved == rec.samples)
            && active > self.cfg.questions_per_step.max(1)
        {
            rec.retired = true;
            tracing::info!(
                step,
                question = qi,
                groups = rec.groups,
                pass_rate = rec.pass_rate(),
                text = %self.data[qi].question,
                "question retired: {} after {} groups",
                if rec.solved == 0 { "never solved" } else { "always solved" },
                rec.groups
            );
        }
    }

    /// Runs one RL step and returns its metrics: rollouts (repeated under dynamic sampling
    /// until the step holds `questions_per_step` informative groups or `max_resample` extra
    /// rounds ran), rewards (rule + optional step-level retrieval reward), one optimizer step
    /// on the kept groups, and the collapse guard's verdict.
    ///
    /// # Errors
    /// [`TrainError::Rollout`] when generation fails (e.g. a prompt longer than the context);
    /// [`TrainError::Sampling`] when the rollout settings truncate the distribution;
    /// [`TrainError::Collapsed`] when the guard has tripped `max_trips` times.
    pub fn step(&mut self) -> Result<StepMetrics, TrainError> {
        check_sampling(&self.env.rollout)?;
        let step = self.state.step + 1;
        let _span = tracing::info_span!("train_step", step).entered();
        let g = self.env.rollout.samples_per_question.max(1);
        let qps = self.cfg.questions_per_step.max(1);

        // Rollout with the current policy (inference backend, no graph). One sampler per step,
        // seeded by the step, drawn on across resampling rounds: a resumed run replays it.
        let policy = self.model.valid();
        // The rollout's decoding engine: the weights just updated, re-quantized once per step
        // when `[rollout] weights` asks for a quantized engine.
        let t_quant = Instant::now();
        let engine = Engine::new(&policy, self.env.rollout.weights);
        let seconds_quantize = match engine {
            Engine::F32(_) => 0.0,
            Engine::Quantized(_) => t_quant.elapsed().as_secs_f64(),
        };
        let mut sampler = Sampler::new(
            self.env.rollout.sampling(
                self.state
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(step as u64),
            ),
        );
        let mut sampled: Vec<Sampled> = Vec::new();
        let mut kept: Vec<usize> = Vec::new(); // indices into `sampled`, whole groups in order
        let (mut groups_sampled, mut groups_kept, mut rounds) = (0usize, 0usize, 0usize);
        let (mut seconds_rollout, mut seconds_reward) = (0.0, 0.0);
        let (mut seconds_generate, mut seconds_search, mut sampled_tokens, mut rollout_total) =
            (0.0, 0.0, 0usize, 0.0);
        let (mut seconds_prefill, mut prefill_tokens) = (0.0, 0usize);
        loop {
            let need = if self.cfg.dynamic_sampling {
                qps - groups_kept
            } else {
                qps
            };
            let qidx = self.next_question_indices(need);
            if qidx.is_empty() {
                break;
            }
            let t0 = Instant::now();
            let texts: Vec<String> = qidx
                .iter()
                .map(|&i| self.data[i].question.clone())
                .collect();
            let (episodes, rstats) = rollout(
                &engine,
                &self.env.tokenizer,
                self.env.retriever.as_ref(),
                &self.env.prompt,
                &self.env.rollout,
                &texts,
                &mut sampler,
            )?;
            seconds_rollout += t0.elapsed().as_secs_f64();
            seconds_generate += rstats.seconds_generate;
            seconds_search += rstats.seconds_search;
            sampled_tokens += rstats.sampled_tokens;
            seconds_prefill += rstats.seconds_prefill;
            prefill_tokens += rstats.prefill_tokens;
            rollout_total += rstats.seconds_total;

            let t0 = Instant::now();
            let mut by_group: Vec<Vec<Sampled>> = (0..qidx.len()).map(|_| Vec::new()).collect();
            for e in episodes {
                let q = &self.data[qidx[e.question_index]];
                let rule = self.rewards.rule.score(&e.solution, &q.answers);
                let titles: Vec<Vec<String>> =
                    e.searches.iter().map(|c| c.titles.clone()).collect();
                let step_r = step_retrieval_reward(
                    &titles,
                    &q.support_titles,
                    rule.format_ok,
                    &self.rewards.step,
                );
                let reward = rule.total + step_r.total;
                by_group[e.question_index].push(Sampled {
                    episode: e,
                    rule,
                    step: step_r,
                    reward,
                });
            }
            seconds_reward += t0.elapsed().as_secs_f64();
            for (j, group) in by_group.into_iter().enumerate() {
                groups_sampled += 1;
                let solved = group.iter().filter(|s| s.rule.metrics.cover_em).count();
                self.record_group(qidx[j], group.len(), solved, step);
                let informative = group.iter().any(|s| s.reward != group[0].reward);
                let keep = !self.cfg.dynamic_sampling || (informative && groups_kept < qps);
                let first = sampled.len();
                sampled.extend(group);
                if keep {
                    groups_kept += 1;
                    kept.extend(first..sampled.len());
                }
            }
            if !self.cfg.dynamic_sampling || groups_kept >= qps || rounds >= self.cfg.max_resample {
                break;
            }
            rounds += 1;
        }
        drop(engine);
        drop(policy);
        if sampled.is_empty() {
            return Err(TrainError::NoData);
        }

        // Update on the kept groups. The weights the rollout used (θ_{N−1}) are kept until the
        // guard has judged this step's figures, which all describe them.
        let before = self.cfg.guard.enabled.then(|| Snapshot {
            model: self.model.clone(),
            step: step - 1,
        });
        let t0 = Instant::now();
        let lr = self.cfg.lr_at(step) * self.state.lr_scale;
        let train_eps: Vec<Episode> = kept.iter().map(|&i| sampled[i].episode.clone()).collect();
        let train_rewards: Vec<f32> = kept.iter().map(|&i| sampled[i].reward).collect();
        let upd = if train_eps.is_empty() {
            UpdateStats::default()
        } else {
            self.update(&train_eps, &train_rewards, g, lr)
        };
        let seconds_update = t0.elapsed().as_secs_f64();
        self.state.step = step;

        let n = sampled.len() as f64;
        let mean = |f: &dyn Fn(&Sampled) -> f64| sampled.iter().map(f).sum::<f64>() / n;
        let reward_mean = mean(&|s| s.reward as f64);
        let reward_std = mean(&|s| (s.reward as f64 - reward_mean).powi(2)).sqrt();
        let mut metrics = StepMetrics {
            phase: None,
            step,
            reward_mean,
            reward_std,
            reward_answer: mean(&|s| s.rule.answer as f64),
            reward_retrieval_format: mean(&|s| s.rule.retrieval_format as f64),
            reward_answer_format: mean(&|s| s.rule.answer_format as f64),
            reward_penalty: mean(&|s| s.rule.penalty as f64),
            reward_retrieval_step: mean(&|s| s.step.total as f64),
            format_ok_rate: mean(&|s| s.rule.format_ok as u8 as f64),
            finished_rate: mean(&|s| s.episode.finished() as u8 as f64),
            em: mean(&|s| s.rule.metrics.em as u8 as f64),
            cover_em: mean(&|s| s.rule.metrics.cover_em as u8 as f64),
            f1: mean(&|s| s.rule.metrics.f1),
            searches_mean: mean(&|s| s.episode.searches.len() as f64),
            multi_search_rate: mean(&|s| (s.episode.searches.len() >= 2) as u8 as f64),
            support_found_mean: mean(&|s| s.step.support_found as f64),
            response_tokens_mean: mean(&|s| s.episode.policy_tokens() as f64),
            kl: upd.kl,
            entropy: upd.entropy,
            logprob_mismatch: upd.logprob_mismatch,
            loss: upd.loss,
            clip_frac: upd.clip_frac,
            grad_norm: upd.grad_norm,
            lr,
            episodes: sampled.len(),
            groups_sampled,
            groups_kept,
            questions_retired: self.questions_retired(),
            seconds_generate,
            seconds_prefill,
            prefill_tokens,
            seconds_search,
            seconds_rollout,
            seconds_reward,
            seconds_update,
            seconds_quantize,
            tokens_per_s: sampled_tokens as f64 / rollout_total.max(1e-9),
            rss_peak_mib: super::metrics::rss_peak_mib(),
            guard: None,
        };
        if let Some(before) = before {
            metrics.guard = self.apply_guard(&metrics, before)?;
        }
        Ok(metrics)
    }

    /// Judges a step's figures (which describe `before`, the weights the step started from).
    /// On a pass `before` joins the passing snapshots (the last `window + 1` are kept); on a
    /// trip the newest passing snapshot older than the trip's evidence is restored (module
    /// docs of [`super::guard`]), AdamW's moments restart, and the learning-rate scale is
    /// multiplied by `lr_factor`.
    ///
    /// # Errors
    /// [`TrainError::Collapsed`] once the guard has tripped `max_trips` times.
    fn apply_guard(
        &mut self,
        m: &StepMetrics,
        before: Snapshot<B>,
    ) -> Result<Option<GuardEvent>, TrainError> {
        let cfg = self.cfg.guard.clone();
        let trip = match self.guard.check(&cfg, m) {
            Ok(()) => {
                self.passing.push_back(before);
                while self.passing.len() > cfg.window.max(1) + 1 {
                    self.passing.pop_front();
                }
                return Ok(None);
            }
            Err(t) => t,
        };
        self.state.guard_trips += 1;
        if self.state.guard_trips > cfg.max_trips {
            return Err(TrainError::Collapsed {
                trips: self.state.guard_trips,
                reason: trip.reason,
            });
        }
        // The trip's evidence spans steps N − steps + 1 ..= N (N = m.step), which measured the
        // weights after steps N − steps … N − 1; restore weights from before those: the newest
        // passing snapshot taken after step N − steps − 1 or earlier.
        let newest_trusted = m.step.checked_sub(trip.steps + 1);
        let restored_step = newest_trusted.and_then(|limit| {
            let good = self.passing.iter().rev().find(|s| s.step <= limit)?;
            self.model = good.model.clone();
            self.optim = adamw::<B>(&self.cfg);
            Some(good.step)
        });
        self.passing.clear();
        self.state.lr_scale *= cfg.lr_factor;
        self.guard.reset();
        let event = GuardEvent {
            reason: trip.reason,
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
        let share = self.cfg.share_prompt;
        let chunks = plan_micro_batches(
            &episodes
                .iter()
                .map(|e| (&e.tokens[..], e.prompt_len))
                .collect::<Vec<_>>(),
            share,
            self.cfg.micro_batch,
            self.cfg.micro_batch_tokens,
        );
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
            .map(|c| pack::<B::InnerBackend>(&seqs(c), share, &inner_device))
            .collect();
        // Score tokens under the distribution they were sampled from (loss module docs).
        let temp = self.env.rollout.temperature;
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
                let old = rows(logprobs_at(&inner, p, temp));
                if let Some(r) = &self.reference {
                    let rf = rows(logprobs_at(r, p, temp));
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
                let a = match self.cfg.advantage {
                    GroupNorm::Grpo => advantage::grpo(rewards, g),
                    GroupNorm::DrGrpo => advantage::dr_grpo(rewards, g),
                };
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
        let (mut gap_sum, mut gap_tokens) = (0.0f64, 0usize);
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
                    .map(|r| rows(logprobs_at(r, p, temp)));
            }
            let tokens = Tensor::<B, 2, Int>::from_inner(p.tokens.clone());
            let mask = Tensor::<B, 2>::from_inner(p.mask.clone());
            let scored = Tensor::<B, 1, Int>::from_inner(p.scored.clone());
            let (logp, ent) = token_logprobs_entropy(
                &self.model,
                tokens,
                p.start,
                p.shared,
                temp,
                true,
                Some(scored),
            );
            if let Some(e) = ent {
                let m = Tensor::<B, 2>::from_inner(p.mask.clone());
                entropy_sum += (e * m).sum().into_scalar().elem::<f64>();
            }
            let [b, tp] = logp.dims();
            // Rollout log-probs of the same targets: the mismatch with the training forward,
            // and the truncated importance weights when `tis_cap` is set.
            let train_lp = rows(logp.clone().detach().inner());
            let (gap, gap_n, is_w) = rollout_gap(
                &chunks[ci]
                    .iter()
                    .map(|&i| &episodes[i].logprobs[..])
                    .collect::<Vec<_>>(),
                &p.mask_host,
                &train_lp,
                p.start,
                self.cfg.tis_cap,
            );
            gap_sum += gap;
            gap_tokens += gap_n;
            let inputs = LossInputs {
                old_logp: logp.clone().detach(),
                ref_logp: ref_lp[ci]
                    .as_ref()
                    .map(|r| to_tensor::<B>(r, b, tp, &self.device)),
                advantages: to_tensor::<B>(&adv[ci], b, tp, &self.device),
                mask,
                is_weight: is_w.map(|w| to_tensor::<B>(&w, b, tp, &self.device)),
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
            logprob_mismatch: (gap_tokens > 0).then(|| gap_sum / gap_tokens as f64),
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
    logprob_mismatch: Option<f64>,
    clip_frac: f64,
    grad_norm: f64,
}

/// Compares rollout and training log-probs of a micro-batch's policy tokens.
///
/// `rollout[i]` is episode `i`'s per-token rollout log-probs (indexed like its tokens; empty
/// when unknown), `mask`/`train` are `[B][T']` over targets `start + 1 + j`. Returns
/// (Σ |train − rollout|, tokens compared, and with `cap > 0` the truncated importance
/// weights `min(exp(train − rollout), cap)` per target, 1 where unknown or masked).
fn rollout_gap(
    rollout: &[&[f32]],
    mask: &[Vec<u8>],
    train: &[Vec<f32>],
    start: usize,
    cap: f64,
) -> (f64, usize, Option<Vec<Vec<f32>>>) {
    let (mut sum, mut n) = (0.0f64, 0usize);
    let mut weights: Vec<Vec<f32>> = mask.iter().map(|r| vec![1.0; r.len()]).collect();
    for (i, row) in mask.iter().enumerate() {
        for (j, &m) in row.iter().enumerate() {
            let Some(&lr) = rollout[i].get(start + 1 + j) else {
                continue;
            };
            if m == 0 {
                continue;
            }
            let d = train[i][j] - lr;
            sum += d.abs() as f64;
            n += 1;
            if cap > 0.0 {
                weights[i][j] = (d.exp() as f64).min(cap) as f32;
            }
        }
    }
    (sum, n, (cap > 0.0).then_some(weights))
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

#[cfg(test)]
mod tests {
    use super::rollout_gap;

    /// The gap is measured on mask-1 targets only, target `j` of a row reading the episode's
    /// log-prob at token `start + 1 + j`; truncated weights are `min(exp(train − rollout), C)`.
    #[test]
    fn rollout_gap_compares_policy_tokens_and_truncates_weights() {
        // Episode tokens 0..5; targets start at token 1 (start = 0).
        let rollout: Vec<f32> = vec![0.0, -1.0, 0.0, -2.0, -0.5];
        let mask = vec![vec![1u8, 0, 1, 1]];
        let train = vec![vec![-1.5f32, 9.0, -1.0, -0.5]];
        let (sum, n, w) = rollout_gap(&[&rollout[..]], &mask, &train, 0, 2.0);
        assert_eq!(n, 3);
        assert!((sum - (0.5 + 1.0 + 0.0)).abs() < 1e-6, "{sum}");
        let w = w.expect("weights with a cap");
        assert!((w[0][0] - (-0.5f32).exp()).abs() < 1e-6);
        assert_eq!(w[0][1], 1.0, "masked target keeps weight 1");
        assert_eq!(w[0][2], 2.0, "exp(1) is truncated at the cap");
        assert!((w[0][3] - 1.0).abs() < 1e-6);
        // No cap: no weights; unknown rollout log-probs (old files): nothing compared.
        assert!(rollout_gap(&[&rollout[..]], &mask, &train, 0, 0.0)
            .2
            .is_none());
        assert_eq!(rollout_gap(&[&[][..]], &mask, &train, 0, 2.0).1, 0);
    }

    /// Rollouts decode from quantized weights by default, so TIS is on by default: the default
    /// cap yields importance weights, truncated at 2 (Yao et al. 2025).
    #[test]
    fn tis_is_on_by_default_with_quantized_rollouts() {
        let rollout_cfg = crate::env::RolloutConfig::default();
        assert_ne!(rollout_cfg.weights, crate::model::DecodeWeights::F32);
        let cfg = super::TrainConfig::default();
        assert_eq!(cfg.tis_cap, 2.0);
        let rollout: Vec<f32> = vec![0.0, -3.0, -0.1];
        let train = vec![vec![-1.0f32, -0.2]];
        let (_, n, w) = rollout_gap(&[&rollout[..]], &[vec![1, 1]], &train, 0, cfg.tis_cap);
        let w = w.expect("TIS weights by default");
        assert_eq!(n, 2);
        assert_eq!(w[0][0], 2.0, "exp(2) truncated at the default cap");
        assert!((w[0][1] - (-0.1f32).exp()).abs() < 1e-6);
    }
}
