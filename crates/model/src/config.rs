//! Llama-family hyper-parameters, mirroring Hugging Face `config.json` field for field.
//!
//! Hugging Face names are the schema (STYLE §4): a `config.json` from a model directory
//! deserializes straight into [`LlamaConfig`] ([`LlamaConfig::from_hf_json`]), and a GGUF
//! file's `llama.*` metadata is translated into the same struct by [`LlamaConfig::from_gguf`].
//! Each default is stated once, in `impl Default` (SmolLM2-135M's values).
//!
//! One struct covers three HF architectures ([`Architecture`]), which differ only in a few
//! switches the forward pass reads: Qwen2 adds q/k/v biases (`attention_bias`, implied by the
//! architecture since Qwen2's `config.json` has no such key), Qwen3 adds a per-head RMSNorm on
//! queries and keys ([`LlamaConfig::qk_norm`]) and states `head_dim` explicitly (it need not
//! equal `hidden_size / num_attention_heads`). Sources: transformers' `modeling_llama.py`,
//! `modeling_qwen2.py`, `modeling_qwen3.py`.

use serde::{Deserialize, Serialize};

use super::gguf::GgufFile;
use super::ModelError;

/// The Hugging Face model classes sleuth runs (`config.json`'s `architectures[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM2): the base layout.
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): q/k/v projections carry biases.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMSNorm over each query and key head before RoPE, explicit
    /// `head_dim`.
    Qwen3,
}

impl Architecture {
    /// Every supported class name, for error messages.
    pub const NAMES: [&'static str; 3] =
        ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    /// The architecture of an HF class name, `None` when unsupported.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            _ => None,
        }
    }

    /// The HF class name (`architectures[0]`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The HF `model_type` of the class.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// Architecture hyper-parameters of a decoder-only Llama-family model (SmolLM2, Llama 3,
/// Qwen2/2.5, Qwen3).
///
/// Field names equal Hugging Face's config classes so `config.json` loads unchanged; keys
/// sleuth does not use (`torch_dtype`, `use_cache`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// HF model class names; the first decides the [`Architecture`]. Default
    /// `["LlamaForCausalLM"]` (also what checkpoints written before this field meant).
    pub architectures: Vec<String>,
    /// HF `model_type` (`llama`, `qwen2`, `qwen3`). Default `llama`.
    pub model_type: String,
    /// Vocabulary size (tokens). Default 49152.
    pub vocab_size: usize,
    /// Width of the residual stream (d_model). Default 576.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's hidden layer. Default 1536.
    pub intermediate_size: usize,
    /// Number of decoder blocks. Default 30.
    pub num_hidden_layers: usize,
    /// Number of query heads. Default 9.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention). Default 3.
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon. Default 1e-5.
    pub rms_norm_eps: f64,
    /// RoPE base frequency θ. Default 100000.
    pub rope_theta: f64,
    /// Longest sequence the rotary table covers (tokens). Default 8192.
    pub max_position_embeddings: usize,
    /// Whether the output projection shares the token embedding matrix. Default true.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (Qwen2: true, implied by the architecture).
    /// Default false.
    pub attention_bias: bool,
    /// Dimension of one attention head when stated explicitly (Qwen3); `None` means
    /// `hidden_size / num_attention_heads`. Read it through [`LlamaConfig::head_dim`].
    /// Default `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// MLP activation; only `silu` (SwiGLU) is supported. Default `silu`.
    pub hidden_act: String,
    /// RoPE scaling (`{"rope_type": "llama3", …}` in Llama 3.1; transformers ≥ 5's
    /// `rope_parameters` is read into it). Only absent/`null` or `rope_type = "default"` is
    /// supported; anything else is refused by [`LlamaConfig::validate`] rather than silently
    /// run with the wrong positions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Beginning-of-sequence token id. Default 1.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id; a list in `config.json` (Llama 3.1) keeps its first entry.
    /// Default 2.
    #[serde(deserialize_with = "one_or_first")]
    pub eos_token_id: Option<u32>,
}

/// The f64 whose shortest decimal equals the f32's (`1e-5f32` → `1e-5`, not
/// `9.999999747378752e-6`).
fn f32_to_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Deserializes `null`, an id, or a list of ids (keeping the first) into `Option<u32>`.
fn one_or_first<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(id)) => Some(id),
        Some(OneOrMany::Many(ids)) => ids.first().copied(),
    })
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            architectures: vec![Architecture::Llama.hf_name().to_string()],
            model_type: Architecture::Llama.model_type().to_string(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            head_dim: None,
            hidden_act: "silu".to_string(),
            rope_scaling: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }
}

