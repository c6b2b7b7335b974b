//! [`OnlineRetriever`]: the engine query, page fetches, extraction and ranking the module docs
//! describe (built with the `online` feature).

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Url;

use super::{cache, extract, rank, OnlineConfig, SearchResult, MAX_ENGINE_QUERY_BYTES};
use crate::http::client::{Client, ClientOptions};
use crate::search::{Hit, Retriever, SearchError};

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
