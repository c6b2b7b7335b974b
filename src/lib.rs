//! sleuth: train language models to search while they reason.
//!
//! The library is organised one folder per concept (see `ARCHITECTURE.md`):
//! [`corpus`] passages, [`index`] BM25 and graph-RAG index building, [`search`] the
//! [`search::Retriever`] seam, [`embed`] text embedders for the RAPTOR tree (all-MiniLM-L6-v2
//! in burn, hashed TF-IDF), [`llm`] the OpenAI-compatible chat client for optional LLM graph
//! extraction and summaries, [`model`] the policy (Llama forward pass in burn, GGUF loading,
//! tokenizer, sampling), [`env`] the rollout environment, [`reward`] metrics and reward rules,
//! [`rl`] GRPO / Reinforce++ training, [`eval`] running QA sets, [`plot`] training curves. The
//! `sleuth` binary is a thin clap CLI over it.
#![warn(missing_docs)]

pub mod config;
pub mod corpus;
pub mod curriculum;
pub mod embed;
pub mod env;
pub mod eval;
pub mod index;
pub mod llm;
pub mod model;
pub mod plot;
pub mod reward;
pub mod rl;
pub mod search;
pub mod serve;
