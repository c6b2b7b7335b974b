//! The figures of one RL step: the `metrics.jsonl` line the trainer writes and the collapse
//! guard reads. They live apart from both so that neither imports the other.

use serde::{Deserialize, Serialize};

/// One line of an RL run's `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Curriculum phase that ran the step (`sleuth train` with `[[phase]]`s); absent for a
    /// single-phase run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
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
    /// Mean step-level retrieval reward (`[reward.step]`; 0 when off), included in
    /// `reward_mean`.
    #[serde(default)]
    pub reward_retrieval_step: f64,
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
    /// Fraction of episodes with two searches or more.
    #[serde(default)]
    pub multi_search_rate: f64,
    /// Mean number of distinct gold support titles the episode's searches returned (0 when the
    /// data has none).
    #[serde(default)]
    pub support_found_mean: f64,
    /// Mean policy tokens per episode.
    pub response_tokens_mean: f64,
    /// Mean KL estimate (`kl_estimator`) to the reference over the policy tokens of the micro-batches that carried
    /// gradient; `null` without a reference model or when no micro-batch carried gradient
    /// (all advantages zero), since then no forward pass ran.
    pub kl: Option<f64>,
    /// Mean policy entropy (nats) over the same tokens as `kl`; `null` when no pass ran.
    pub entropy: Option<f64>,
    /// Mean |log π_train − log π_rollout| (nats) over the same tokens as `kl`: the gap
    /// between the distribution the rollout sampled from (quantized decode weights,
    /// `[rollout] weights`) and the f32 policy the loss scores; `null` when no pass ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob_mismatch: Option<f64>,
    /// The largest such gap of one policy token this step, nats; `null` when no pass ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob_mismatch_max: Option<f64>,
    /// Mean loss per policy token.
    pub loss: f64,
    /// Fraction of policy tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Episodes sampled in the step (groups sampled × G), all of which the reward and rate
    /// figures above describe.
    pub episodes: usize,
    /// Groups (questions × G samples) rolled out in the step, over every resampling round.
    #[serde(default)]
    pub groups_sampled: usize,
    /// Groups the update trained on: with dynamic sampling, those whose rewards differ;
    /// otherwise all of them.
    #[serde(default)]
    pub groups_kept: usize,
    /// Training questions retired so far (always or never solved, `retire_after`).
    #[serde(default)]
    pub questions_retired: usize,
    /// Seconds generating (prefill + decode), excluding search.
    pub seconds_generate: f64,
    /// Seconds of `seconds_generate` spent prefilling prompts and inserted documents (the
    /// rest is batched decode steps).
    #[serde(default)]
    pub seconds_prefill: f64,
    /// Tokens prefilled in the rollout (prompts, each shared prefix once, documents).
    #[serde(default)]
    pub prefill_tokens: usize,
    /// Seconds in the retriever.
    pub seconds_search: f64,
    /// Seconds of the whole rollout phase (generate + search + bookkeeping).
    pub seconds_rollout: f64,
    /// Seconds computing rewards.
    pub seconds_reward: f64,
    /// Seconds in reference/old log-probs, backward passes and the optimizer step.
    pub seconds_update: f64,
    /// Seconds quantizing the policy for the rollout's decode engine (0 with f32 weights; for
    /// a LoRA policy after the first step, only the refresh of the adapters beside its base).
    #[serde(default)]
    pub seconds_quantize: f64,
    /// Policy tokens sampled per rollout second.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process so far, MiB (Linux `VmHWM`; absent elsewhere):
    /// what a machine needs to run this configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_peak_mib: Option<f64>,
    /// Set when the collapse guard tripped at this step: why, which weights it restored, and
    /// the learning-rate scale from now on. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardEvent>,
    /// Policy tokens sampled by the step's rollouts (all rounds; what the rollout budget
    /// bought, for comparing chain and tree steps at equal cost).
    #[serde(default)]
    pub sampled_tokens: usize,
    /// Episodes (chain samples or tree leaves) per 1,000 policy tokens sampled.
    #[serde(default)]
    pub episodes_per_1k_tokens: f64,
    /// Mean number of distinct predicted answers (normalized; no answer is one value) in a
    /// question's group: how much the group can tell right from wrong.
    #[serde(default)]
    pub distinct_answers: f64,
    /// Tree rollouts' figures (`[rollout] mode = "tree"`); absent for chains.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeMetrics>,
    /// The served adapter that sampled this step's episodes (`[rollout] engine = "openai"`,
    /// [`super::served`]): `sleuth-step-n` holds the weights after step `n`, so step `n + 1`
    /// names `sleuth-step-n`. Absent for local rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_by: Option<String>,
    /// Seconds writing the adapter and loading it on the served engine before the rollout
    /// (0 when it was loaded already). Absent for local rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_sync: Option<f64>,
}

/// A tree-rollout step's figures, over every round of the step (`tree_` fields of a metrics
/// line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeMetrics {
    /// Trees grown (questions × M).
    pub tree_trees: usize,
    /// Leaves (complete episodes) sampled.
    pub tree_leaves: usize,
    /// Nodes expanded (questions × M × L × N).
    pub tree_nodes_expanded: usize,
    /// Tokens after the prompt that expansions reused from their node instead of sampling
    /// and searching them again.
    pub tree_shared_prefix_tokens: usize,
}

/// What the guard did at a step (logged as the `guard` field of that metrics line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardEvent {
    /// Which bound tripped, with the measured value.
    pub reason: String,
    /// The step whose weights were restored (its figures passed); `None` when no step had
    /// passed yet, so nothing was restored and only the learning rate was lowered.
    pub restored_step: Option<usize>,
    /// Learning-rate scale in force from the next step on.
    pub lr_scale: f64,
}

/// Peak resident set size of this process so far, in MiB: the `VmHWM` line of
/// `/proc/self/status` (Linux). `None` where that file does not exist or does not parse.
pub fn rss_peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}
