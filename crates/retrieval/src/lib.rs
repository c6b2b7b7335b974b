//! sleuth's retrieval layer: passages, indexes, the `Retriever` seam and its backends, and the
//! I/O they share.
//!
//! [`corpus`] reads passage corpora `{id, title, text}` (and prepares them from public dumps);
//! [`index`] builds the tantivy BM25 index and the graph-RAG indexes (passage graph, KG /
//! textual KG / rich KG, RAPTOR tree); [`embed`] holds the embedders the tree uses
//! (all-MiniLM-L6-v2 in burn, hashed TF-IDF); [`search`] opens any of them, online web search
//! or a remote retrieval server behind one [`search::Retriever`] trait, and serves an index
//! over HTTP; [`llm`] is the OpenAI-compatible chat client for optional LLM graph extraction
//! and summaries (and the judge above); [`data`] downloads the public data files a manifest
//! lists. Beside them, the I/O every layer above shares: [`http`] (one client, one accept
//! loop), [`atomic`] (temp-then-rename writes), [`progress`] (progress lines) and the
//! reproducible hashes in [`hash`].
//!
//! This crate sits between the policy (`sleuth-model`, whose burn modules the MiniLM encoder
//! reuses) and the `sleuth` crate (environment, rewards, RL, evaluation, serving), which
//! re-exports every module here under the same name, so `sleuth::search::Bm25Retriever` and
//! `sleuth_retrieval::search::Bm25Retriever` are one type. Nothing here knows about policies,
//! rollouts or training: a retriever answers a query string with passages.
//!
//! The `online` feature (on by default) builds the online web backend (`search::online`:
//! SearXNG / DuckDuckGo, HTML fetching and cleaning with scraper); without it, a config
//! naming `backend = "online"` is refused with a sentence saying so.
#![warn(missing_docs)]

pub mod atomic;
pub mod corpus;
pub mod data;
pub mod embed;
pub mod hash;
pub mod http;
pub mod index;
pub mod llm;
pub mod progress;
pub mod search;
