//! Online search: a [`Retriever`] over the live web (DESIGN §6).
//!
//! One search is: query the configured engine ([`Engine::Searxng`] JSON API or
//! [`Engine::Duckduckgo`]'s HTML page) → take the top [`OnlineConfig::fetch_pages`] http(s)
//! results → fetch those pages **concurrently** → extract readable text ([`extract`]: no
//! scripts, styles, navigation or footers) → split into passages of about
//! [`OnlineConfig::passage_words`] words → rank them, together with the engine's own snippets,
//! against the query with BM25 ([`rank`]) → top-k [`Hit`]s shaped like local ones
//! (`title` = page title, `id` = `url#n`).
//!
//! **Bounded by construction**, so a rollout never hangs on the web: every request has a
//! connect timeout and a total timeout (which covers reading the body), a redirect cap that
//! also refuses non-http(s) targets, and a byte cap (a 50 MB page is read up to the cap and
//! cut there). A page that fails is skipped with a `tracing` warning; only a failing *engine*
//! is an error ([`SearchError::Online`]), which the rollout turns into an error line.
//!
//! **Replayable**: with [`OnlineConfig::cache_dir`] set, the passages fetched for a (engine,
//! query) pair are stored on disk ([`cache`]) and served from there next time; with
//! [`OnlineConfig::offline`] a cache miss is an error instead of a web request, so a recorded
//! run replays with no network at all.
//!
//! The [`Retriever`] trait is synchronous; the retriever owns a small tokio runtime and drives
//! each search on it from a short-lived helper thread, so it may be called from plain threads
//! and from inside another tokio runtime alike.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{Hit, Retriever, SearchError};
use crate::http::client::{Client, ClientOptions};

pub mod cache;
pub mod engine;
pub mod extract;
pub mod rank;

pub use engine::{Engine, SearchResult};

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

/// A [`Retriever`] over a web search engine. See the module docs.
pub struct OnlineRetriever {
    cfg: OnlineConfig,
    /// Two worker threads: result pages are fetched and parsed concurrently.
    client: Client,
}

