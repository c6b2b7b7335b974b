//! One RL step: rollout → reward → advantages → accumulated update → metrics.
//!
//! [`Trainer`] ties the parts together: a [`Learner`] (the policy, AdamW, progress,
//! micro-batched optimizer steps; shared with SFT), an optional frozen reference copy
//! (inference backend), the environment ([`Env`]: tokenizer, retriever, prompt, rollout
//! settings), the rewards and the questions. Each [`Trainer::step`] has the
//! [`GroupSampler`](super::group) draw `questions_per_step` questions and run `G` episodes
//! each (with dynamic sampling and question retirement), takes one optimizer step on the kept
//! groups (`rl::update`), and returns the step's figures as [`StepMetrics`], one JSON
//! line of `metrics.jsonl`, after the collapse guard ([`super::guard`]) has judged them.
//! With `[rollout] engine = "openai"` the episodes come from a served engine instead of the
//! local decoder, which first receives the policy's LoRA adapter ([`super::served`]).
//!
//! **Sampling and scoring agree.** Rollouts sample `softmax(logits / T)` without truncation
//! and the loss scores the same distribution (the rollout temperature is applied in
//! [`super::loss::token_logprobs_entropy`]); configs with top-k / top-p are refused.

use std::collections::VecDeque;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::advantage::{self, Algo, GroupNorm};
use super::group::{self, GroupSampler, Question, Sampled, Sampling};
use super::guard::{CollapseGuard, GuardEvent};
use super::learner::Learner;
pub use super::metrics::StepMetrics;
use super::served::ServedEngine;
use super::update::{update, Batch, UpdateStats};
use super::{TrainConfig, TrainError};
use crate::env::remote::ServedModel;
use crate::env::{Env, Episode, RolloutConfig, RolloutEngine, RolloutMode};
use crate::model::{Engine, Llama, LlamaConfig, QuantLlama, Sampler};
use crate::reward::Rewards;

/// Policy weights as they were after optimizer step `step` (cheap to take: burn tensors are
/// reference-counted and updates allocate new ones; each kept snapshot holds one copy of the
/// weights).
struct Snapshot<B: AutodiffBackend> {
    model: Llama<B>,
    step: usize,
}

