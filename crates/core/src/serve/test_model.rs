//! Tiny policies for tests, CI and load runs: the real tokenizer driving a model small
//! enough to answer in milliseconds.
//!
//! [`random`] is a 2-layer random-weight Llama ([`LlamaConfig::tiny`]): it writes noise,
//! which exercises the whole serving path (queueing, batching, streaming, cancellation,
//! usage) at thousands of tokens per second; the text-splitting of answers and searches is
//! unit-tested on its own in [`super::worker`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use burn::tensor::backend::Backend;

use crate::model::{Llama, LlamaConfig, Tokenizer};

/// A random tiny model over `tokenizer`'s vocabulary, seeded.
pub fn random<B: Backend>(tokenizer: &Tokenizer, seed: u64, device: &B::Device) -> Llama<B> {
    B::seed(device, seed);
    Llama::random(&LlamaConfig::tiny(tokenizer.vocab_size()), device)
}