impl std::fmt::Debug for OnlineRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineRetriever")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl OnlineRetriever {
    /// Builds the HTTP client and runtime for `cfg`.
    ///
    /// # Errors
    /// [`SearchError::InvalidOption`] naming the field when the base URL is not http(s) or a
    /// limit is zero; [`SearchError::Online`] when the client or runtime cannot be built.
    pub fn new(cfg: OnlineConfig) -> Result<Self, SearchError> {
        cfg.engine
            .request_url(&cfg.base_url, "")
            .map_err(|reason| SearchError::InvalidOption {
                name: "base_url",
                reason,
            })?;
        for (name, value) in [
            ("timeout_ms", cfg.timeout_ms as usize),
            ("connect_timeout_ms", cfg.connect_timeout_ms as usize),
            ("max_bytes", cfg.max_bytes),
            ("passage_words", cfg.passage_words),
        ] {
            if value == 0 {
                return Err(SearchError::InvalidOption {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        let online_err = |reason: String| SearchError::Online {
            engine: cfg.engine.name(),
            url: cfg.base_url.clone(),
            reason,
        };
        let client = Client::new(&ClientOptions {
            timeout: Some(Duration::from_millis(cfg.timeout_ms)),
            connect_timeout: Some(Duration::from_millis(cfg.connect_timeout_ms)),
            user_agent: Some(cfg.user_agent.clone()),
            max_redirects: Some(cfg.max_redirects),
            worker_threads: 2,
            ..ClientOptions::default()
        })
        .map_err(|e| online_err(e.to_string()))?;
        Ok(Self { cfg, client })
    }

    /// The settings in force.
    pub fn config(&self) -> &OnlineConfig {
        &self.cfg
    }

    fn error(&self, url: &str, reason: impl Into<String>) -> SearchError {
        SearchError::Online {
            engine: self.cfg.engine.name(),
            url: url.to_string(),
            reason: reason.into(),
        }
    }

    /// The passages for `query`: from the cache, or fetched (and then cached).
    fn passages(&self, query: &str) -> Result<Vec<cache::CachedPassage>, SearchError> {
        let engine = self.cfg.engine.name();
        if let Some(dir) = &self.cfg.cache_dir {
            if let Some(hit) = cache::load(dir, engine, query) {
                return Ok(hit);
            }
            if self.cfg.offline {
                return Err(self.error(
                    &dir.display().to_string(),
                    format!("offline and query {query:?} is not in the cache"),
                ));
            }
        } else if self.cfg.offline {
            return Err(self.error(&self.cfg.base_url, "offline with no cache_dir set"));
        }
        let passages = self.client.block_on(self.fetch(query))?;
        if let Some(dir) = &self.cfg.cache_dir {
            if let Err((path, e)) = cache::store(dir, engine, query, &passages) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write search cache");
            }
        }
        Ok(passages)
    }

    /// Queries the engine, fetches the top pages concurrently, and splits them into passages
    /// (engine snippets first, then page passages in result order).
    async fn fetch(&self, query: &str) -> Result<Vec<cache::CachedPassage>, SearchError> {
        // A model may write a 10,000-character query; engines want a short one.
        let mut cut = query.len().min(MAX_ENGINE_QUERY_BYTES);
        while !query.is_char_boundary(cut) {
            cut -= 1;
        }
        let url = self
            .cfg
            .engine
            .request_url(&self.cfg.base_url, &query[..cut])
            .map_err(|e| self.error(&self.cfg.base_url, e))?;
        let (final_url, body) = self
            .get(&url)
            .await
            .map_err(|e| self.error(url.as_str(), e))?;
        let results = self
            .cfg
            .engine
            .parse(&final_url, &String::from_utf8_lossy(&body))
            .map_err(|e| self.error(url.as_str(), e))?;

        let mut passages: Vec<cache::CachedPassage> = results
            .iter()
            .filter(|r| !r.snippet.is_empty())
            .map(|r| cache::CachedPassage {
                url: r.url.clone(),
                title: r.title.clone(),
                text: r.snippet.clone(),
            })
            .collect();
        let targets: Vec<(Url, &SearchResult)> = results
            .iter()
            .filter_map(|r| {
                let u = Url::parse(&r.url).ok()?;
                matches!(u.scheme(), "http" | "https").then_some((u, r))
            })
            .take(self.cfg.fetch_pages)
            .collect();
        let pages = join_all(targets.iter().map(|(u, _)| self.get(u))).await;
        for ((u, result), page) in targets.iter().zip(pages) {
            match page {
                Ok((_, body)) => {
                    let text = extract::extract(&String::from_utf8_lossy(&body));
                    let title = if text.title.is_empty() {
                        result.title.clone()
                    } else {
                        text.title
                    };
                    for p in extract::split_passages(&text.paragraphs, self.cfg.passage_words) {
                        passages.push(cache::CachedPassage {
                            url: u.to_string(),
                            title: title.clone(),
                            text: p,
                        });
                    }
                }
                Err(e) => tracing::warn!(url = %u, error = %e, "skipping result page"),
            }
        }
        Ok(passages)
    }

    /// GETs `url` with the byte cap: the final URL (after redirects) and at most
    /// `max_bytes` of the body. A non-2xx status or a non-text content type is an error.
    async fn get(&self, url: &Url) -> Result<(Url, Vec<u8>), String> {
        let mut resp = self
            .client
            .http()
            .get(url.clone())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("timed out after {} ms", self.cfg.timeout_ms)
                } else {
                    format!("{e:#}")
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        if let Some(ct) = resp.headers().get(reqwest::header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            if !(ct.contains("html") || ct.contains("text") || ct.contains("json")) {
                return Err(format!("content type {ct:?} is not text"));
            }
        }
        let final_url = resp.url().clone();
        let cap = self.cfg.max_bytes;
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = cap - body.len();
                    if chunk.len() >= room {
                        body.extend_from_slice(&chunk[..room]);
                        tracing::debug!(%url, cap, "response cut at the byte cap");
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(format!("timed out after {} ms", self.cfg.timeout_ms))
                }
                Err(e) => return Err(format!("{e:#}")),
            }
        }
        Ok((final_url, body))
    }
}

impl Retriever for OnlineRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        if k == 0 || rank::words(query).is_empty() {
            return Ok(Vec::new());
        }
        let passages = self.passages(query)?;
        let docs: Vec<String> = passages
            .iter()
            .map(|p| format!("{} {}", p.title, p.text))
            .collect();
        Ok(rank::rank(query, &docs)
            .into_iter()
            .take(k)
            .map(|(i, score)| {
                let p = &passages[i];
                Hit {
                    id: format!("{}#{i}", p.url),
                    title: p.title.clone(),
                    text: p.text.clone(),
                    score,
                }
            })
            .collect())
    }
}
