//! The policy: a Llama-family decoder in burn (Llama, Qwen2, Qwen3), its weights and
//! tokenizer loaded from a GGUF file or a Hugging Face model directory, a per-row KV cache,
//! and seeded sampling.
//!
//! Layout (after llama-burn): [`config`] mirrors HF `config.json`; [`llama`] is the forward
//! pass; [`kv_cache`] the cache; [`sampling`] the sampler; [`gguf`] reads and dequantizes GGUF
//! files; [`hf`] reads (and [`hf::export`] writes) Hugging Face directories: `config.json`,
//! `tokenizer.json`, safetensors; [`tokenizer`] builds the byte-level BPE tokenizer from GGUF
//! metadata or `tokenizer.json`; [`chat`] renders a model's Jinja chat template; [`mod@load`]
//! builds the HF-named modules from either source's tensors; [`generate`] the batched, stop-string-aware
//! generation loop that the rollout environment drives; [`decoder`] the seam between that loop
//! and a forward pass; [`quant`] the CPU decode engine over block-quantized weights (Q8_0,
//! Q4_1) that rollouts, evaluation and serving use by default.
//!
//! Backends are type aliases chosen at compile time ([`backend`]): burn's `flex` CPU backend
//! by default, CUDA with the `cuda` feature. Weights are f32 in memory.

#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod lora;
pub mod quant;
pub mod sampling;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

pub use config::{Architecture, LlamaConfig};
pub use decoder::{DecodeCache, DecodeWeights, Decoder, Engine};
pub use generate::{text_of, BatchGenerator, RowStart, StopReason};
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use lora::{LoraConfig, LoraTarget};
pub use quant::{QuantFormat, QuantLlama};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::Tokenizer;

/// Errors raised while loading or running the policy model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF file could not be read or decoded.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// A Hugging Face model directory could not be read (names the file and tensor).
    #[error(transparent)]
    Hf(#[from] hf::HfError),
    /// The tokenizer could not be built or failed on input.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// Inconsistent or unsupported hyper-parameters.
    #[error("model config: {0}")]
    Config(String),
    /// A weight tensor's shape disagrees with the config.
    #[error("tensor {tensor}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// Tensor name.
        tensor: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A model path that is neither a GGUF file nor a Hugging Face model directory.
    #[error("{path}: a directory without config.json (expected a GGUF file or a Hugging Face model directory)")]
    UnsupportedFormat {
        /// The path given.
        path: PathBuf,
    },
    /// A prompt or rollout longer than the KV cache holds.
    #[error("sequence of {tokens} tokens exceeds the context capacity of {capacity}")]
    ContextOverflow {
        /// Tokens needed.
        tokens: usize,
        /// Tokens available.
        capacity: usize,
    },
}

/// A loaded policy: config, weights on a device, and tokenizer.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    /// Architecture.
    pub config: LlamaConfig,
    /// Weights.
    pub model: Llama<B>,
    /// Tokenizer from the same file.
    pub tokenizer: Tokenizer,
}

/// Loads a policy from `path`: a Hugging Face model directory ([`hf::load_hf_dir`]) or a GGUF
/// file ([`load_gguf`]). This is what every command's model path goes through.
///
/// # Errors
/// [`ModelError::UnsupportedFormat`] for a directory without `config.json`; the loader's
/// errors otherwise (each naming the file, and the tensor where there is one).
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>, ModelError> {
    if hf::is_hf_dir(path) {
        return hf::load_hf_dir(path, device);
    }
    load_gguf(path, device)
}

/// Loads only the tokenizer of the model at `path` (directory or GGUF file).
///
/// # Errors
/// As [`load()`], for the config and tokenizer files only.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, ModelError> {
    if hf::is_hf_dir(path) {
        let cfg = hf::read_config(path)?;
        return hf::read_tokenizer(path, &cfg);
    }
    if path.is_dir() {
        return Err(ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
        });
    }
    let file = gguf::GgufFile::open(path)?;
    Ok(Tokenizer::from_gguf(&file)?)
}

/// Loads a Llama GGUF file (weights dequantized to f32) and its tokenizer onto `device`.
///
/// # Errors
/// [`ModelError::UnsupportedFormat`] for a path that is not a GGUF file; GGUF, tokenizer and
/// shape errors otherwise.
pub fn load_gguf<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    if path.is_dir() {
        return Err(ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
        });
    }
    let file = gguf::GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let model = load::llama_from_gguf::<B>(&file, &config, device)?;
    Ok(LoadedModel {
        config,
        model,
        tokenizer,
    })
}
