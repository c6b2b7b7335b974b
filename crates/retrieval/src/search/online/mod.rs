//! Online search: a [`Retriever`](crate::search::Retriever) over the live web (DESIGN §6).
//!
//! One search is: query the configured engine ([`Engine::Searxng`] JSON API or
//! [`Engine::Duckduckgo`]'s HTML page) → take the top [`OnlineConfig::fetch_pages`] http(s)
//! results → fetch those pages **concurrently** → extract readable text ([`extract`]: no
//! scripts, styles, navigation or footers) → split into passages of about
//! [`OnlineConfig::passage_words`] words → rank them, together with the engine's own snippets,
//! against the query with BM25 ([`rank`]) → top-k [`Hit`](crate::search::Hit)s shaped like local ones
//! (`title` = page title, `id` = `url#n`).
//!
//! **Bounded by construction**, so a rollout never hangs on the web: every request has a
//! connect timeout and a total timeout (which covers reading the body), a redirect cap that
//! also refuses non-http(s) targets, and a byte cap (a 50 MB page is read up to the cap and
//! cut there). A page that fails is skipped with a `tracing` warning; only a failing *engine*
//! is an error ([`SearchError::Online`](crate::search::SearchError::Online)), which the rollout turns into an error line.
//!
//! **Replayable**: with [`OnlineConfig::cache_dir`] set, the passages fetched for a (engine,
//! query) pair are stored on disk ([`cache`]) and served from there next time; with
//! [`OnlineConfig::offline`] a cache miss is an error instead of a web request, so a recorded
//! run replays with no network at all.
//!
//! The [`Retriever`](crate::search::Retriever) trait is synchronous; the retriever owns a small tokio runtime and drives
//! each search on it from a short-lived helper thread, so it may be called from plain threads
//! and from inside another tokio runtime alike.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod cache;
pub mod engine;
#[cfg(feature = "online")]
pub mod extract;
pub mod rank;
#[cfg(feature = "online")]
mod retriever;

pub use engine::{Engine, SearchResult};
#[cfg(feature = "online")]
pub use retriever::OnlineRetriever;

/// Queries are cut to this many bytes (at a character boundary) before going to the engine.
pub const MAX_ENGINE_QUERY_BYTES: usize = 512;

/// `[search.online]`: the online backend's settings. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineConfig {
    /// Which engine to query. Default `searxng`.
    pub engine: Engine,
    /// The engine's base URL. Default `http://127.0.0.1:8888` (a local SearXNG).
    pub base_url: String,
    /// Result pages fetched per query. Default 3.
    pub fetch_pages: usize,
    /// Connect timeout per request, milliseconds. Default 3000.
    pub connect_timeout_ms: u64,
    /// Total time allowed per request, body included, milliseconds. Default 10000.
    pub timeout_ms: u64,
    /// Bytes read at most from one response; the rest is dropped. Default 2 MiB.
    pub max_bytes: usize,
    /// Redirects followed at most per request. Default 3.
    pub max_redirects: usize,
    /// Words per passage. Default 100.
    pub passage_words: usize,
    /// Directory of the (engine, query) cache; `None` disables caching. Default `None`.
    pub cache_dir: Option<PathBuf>,
    /// Serve only from the cache: a miss is an error, nothing goes to the network. Default
    /// `false`.
    pub offline: bool,
    /// `User-Agent` header sent. Default `sleuth/<version>`.
    pub user_agent: String,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            engine: Engine::default(),
            base_url: "http://127.0.0.1:8888".into(),
            fetch_pages: 3,
            connect_timeout_ms: 3000,
            timeout_ms: 10_000,
            max_bytes: 2 << 20,
            max_redirects: 3,
            passage_words: 100,
            cache_dir: None,
            offline: false,
            user_agent: concat!("sleuth/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}
