//! The policy: a Llama-family decoder in burn, its weights and tokenizer loaded from GGUF,
//! a per-row KV cache, and seeded sampling.
//!
//! Layout (after llama-burn): [`config`] mirrors HF `config.json`; [`llama`] is the forward
//! pass; [`kv_cache`] the cache; [`sampling`] the sampler; [`gguf`] reads and dequantizes GGUF
//! files; [`tokenizer`] builds the byte-level BPE tokenizer from GGUF metadata; [`load`] maps
//! GGUF tensors onto the HF-named modules; [`generate`] the batched, stop-string-aware
//! generation loop that the rollout environment drives; [`decoder`] the seam between that loop
//! and a forward pass; [`quant`] the CPU decode engine over block-quantized weights (Q8_0,
//! Q4_1) that rollouts, evaluation and serving use by default.
//!
//! Backends are type aliases chosen at compile time ([`backend`]): burn's `flex` CPU backend
//! by default, CUDA with the `cuda` feature. Weights are f32 in memory.

pub mod backend;
pub mod config;
pub mod decoder;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

pub use config::LlamaConfig;
pub use decoder::{DecodeCache, DecodeWeights, Decoder, Engine};
pub use generate::{text_of, BatchGenerator, StopReason};
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use quant::{QuantFormat, QuantLlama};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::Tokenizer;

/// Errors raised while loading or running the policy model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF file could not be read or decoded.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
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
    /// A model path that is neither a GGUF file nor a supported model directory.
    #[error(
        "{path}: not a GGUF file (Hugging Face safetensors directories are not supported yet)"
    )]
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