/// RL scores tokens under the distribution the rollout sampled from ([`super::loss`]); top-k
/// and top-p truncation are not modelled in the loss, so they are refused. Tree rollouts need
/// at least one tree and one node per expansion, and have tree-relative advantages, defined
/// for GRPO only ([`super::advantage::tree_grpo`]).
fn check_sampling(r: &RolloutConfig, algo: Algo) -> Result<(), TrainError> {
    let bad = |reason: String| Err(TrainError::Sampling { reason });
    if r.mode == RolloutMode::Tree && (r.tree.trees == 0 || r.tree.expand_nodes == 0) {
        return bad(format!(
            "[rollout.tree] trees = {}, expand_nodes = {}: both must be at least 1",
            r.tree.trees, r.tree.expand_nodes
        ));
    }
    if r.mode == RolloutMode::Tree && algo != Algo::Grpo {
        return bad(format!(
            "[rollout] mode = \"tree\" needs [train] algo = \"grpo\" (tree advantages are \
             group-relative; got \"{}\")",
            algo.as_str()
        ));
    }
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

/// Everything an RL run holds; see the module docs.
pub struct Trainer<B: AutodiffBackend> {
    /// The policy, its optimizer, settings and progress.
    pub learner: Learner<B>,
    reference: Option<Llama<B::InnerBackend>>,
    /// Tokenizer, retriever, prompt and rollout settings.
    pub env: Env,
    rewards: Rewards,
    data: Vec<Question>,
    guard: CollapseGuard,
    /// The newest `window + 1` weights whose figures passed the guard, oldest first.
    passing: VecDeque<Snapshot<B>>,
    /// The served rollout engine (`[rollout] engine = "openai"`), else `None`.
    served: Option<ServedEngine>,
    /// Weight restores by the collapse guard so far in this process: part of the served
    /// adapter's name, since a restore changes the weights without changing the step.
    restores: usize,
    /// A LoRA run's quantized rollout engine, kept between steps: its frozen base is
    /// quantized once and only the adapters are refreshed after each update
    /// ([`QuantLlama::from_base`]). `None` before the first step, for full fine-tunes and
    /// for f32 rollouts.
    quant_base: Option<Box<QuantLlama>>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Assembles a trainer around an initial policy.
    ///
    /// # Errors
    /// [`TrainError::NoData`] for an empty question list; [`TrainError::Sampling`] when the
    /// rollout settings truncate the distribution; [`TrainError::Engine`] when
    /// `[rollout] engine = "openai"` lacks what it needs (`[train] lora`, chain rollouts, a
    /// server URL).
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
        check_sampling(&env.rollout, cfg.algo)?;
        let served = match env.rollout.engine {
            RolloutEngine::Local => None,
            RolloutEngine::Openai => {
                let refuse = |reason: &str| {
                    Err(TrainError::Engine {
                        reason: format!("[rollout] engine = \"openai\": {reason}"),
                    })
                };
                if cfg.lora.is_none() {
                    return refuse(
                        "the engine receives each update as a LoRA adapter; set [train] lora \
                         (full-weight sync to a running server is not supported)",
                    );
                }
                if env.rollout.mode == RolloutMode::Tree {
                    return refuse(
                        "tree rollouts run on the local engine only; use mode = \"chain\"",
                    );
                }
                Some(ServedEngine::new(&env.rollout.openai)?)
            }
        };
        let learner = Learner::new(model, model_config, cfg, device);
        let reference =
            (learner.cfg.track_kl || learner.cfg.kl_coef != 0.0).then(|| learner.model.valid());
        Ok(Self {
            learner,
            reference,
            env,
            rewards,
            data,
            guard: CollapseGuard::default(),
            passing: VecDeque::new(),
            served,
            restores: 0,
            quant_base: None,
        })
    }

    /// The run folder: a served engine's adapters are written under `dir/adapters`
    /// ([`super::served`]). [`super::run::run_steps`] calls it before the first step.
    pub fn set_run_dir(&mut self, dir: &std::path::Path) {
        if let Some(s) = &mut self.served {
            s.set_run_dir(dir);
        }
    }

    /// Restores model, optimizer and progress from `run`'s checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file that failed.
    pub fn resume_from(&mut self, run: &std::path::Path) -> Result<(), TrainError> {
        self.learner.resume_from(run)?;
        self.guard.reset();
        self.passing.clear();
        self.quant_base = None;
        Ok(())
    }

    /// The local rollout engine for `policy` (`[rollout] weights`). A LoRA policy on a
    /// quantized engine reuses the base quantized at the first step and refreshes its
    /// adapters (its base weights are frozen, [`Llama::with_lora`]); every other policy is
    /// quantized whole ([`Engine::new`]).
    fn local_engine<'m>(
        &mut self,
        policy: &'m Llama<B::InnerBackend>,
    ) -> Engine<'m, B::InnerBackend> {
        let format = self.env.rollout.weights.quant_format();
        match format {
            Some(f) if policy.lora_params() > 0 && QuantLlama::supports(policy) => {
                let q = match self.quant_base.take() {
                    Some(mut q) => {
                        q.set_adapters(policy);
                        q
                    }
                    None => Box::new(QuantLlama::from_base(policy, f)),
                };
                Engine::Quantized(q)
            }
            _ => Engine::new(policy, self.env.rollout.weights),
        }
    }

    /// Questions retired so far.
    pub fn questions_retired(&self) -> usize {
        group::retired(&self.learner.state)
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
        check_sampling(&self.env.rollout, self.learner.cfg.algo)?;
        let step = self.learner.state.step + 1;
        let _span = tracing::info_span!("train_step", step).entered();
        let g = self.env.rollout.samples_per_question.max(1);

        // Rollout with the current policy (inference backend, no graph). One sampler per step,
        // seeded by the step, drawn on across resampling rounds: a resumed run replays it.
        let policy = self.learner.model.valid();
        // A served engine first receives the weights of step − 1 as an adapter.
        let served = match &mut self.served {
            Some(s) => Some(s.sync(&policy, step - 1, self.restores)?),
            None => None,
        };
        let served_model = served
            .as_ref()
            .zip(self.served.as_ref())
            .map(|((name, _), s)| ServedModel {
                policy: s.policy(),
                name,
            });
        // Otherwise the local decoding engine: the weights just updated, re-quantized once per
        // step when `[rollout] weights` asks for a quantized engine (a LoRA run's base is
        // quantized once, and only its adapters are refreshed).
        let t_quant = Instant::now();
        let mut local = None;
        let (sampling, seconds_quantize) = match &served_model {
            Some(m) => (Sampling::Served(m), 0.0),
            None => {
                let built = self.local_engine(&policy);
                let engine = &*local.insert(built);
                let secs = match engine {
                    Engine::F32(_) => 0.0,
                    Engine::Quantized(_) => t_quant.elapsed().as_secs_f64(),
                };
                (Sampling::Local(engine), secs)
            }
        };
        let seed = self
            .learner
            .state
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(step as u64);
        let mut sampler = Sampler::new(self.env.rollout.sampling(seed));
        let groups = GroupSampler {
            env: &self.env,
            rewards: &self.rewards,
            cfg: &self.learner.cfg,
            data: &self.data,
        }
        .sample(sampling, &mut sampler, &mut self.learner.state, step)?;
        // The quantized copy is not needed for the update: free it first, unless it is a LoRA
        // run's base, kept for the next step.
        if let Some(Engine::Quantized(q)) = local.take() {
            if q.has_adapters_beside() {
                self.quant_base = Some(q);
            }
        }
        drop(policy);
        if groups.sampled.is_empty() {
            return Err(TrainError::NoData);
        }

        // Update on the kept groups. The weights the rollout used (θ_{N−1}) are kept until the
        // guard has judged this step's figures, which all describe them.
        let before = self.learner.cfg.guard.enabled.then(|| Snapshot {
            model: self.learner.model.clone(),
            step: step - 1,
        });
        let t0 = Instant::now();
        let lr = self.learner.cfg.lr_at(step) * self.learner.state.lr_scale;
        let kept = &groups.kept;
        let train_eps: Vec<Episode> = kept
            .iter()
            .map(|&i| groups.sampled[i].episode.clone())
            .collect();
        let train_rewards: Vec<f32> = kept.iter().map(|&i| groups.sampled[i].paid.total).collect();
        let trees: Vec<usize> = kept.iter().map(|&i| groups.sampled[i].tree).collect();
        let tree_mode = self.env.rollout.mode == RolloutMode::Tree;
        let group = if tree_mode {
            self.env.rollout.tree.leaves_per_question()
        } else {
            g
        };
        let norm = self.learner.cfg.advantage;
        let advantages = match (tree_mode, norm) {
            (true, _) => advantage::tree_grpo(&train_rewards, &trees, group, norm),
            (false, GroupNorm::Grpo) => advantage::grpo(&train_rewards, group),
            (false, GroupNorm::DrGrpo) => advantage::dr_grpo(&train_rewards, group),
        };
        let upd = if train_eps.is_empty() {
            UpdateStats::default()
        } else {
            let batch = Batch {
                episodes: &train_eps,
                rewards: &train_rewards,
                advantages: &advantages,
                group,
            };
            let temperature = self.env.rollout.temperature;
            update(
                &mut self.learner,
                self.reference.as_ref(),
                temperature,
                &batch,
                lr,
            )
        };
        let seconds_update = t0.elapsed().as_secs_f64();
        self.learner.state.step = step;

        let sampled = &groups.sampled;
        let n = sampled.len() as f64;
        let mean = |f: &dyn Fn(&Sampled) -> f64| sampled.iter().map(f).sum::<f64>() / n;
        let reward_mean = mean(&|s| s.paid.total as f64);
        let reward_std = mean(&|s| (s.paid.total as f64 - reward_mean).powi(2)).sqrt();
        let (t, r) = (&groups.totals, &groups.totals.rollout);
        let mut metrics = StepMetrics {
            phase: None,
            step,
            reward_mean,
            reward_std,
            reward_answer: mean(&|s| s.paid.rule.answer as f64),
            reward_retrieval_format: mean(&|s| s.paid.rule.retrieval_format as f64),
            reward_answer_format: mean(&|s| s.paid.rule.answer_format as f64),
            reward_penalty: mean(&|s| s.paid.rule.penalty as f64),
            reward_retrieval_step: mean(&|s| s.paid.step.total as f64),
            format_ok_rate: mean(&|s| s.paid.rule.format_ok as u8 as f64),
            finished_rate: mean(&|s| s.episode.finished() as u8 as f64),
            em: mean(&|s| s.paid.rule.metrics.em as u8 as f64),
            cover_em: mean(&|s| s.paid.rule.metrics.cover_em as u8 as f64),
            f1: mean(&|s| s.paid.rule.metrics.f1),
            searches_mean: mean(&|s| s.episode.searches.len() as f64),
            multi_search_rate: mean(&|s| (s.episode.searches.len() >= 2) as u8 as f64),
            support_found_mean: mean(&|s| s.paid.step.support_found as f64),
            response_tokens_mean: mean(&|s| s.episode.policy_tokens() as f64),
            kl: upd.kl,
            entropy: upd.entropy,
            logprob_mismatch: upd.logprob_mismatch,
            logprob_mismatch_max: upd.logprob_mismatch_max,
            loss: upd.loss,
            clip_frac: upd.clip_frac,
            grad_norm: upd.grad_norm,
            lr,
            episodes: sampled.len(),
            groups_sampled: groups.groups_sampled,
            groups_kept: groups.groups_kept,
            questions_retired: self.questions_retired(),
            seconds_generate: r.seconds_generate,
            seconds_prefill: r.seconds_prefill,
            prefill_tokens: r.prefill_tokens,
            seconds_search: r.seconds_search,
            seconds_rollout: t.seconds_rollout,
            seconds_reward: t.seconds_reward,
            seconds_update,
            seconds_quantize,
            tokens_per_s: r.sampled_tokens as f64 / r.seconds_total.max(1e-9),
            rss_peak_mib: super::metrics::rss_peak_mib(),
            guard: None,
            sampled_tokens: r.sampled_tokens,
            episodes_per_1k_tokens: sampled.len() as f64 * 1000.0 / r.sampled_tokens.max(1) as f64,
            distinct_answers: groups.distinct_answers,
            tree: groups.tree.clone(),
            sampled_by: served.as_ref().map(|(name, _)| name.clone()),
            seconds_sync: served.as_ref().map(|&(_, secs)| secs),
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
        let cfg = self.learner.cfg.guard.clone();
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
        self.learner.state.guard_trips += 1;
        if self.learner.state.guard_trips > cfg.max_trips {
            return Err(TrainError::Collapsed {
                trips: self.learner.state.guard_trips,
                reason: trip.reason,
            });
        }
        // The trip's evidence spans steps N − steps + 1 ..= N (N = m.step), which measured the
        // weights after steps N − steps … N − 1; restore weights from before those: the newest
        // passing snapshot taken after step N − steps − 1 or earlier.
        let newest_trusted = m.step.checked_sub(trip.steps + 1);
        let restored_step = newest_trusted.and_then(|limit| {
            let good = self.passing.iter().rev().find(|s| s.step <= limit)?;
            self.learner.restore(good.model.clone());
            self.restores += 1;
            Some(good.step)
        });
        self.passing.clear();
        self.learner.state.lr_scale *= cfg.lr_factor;
        self.guard.reset();
        let event = GuardEvent {
            reason: trip.reason,
            restored_step,
            lr_scale: self.learner.state.lr_scale,
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
}