/// RoPE inverse frequencies `θ^(−2i/d)` for `i` in `0..head_dim/2` (`[head_dim / 2]`, radians
/// per position), in f64 so that every forward path (burn's, the fused CPU kernels, the
/// quantized decode engine) rotates by the same angles. The rotate-half layout pairs
/// dimension `i` with `i + head_dim/2`, as transformers' `LlamaRotaryEmbedding` does (RoFormer,
/// Su et al. 2021, unscaled).
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> impl Iterator<Item = f64> {
    (0..head_dim / 2).map(move |i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
}

impl LlamaConfig {
    /// Dimension of one attention head: the explicit `head_dim` when set (Qwen3), else
    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The architecture `architectures[0]` names; an empty list means Llama.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a class name sleuth cannot run.
    pub fn architecture(&self) -> Result<Architecture, ModelError> {
        match self.architectures.first() {
            None => Ok(Architecture::Llama),
            Some(name) => Architecture::from_hf_name(name).ok_or_else(|| {
                ModelError::Config(format!(
                    "architecture {name:?} is not supported (supported: {})",
                    Architecture::NAMES.join(", ")
                ))
            }),
        }
    }

    /// Whether attention normalizes each query and key head (Qwen3's `q_norm`/`k_norm`).
    pub fn qk_norm(&self) -> bool {
        matches!(self.architecture(), Ok(Architecture::Qwen3))
    }

    /// A config for `arch` with its class name and `model_type` filled in, otherwise
    /// `self`'s values.
    pub fn with_architecture(mut self, arch: Architecture) -> Self {
        self.architectures = vec![arch.hf_name().to_string()];
        self.model_type = arch.model_type().to_string();
        if arch == Architecture::Qwen2 {
            self.attention_bias = true;
        }
        self
    }

    /// Parses a Hugging Face `config.json` text: the HF keys as the schema, the architecture
    /// checked, Qwen2's implied q/k/v biases set, and [`LlamaConfig::validate`] run.
    ///
    /// # Errors
    /// [`ModelError::Config`] for malformed JSON, a wrong type, an unsupported architecture or
    /// activation, or inconsistent sizes; the caller adds the file name.
    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        let bad = |m: String| ModelError::Config(m);
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if !raw.is_object() {
            return Err(bad("expected a JSON object".into()));
        }
        // Switches sleuth does not implement: refuse rather than run a different model.
        for key in ["mlp_bias", "use_sliding_window"] {
            if raw.get(key).and_then(|v| v.as_bool()) == Some(true) {
                return Err(bad(format!("{key} = true is not supported")));
            }
        }
        let mut cfg: Self = serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        // transformers ≥ 5 writes RoPE as `rope_parameters: {rope_theta, rope_type}`; 4.x
        // files have a top-level `rope_theta` (and `rope_scaling`). Both load.
        if let Some(params) = raw.get("rope_parameters").filter(|p| !p.is_null()) {
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                cfg.rope_theta = theta;
            }
            cfg.rope_scaling = Some(params.clone());
        }
        let arch = cfg.architecture()?;
        let cfg = if arch == Architecture::Qwen2 {
            Self {
                attention_bias: true,
                ..cfg
            }
        } else {
            cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the divisibility constraints the forward pass relies on.
    ///
    /// # Errors
    /// [`ModelError::Config`] when heads do not divide the width, kv heads do not divide the
    /// query heads, or the head dimension is odd (RoPE rotates pairs).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        self.architecture()?;
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only \"silu\", SwiGLU)",
                self.hidden_act
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if !scaling.is_null() && kind != "default" {
                return bad(format!(
                    "rope_scaling {scaling} is not supported (only unscaled RoPE)"
                ));
            }
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        if self.num_attention_heads == 0
            || (self.head_dim.is_none()
                && !self.hidden_size.is_multiple_of(self.num_attention_heads))
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Reads the architecture from a GGUF file's `llama.*` metadata (llama.cpp's key names).
    ///
    /// # Errors
    /// [`ModelError::Gguf`] when a required key is missing or mistyped, or the architecture is
    /// not `llama`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Config(format!(
                "unsupported GGUF architecture {arch:?} (expected \"llama\")"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let has_output = gguf.tensors().iter().any(|t| t.name == "output.weight");
        let heads = gguf.get_u32(&key("attention.head_count"))? as usize;
        let cfg = Self {
            vocab_size: tokens.len(),
            hidden_size: gguf.get_u32(&key("embedding_length"))? as usize,
            intermediate_size: gguf.get_u32(&key("feed_forward_length"))? as usize,
            num_hidden_layers: gguf.get_u32(&key("block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: gguf
                .get_u32(&key("attention.head_count_kv"))
                .map(|v| v as usize)
                .unwrap_or(heads),
            // Through the shortest decimal of the f32, so 1e-5 stays 1e-5 in exported configs.
            rms_norm_eps: f32_to_f64(gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?),
            rope_theta: f32_to_f64(gguf.get_f32(&key("rope.freq_base")).unwrap_or(10000.0)),
            max_position_embeddings: gguf
                .get_u32(&key("context_length"))
                .map(|v| v as usize)
                .unwrap_or(2048),
            tie_word_embeddings: !has_output,
            attention_bias: gguf.tensors().iter().any(|t| t.name == "blk.0.attn_q.bias"),
            bos_token_id: gguf.get_u32("tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: gguf.get_u32("tokenizer.ggml.eos_token_id").ok(),
            ..Self::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A tiny configuration for tests and the CI learning test: a few layers, small width,
    /// the real vocabulary size so the real tokenizer can drive it.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 2048,
            ..Self::default()
        }
    }
}
