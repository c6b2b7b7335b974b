//! The seam between generation and a forward pass: [`Decoder`].
//!
//! [`crate::BatchGenerator`] (and through it rollouts, evaluation, `collect` and the
//! chat server) needs three things of a model: a KV cache whose rows grow independently, a
//! prefill of one row, and a batched decode step. Two implementations exist: burn's f32
//! [`Llama`] (any backend, the same weights the trainer updates) and the CPU engine over
//! block-quantized weights ([`QuantLlama`], several times faster per decoded token on the
//! CPU). [`Engine`] picks one at run time from `[rollout] weights`.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::kv_cache::KvCache;
use super::llama::Llama;
use super::load::to_host;
use super::quant::{QuantCache, QuantFormat, QuantLlama};

/// A KV cache as the generator sees it.
pub trait DecodeCache {
    /// Tokens per row the cache can hold.
    fn capacity(&self) -> usize;
    /// Tokens cached in `row`.
    fn len(&self, row: usize) -> usize;
    /// Copies row `src`'s cached tokens into each row of `dst`.
    fn fork_row(&mut self, src: usize, dst: &[usize]);
}

/// A forward pass that generation can drive (module docs).
pub trait Decoder {
    /// The model's KV cache.
    type Cache: DecodeCache;

    /// An empty cache for `rows` sequences of up to `capacity` tokens each.
    fn new_cache(&self, rows: usize, capacity: usize) -> Self::Cache;

    /// Logits per token.
    fn vocab_size(&self) -> usize;

    /// Appends `tokens` (non-empty, fitting the capacity) to `row`; returns the logits of the
    /// last one, `[vocab]`.
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut Self::Cache) -> Vec<f32>;

    /// Appends `tokens[r]` to every row with `active[r]`; returns logits `[rows, vocab]`
    /// (row-major; inactive rows' values are unspecified).
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut Self::Cache) -> Vec<f32>;
}

impl<B: Backend> DecodeCache for KvCache<B> {
    fn capacity(&self) -> usize {
        KvCache::capacity(self)
    }
    fn len(&self, row: usize) -> usize {
        KvCache::len(self, row)
    }
    fn fork_row(&mut self, src: usize, dst: &[usize]) {
        KvCache::fork_row(self, src, dst)
    }
}

impl<B: Backend> Decoder for Llama<B> {
    type Cache = KvCache<B>;

    fn new_cache(&self, rows: usize, capacity: usize) -> KvCache<B> {
        let attn = &self.layers[0].self_attn;
        KvCache::new(
            self.layers.len(),
            rows,
            attn.n_kv_heads,
            attn.head_dim,
            capacity,
            &self.embed_tokens.device(),
        )
    }
    fn vocab_size(&self) -> usize {
        Llama::vocab_size(self)
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut KvCache<B>) -> Vec<f32> {
        to_host(Llama::prefill_row(self, row, tokens, cache))
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut KvCache<B>) -> Vec<f32> {
        to_host(Llama::decode_step(self, tokens, active, cache))
    }
}

impl DecodeCache for QuantCache {
    fn capacity(&self) -> usize {
        QuantCache::capacity(self)
    }
    fn len(&self, row: usize) -> usize {
        QuantCache::len(self, row)
    }
    fn fork_row(&mut self, src: usize, dst: &[usize]) {
        QuantCache::fork_row(self, src, dst)
    }
}

impl Decoder for QuantLlama {
    type Cache = QuantCache;

    fn new_cache(&self, rows: usize, capacity: usize) -> QuantCache {
        QuantLlama::new_cache(self, rows, capacity)
    }
    fn vocab_size(&self) -> usize {
        QuantLlama::vocab_size(self)
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut QuantCache) -> Vec<f32> {
        QuantLlama::prefill_row(self, row, tokens, cache)
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut QuantCache) -> Vec<f32> {
        QuantLlama::decode_step(self, tokens, active, cache)
    }
}

/// Which weights generation decodes from (`[rollout] weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeWeights {
    /// burn's f32 forward pass: bit-for-bit the weights the trainer scores with.
    F32,
    /// The quantized CPU engine, 8-bit blocks (default: log-prob mismatch with the f32 policy
    /// is small; see docs/performance.md).
    #[default]
    Q8_0,
    /// The quantized CPU engine, 4-bit blocks (the default GGUF's own format).
    Q4_1,
}

