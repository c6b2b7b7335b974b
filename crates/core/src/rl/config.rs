//! Training hyper-parameters (`[train]` in an env config): one struct for SFT and RL, each
//! default stated once, in its `Default`.

use serde::{Deserialize, Serialize};

use super::advantage::{Algo, GroupNorm};
use super::guard::GuardConfig;
use super::loss::KlEstimator;
use crate::model::fused::Precision;
use crate::model::LoraConfig;
#[cfg(test)]
use crate::model::LoraTarget;

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
    /// Precision of the policy's (and the reference model's) matrix products in the training
    /// forward and backward passes: `f32`, or `bf16` — operands rounded to bf16, products
    /// summed in f32 on AMX tiles ([`crate::model::fused::linear`]; mixed precision as
    /// Micikevicius et al. 2018 and Kalamkar et al. 2019 describe, weights, gradients and
    /// AdamW's moments kept f32). `bf16` needs AMX-BF16 (Intel Xeon 4th generation on);
    /// elsewhere it trains in f32 and says so. Rollouts are not affected (the quantized
    /// engine). Default `f32` (docs/performance.md, "bf16 training on AMX", has the speed and
    /// parity figures).
    pub precision: Precision,
    /// Train low-rank adapters instead of every weight: `lora = { rank = 8, alpha = 16,
    /// targets = ["q_proj", "v_proj"] }` (Hugging Face module names; the keys left out take
    /// [`LoraConfig`]'s defaults: rank 8, alpha 16, all seven linear layers). The base model is
    /// frozen — no gradients and no AdamW moments for it — and only the adapters change
    /// ([`crate::model::lora`], Hu et al. 2021). Without it every weight trains (a model that
    /// arrives with adapters has them folded into its weights first). Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
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
            precision: Precision::F32,
            lora: None,
            sft_stop_entropy: 0.0,
            guard: GuardConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `precision` reads as written in configs, defaults to f32, and a misspelt value is refused
    /// with the accepted ones named.
    #[test]
    fn precision_reads_f32_and_bf16_and_refuses_others() {
        let read = |s: &str| toml::from_str::<TrainConfig>(s);
        assert_eq!(read("").unwrap().precision, Precision::F32);
        assert_eq!(
            read("precision = \"bf16\"").unwrap().precision,
            Precision::Bf16
        );
        assert_eq!(
            read("precision = \"f32\"").unwrap().precision,
            Precision::F32
        );
        let err = read("precision = \"fp8\"").unwrap_err().to_string();
        assert!(err.contains("bf16") && err.contains("f32"), "{err}");
    }

    /// `lora` is off by default, fills left-out keys with its defaults, reads HF module names
    /// and refuses a misspelt one with the accepted names.
    #[test]
    fn lora_reads_hf_module_names_with_defaults() {
        let read = |s: &str| toml::from_str::<TrainConfig>(s);
        assert_eq!(read("").unwrap().lora, None);
        let l = read("lora = { rank = 4 }").unwrap().lora.unwrap();
        assert_eq!((l.rank, l.alpha), (4, LoraConfig::default().alpha));
        assert_eq!(l.targets.len(), 7);
        let l = read("lora = { targets = [\"q_proj\", \"down_proj\"] }")
            .unwrap()
            .lora
            .unwrap();
        assert_eq!(l.targets, vec![LoraTarget::QProj, LoraTarget::DownProj]);
        assert_eq!(l.rank, LoraConfig::default().rank);
        let err = read("lora = { targets = [\"qproj\"] }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q_proj") && err.contains("down_proj"), "{err}");
        let zero = read("lora = { rank = 0 }").unwrap().lora.unwrap();
        assert!(zero.validate().unwrap_err().contains("lora.rank"));
        // What a phase table serializes reads back the same.
        let cfg = read("lora = { rank = 2, alpha = 4.0 }").unwrap();
        let back: TrainConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back.lora, cfg.lora);
    }
}
