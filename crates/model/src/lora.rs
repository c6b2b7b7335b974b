//! LoRA: a trainable low-rank update beside each frozen linear weight.
//!
//! `y = x·W + (α / r)·(x·A)·B` with `W` `[in, out]` frozen, `A` `[in, r]` and `B` `[r, out]`
//! trained (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
//! arXiv 2106.09685). Initialisation follows Hugging Face PEFT's `LoraLayer.reset_lora_parameters`
//! (default `init_lora_weights = True`): `A` kaiming-uniform with `a = √5`, which for a fan-in of
//! `in` is `U(−1/√in, 1/√in)`, and `B` zero, so an adapted model starts as exactly its base.
//! PEFT stores `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`, the transposes of
//! `A` and `B` here (burn's `y = x · W` convention, as for the base weights).
//!
//! Design: the adapter is an optional field of [`Linear`](crate::llama::Linear), so every
//! forward path — the training forward, the shared-prompt forward, prefill and decode on the
//! burn backend — applies it with no other change. `Llama::with_lora` (in `llama.rs`, beside
//! the model it prepares, so this module depends on nothing above it) marks every base
//! parameter `require_grad = false`: autodiff then computes no gradient for them (the fused
//! linear backward skips `dW` for an untracked weight), AdamW keeps no moments for them, and
//! the optimizer step leaves them untouched. The Hugging Face export and a quantized engine
//! built once (eval, serve) read [`Linear::merged_weight`](crate::llama::Linear::merged_weight):
//! the base plus the low-rank product, folded in. A LoRA trainer's rollout engine instead
//! quantizes the frozen base once and applies the adapters beside it in f32
//! ([`QuantLlama::from_base`](crate::QuantLlama::from_base), QLoRA's placement), so an update
//! costs a copy of the adapters rather than a re-quantization of every weight.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which linear layers get an adapter, by their Hugging Face module names (the names PEFT's
/// `target_modules` and vLLM's LoRA loader use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// `self_attn.q_proj`.
    QProj,
    /// `self_attn.k_proj`.
    KProj,
    /// `self_attn.v_proj`.
    VProj,
    /// `self_attn.o_proj`.
    OProj,
    /// `mlp.gate_proj`.
    GateProj,
    /// `mlp.up_proj`.
    UpProj,
    /// `mlp.down_proj`.
    DownProj,
}

impl LoraTarget {
    /// All seven, in the order of a decoder layer (PEFT's `"all-linear"` for Llama models,
    /// the output head excluded).
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];

    /// The Hugging Face module name (`"q_proj"`, …).
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::OProj => "o_proj",
            LoraTarget::GateProj => "gate_proj",
            LoraTarget::UpProj => "up_proj",
            LoraTarget::DownProj => "down_proj",
        }
    }
}

/// `[train] lora = { rank, alpha, targets }`: the adapters' shape. Defaults (each stated
/// here once): rank 8, α 16, all seven linear layers of every decoder layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of each update (columns of `A`, rows of `B`).
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank` (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// The linear layers that get an adapter, by Hugging Face module name.
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: LoraTarget::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// Checks the settings: a rank of at least 1, a finite positive α, at least one target.
    ///
    /// # Errors
    /// A sentence naming the key and the value it got.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("[train] lora.rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!(
                "[train] lora.alpha must be a positive number, got {}",
                self.alpha
            ));
        }
        if self.targets.is_empty() {
            return Err(
                "[train] lora.targets names no layer (use q_proj, k_proj, v_proj, o_proj, \
                 gate_proj, up_proj, down_proj)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// One adapter: `A` `[in, rank]`, `B` `[rank, out]` and `α` (the update is scaled by
/// `α / rank`; module docs).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Down projection `[in, rank]` (PEFT's `lora_A.weight`, transposed).
    pub a: Param<Tensor<B, 2>>,
    /// Up projection `[rank, out]` (PEFT's `lora_B.weight`, transposed); zero when new.
    pub b: Param<Tensor<B, 2>>,
    /// PEFT's `lora_alpha`: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter for a `[d_in, d_out]` weight: `A ~ U(−1/√in, 1/√in)` drawn from `rng`,
    /// `B = 0` (PEFT's default initialisation).
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: usize,
        alpha: f64,
        rng: &mut impl Rng,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> = (0..d_in * rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Self {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, rank]), device)),
            b: Param::from_tensor(Tensor::zeros([rank, d_out], device)),
            alpha,
        }
    }

    /// The update's contribution for rows `x` `[n, in]` → `[n, out]`: `scale · (x·A)·B`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.a.val())
            .matmul(self.b.val())
            .mul_scalar(self.scale())
    }

    /// `alpha / rank`, the factor on `(x·A)·B`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }

    /// The update as a dense weight, `scale · A·B` `[in, out]`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale())
    }

    /// The rank (columns of `A`).
    pub fn rank(&self) -> usize {
        self.a.val().dims()[1]
    }
}