impl DecodeWeights {
    /// The quantized format, or `None` for f32.
    pub fn quant_format(self) -> Option<QuantFormat> {
        match self {
            DecodeWeights::F32 => None,
            DecodeWeights::Q8_0 => Some(QuantFormat::Q8_0),
            DecodeWeights::Q4_1 => Some(QuantFormat::Q4_1),
        }
    }
}

impl DecodeWeights {
    /// The config / flag name (`f32`, `q8_0`, `q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            DecodeWeights::F32 => "f32",
            DecodeWeights::Q8_0 => "q8_0",
            DecodeWeights::Q4_1 => "q4_1",
        }
    }
}

impl std::str::FromStr for DecodeWeights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [DecodeWeights::F32, DecodeWeights::Q8_0, DecodeWeights::Q4_1]
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown decode weights {s:?} (expected f32, q8_0 or q4_1)"))
    }
}

/// A decoder chosen at run time: the f32 burn model itself, or a quantized copy of it.
#[derive(Debug)]
pub enum Engine<'m, B: Backend> {
    /// Decode with the burn model.
    F32(&'m Llama<B>),
    /// Decode with a quantized copy.
    Quantized(Box<QuantLlama>),
}

impl<'m, B: Backend> Engine<'m, B> {
    /// The engine `weights` asks for: `model` itself, or its quantization (one pass over the
    /// weights). A model whose layer widths are not multiples of 32 cannot be quantized; it
    /// decodes in f32, with a warning.
    pub fn new(model: &'m Llama<B>, weights: DecodeWeights) -> Self {
        match weights.quant_format() {
            None => Engine::F32(model),
            Some(f) if QuantLlama::supports(model) => {
                Engine::Quantized(Box::new(QuantLlama::from_llama(model, f)))
            }
            Some(f) => {
                tracing::warn!(
                    "layer widths are not multiples of 32: decoding in f32 instead of {}",
                    f.name()
                );
                Engine::F32(model)
            }
        }
    }
}

/// The cache of an [`Engine`].
#[derive(Debug)]
pub enum EngineCache<B: Backend> {
    /// burn's cache.
    F32(KvCache<B>),
    /// The quantized engine's cache.
    Quantized(QuantCache),
}

impl<B: Backend> DecodeCache for EngineCache<B> {
    fn capacity(&self) -> usize {
        match self {
            EngineCache::F32(c) => c.capacity(),
            EngineCache::Quantized(c) => c.capacity(),
        }
    }
    fn len(&self, row: usize) -> usize {
        match self {
            EngineCache::F32(c) => c.len(row),
            EngineCache::Quantized(c) => c.len(row),
        }
    }
    fn fork_row(&mut self, src: usize, dst: &[usize]) {
        match self {
            EngineCache::F32(c) => c.fork_row(src, dst),
            EngineCache::Quantized(c) => c.fork_row(src, dst),
        }
    }
}

const MISMATCHED: &str = "engine and cache kinds differ";

impl<B: Backend> Decoder for Engine<'_, B> {
    type Cache = EngineCache<B>;

    fn new_cache(&self, rows: usize, capacity: usize) -> EngineCache<B> {
        match self {
            Engine::F32(m) => EngineCache::F32(Decoder::new_cache(*m, rows, capacity)),
            Engine::Quantized(m) => EngineCache::Quantized(m.new_cache(rows, capacity)),
        }
    }
    fn vocab_size(&self) -> usize {
        match self {
            Engine::F32(m) => Decoder::vocab_size(*m),
            Engine::Quantized(m) => m.vocab_size(),
        }
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut EngineCache<B>) -> Vec<f32> {
        match (self, cache) {
            (Engine::F32(m), EngineCache::F32(c)) => Decoder::prefill_row(*m, row, tokens, c),
            (Engine::Quantized(m), EngineCache::Quantized(c)) => m.prefill_row(row, tokens, c),
            _ => unreachable!("{MISMATCHED}"),
        }
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut EngineCache<B>) -> Vec<f32> {
        match (self, cache) {
            (Engine::F32(m), EngineCache::F32(c)) => Decoder::decode_step(*m, tokens, active, c),
            (Engine::Quantized(m), EngineCache::Quantized(c)) => m.decode_step(tokens, active, c),
            _ => unreachable!("{MISMATCHED}"),
        }
    }
}
