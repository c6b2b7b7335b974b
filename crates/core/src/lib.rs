//! sleuth: train language models to search while they reason.
//!
//! The library is organised one folder per concept (see `ARCHITECTURE.md`):
//! [`corpus`] passages, [`index`] BM25 and graph-RAG index building, [`search`] the
//! [`search::Retriever`] seam, [`embed`] text embedders for the RAPTOR tree (all-MiniLM-L6-v2
//! in burn, hashed TF-IDF), [`llm`] the OpenAI-compatible chat client for optional LLM graph
//! extraction and summaries, [`model`] the policy (Llama forward pass in burn, GGUF loading,
//! tokenizer, sampling), [`mod@env`] the rollout environment, [`reward`] metrics and reward rules,
//! [`rl`] GRPO / Reinforce++ training and the run loop, [`eval`] running QA sets, [`plot`]
//! training curves, and [`curriculum`] a config's phases as one run. The `sleuth` binary (the
//! workspace's root package, `sleuth-cli`) parses flags and calls these modules; this crate
//! depends on neither clap nor anyhow.
//!
//! # One episode, end to end
//!
//! Index three passages, open them as a [`search::Retriever`], and run one rollout of a policy
//! against them: the environment decodes, and whenever the policy closes
//! `<|begin_of_query|> … <|end_of_query|>` it searches and inserts the passages as mask-0
//! tokens (DESIGN §2). The policy here is a tiny random-weight Llama driven by the default
//! model's tokenizer, so it babbles; `sleuth train` is what teaches it to search.
//!
//! ```
//! use sleuth::corpus::Passage;
//! use std::sync::Arc;
//! use sleuth::env::{rollout, Env, PromptConfig, RolloutConfig};
//! use sleuth::index::{build_bm25, IndexOptions};
//! use sleuth::model::backend::{self, Inference};
//! use sleuth::model::{gguf::GgufFile, Llama, LlamaConfig, Sampler, Tokenizer};
//! use sleuth::search::{Bm25Retriever, Retriever};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let model_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
//! #     .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
//! # if !model_file.exists() { return Ok(()); } // scripts/setup installs it
//! // 1. A BM25 index over passages {id, title, text} (atomically built in a folder).
//! let dir = tempfile::tempdir()?;
//! let passage = |id: &str, title: &str, text: &str| Passage {
//!     id: id.into(), title: title.into(), text: text.into(),
//! };
//! let passages = vec![
//!     passage("1", "Arrowhead Stadium", "Arrowhead Stadium is home of the Kansas City Chiefs."),
//!     passage("2", "AFC West", "The AFC West is a division of the National Football League."),
//!     passage("3", "Lamar Hunt", "Lamar Hunt founded the American Football League."),
//! ];
//! let opts = IndexOptions { progress: false, ..Default::default() };
//! build_bm25(passages.into_iter().map(Ok), &dir.path().join("bm25"), &opts)?;
//! let retriever = Bm25Retriever::open(dir.path().join("bm25"))?;
//! let hits = retriever.search("Which team plays at Arrowhead Stadium?", 2)?;
//! assert_eq!(hits[0].title, "Arrowhead Stadium");
//!
//! // 2. A policy: the tokenizer of a GGUF file and a tiny random Llama of its vocabulary.
//! let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&model_file)?)?;
//! let device = backend::device();
//! let policy = Llama::<Inference>::random(&LlamaConfig::tiny(tokenizer.vocab_size()), &device);
//!
//! // 3. The environment (tokenizer, retriever, prompt, rollout settings) and one rollout:
//! //    G = 2 episodes of at most 24 policy tokens, seeded sampling.
//! let cfg = RolloutConfig { samples_per_question: 2, max_new_tokens: 24, ..Default::default() };
//! let env = Env {
//!     tokenizer, retriever: Arc::new(retriever), prompt: PromptConfig::default(), rollout: cfg.clone(),
//! };
//! let mut sampler = Sampler::new(cfg.sampling(7));
//! let question = "Which stadium do the Kansas City Chiefs play in?".to_string();
//! let (episodes, stats) = rollout(&policy, &env, &[question], &mut sampler)?;
//! assert_eq!(episodes.len(), 2);
//! for ep in &episodes {
//!     // Loss mask: 1 exactly on the tokens the policy sampled, never on the prompt.
//!     assert_eq!(ep.mask.len(), ep.tokens.len());
//!     assert!(ep.mask[..ep.prompt_len].iter().all(|&m| m == 0));
//!     assert!(ep.policy_tokens() <= cfg.max_new_tokens);
//! }
//! println!("{} tokens sampled in {:.2} s", stats.sampled_tokens, stats.seconds_total);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod curriculum;
pub mod env;
pub mod eval;
#[cfg(feature = "plot")]
pub mod plot;
pub mod qa;
pub mod reward;
pub mod rl;
#[cfg(feature = "serve")]
pub mod serve;

// The layers below, re-exported so every path reads `sleuth::…`: the policy (crates/model)
// and retrieval (crates/retrieval).
pub use sleuth_model as model;
pub(crate) use sleuth_retrieval::hash;
pub use sleuth_retrieval::{atomic, corpus, data, embed, http, index, llm, progress, search};
