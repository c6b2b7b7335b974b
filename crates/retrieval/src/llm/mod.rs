//! A client for any OpenAI-compatible chat endpoint, used by the graph builders (DESIGN §6) for
//! triple extraction (KG, TKG, RKG) and cluster summaries (RAPTOR tree). The builders never
//! need it: without an [`LlmOptions`] they build offline.
//!
//! **Protocol.** Requests follow the OpenAI chat completions API: `POST
//! {url}/v1/chat/completions` with `{"model", "messages": [system, user], "temperature": 0,
//! "max_tokens"}`; the reply is `choices[0].message.content`. [`LlmOptions::url`] is the
//! server's base URL with or without the `/v1` suffix (`http://127.0.0.1:8080` and
//! `http://127.0.0.1:8080/v1` both post to `http://127.0.0.1:8080/v1/chat/completions`); a URL
//! already ending in `/chat/completions` is used as given. An API key in the environment
//! variable `SLEUTH_LLM_API_KEY` is sent as `Authorization: Bearer …`. Temperature 0 makes a
//! reply a function of its prompt, which is what makes caching it sound.
//!
//! **Concurrency and retries.** At most [`LlmOptions::concurrency`] requests are in flight (a
//! semaphore shared by every batch of one client). Connection errors, timeouts, HTTP 429 and
//! 5xx are retried up to [`LlmOptions::retries`] times with exponential backoff
//! ([`LlmOptions::retry_backoff_ms`] doubled per attempt); any other 4xx fails at once. A
//! request that still fails is an error naming the URL, the status and the head of the body;
//! in a batch, requests not yet sent are then skipped ([`LlmError::Aborted`]) and the batch
//! returns the first real error, so a dead server stops a build quickly and the cache keeps
//! what was done.
//!
//! **Cache.** With a cache path, every completed request is appended to a JSON Lines file as
//! one line `{"key": "<32 hex digits>", "reply": "<the reply text>"}`, flushed before the
//! reply is used. `key` is [`cache_key`]: FNV-1a 128 of the model name, the prompt version
//! ([`EXTRACTION_PROMPT_VERSION`], [`SUMMARY_PROMPT_VERSION`]) and the prompt text. The file is
//! loaded when the client is built, and a cached prompt is never sent again, so an interrupted
//! build resumes where it stopped and a repeated build sends nothing. Replies are cached as
//! received, before parsing: a reply that does not parse stays cached (at temperature 0 asking
//! again would give the same text). A torn last line (a write interrupted mid-line) is dropped
//! with a warning; any other malformed line is [`LlmError::CacheCorrupt`] naming the file and
//! line. Delete the file to ask again.
//!
//! **Replies.** JSON is read leniently ([`parse_lenient`]: fences, prose, trailing commas, a
//! reply cut off mid-list). A reply that still does not parse is a failure of that one
//! passage or cluster: logged with `tracing::warn`, counted in [`LlmStats::failures`], and
//! the build goes on.
//!
//! The client is blocking: it drives its requests on its own runtime
//! ([`crate::http::client::Client`], which also holds the retry policy above), as the graph
//! builders and the judge call it, from synchronous code.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::corpus::Passage;
use crate::http::client::{send, Attempt, Client, ClientOptions, PostError, RetryPolicy};

mod cache;
mod json;
mod prompts;

pub use cache::cache_key;
pub use json::{parse_lenient, JsonReplyError};
pub use prompts::{
    extraction_prompt, judge_prompt, parse_extraction, parse_summary, summary_prompt,
    ExtractedEntity, ExtractedRelation, Extraction, Prompt, EXTRACTION_PROMPT_VERSION,
    JUDGE_PROMPT_VERSION, SUMMARY_PROMPT_VERSION,
};

use cache::ReplyCache;
use json::head;

/// Default number of requests in flight.
pub const DEFAULT_LLM_CONCURRENCY: usize = 4;
/// Default number of retries of a failed request (so at most 4 attempts).
pub const DEFAULT_LLM_RETRIES: u32 = 3;
/// Default timeout of one request, in seconds.
pub const DEFAULT_LLM_TIMEOUT_SECS: u64 = 120;
/// Default cap on the tokens of one reply (`max_tokens`).
pub const DEFAULT_LLM_MAX_TOKENS: u32 = 1024;
/// Default wait before the first retry, in milliseconds (doubled for each further retry).
pub const DEFAULT_LLM_RETRY_BACKOFF_MS: u64 = 500;
/// The environment variable whose value, when set and non-empty, is sent as a Bearer token.
pub const API_KEY_ENV: &str = "SLEUTH_LLM_API_KEY";

/// Errors of the LLM client. Variants tied to a request name its URL; cache errors name the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// An option is out of range or missing.
    #[error("invalid LLM option `{name}`: {reason}")]
    InvalidOption {
        /// The option's field name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The server answered with an error status: a 4xx other than 429 at once, a 429 or 5xx
    /// after every retry.
    #[error("LLM request to {url} failed with HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first 300 characters of the response body.
        body: String,
    },
    /// The request did not complete (connection refused or reset, timeout) after every retry.
    #[error("LLM request to {url} failed after {attempts} attempt(s): {source}")]
    Transport {
        /// The endpoint.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered 2xx with a body that is not a chat completion.
    #[error("LLM endpoint {url} sent no chat completion ({reason}): {body}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What is missing.
        reason: String,
        /// The first 300 characters of the response body.
        body: String,
    },
    /// A reply held no usable JSON, or an empty summary.
    #[error("unusable LLM reply: {0}")]
    Reply(#[from] JsonReplyError),
    /// Reading, writing or truncating the cache file failed.
    #[error("{action} {path}: {source}", path = path.display())]
    CacheIo {
        /// What was being done.
        action: &'static str,
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A cache line other than a torn last one is not a `{"key", "reply"}` object.
    #[error("LLM cache {path} line {line} is malformed ({reason}); delete the file to start over", path = path.display())]
    CacheCorrupt {
        /// The cache file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde_json's message.
        reason: String,
    },
    /// The tokio runtime or HTTP client could not be built.
    #[error("cannot start the LLM client: {0}")]
    Setup(String),
    /// Not sent because an earlier request of the same batch failed.
    #[error("LLM request skipped after an earlier request failed")]
    Aborted,
}

/// Where and how to reach the chat endpoint. `Default` gives the documented defaults with an
/// empty `url` and `model`, which must be set; as a config section it reads from TOML/JSON with
/// every field optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmOptions {
    /// Base URL of an OpenAI-compatible server, with or without `/v1` (module doc). Required.
    pub url: String,
    /// The `model` field of every request. Required.
    pub model: String,
    /// Most requests in flight; at least 1. Default: [`DEFAULT_LLM_CONCURRENCY`].
    pub concurrency: usize,
    /// Retries of a request after a connection error, timeout, 429 or 5xx.
    /// Default: [`DEFAULT_LLM_RETRIES`].
    pub retries: u32,
    /// Timeout of one attempt, in seconds; at least 1. Default: [`DEFAULT_LLM_TIMEOUT_SECS`].
    pub timeout_secs: u64,
    /// `max_tokens` of every request; at least 1. Default: [`DEFAULT_LLM_MAX_TOKENS`].
    pub max_tokens: u32,
    /// Wait before the first retry in milliseconds, doubled per retry.
    /// Default: [`DEFAULT_LLM_RETRY_BACKOFF_MS`].
    pub retry_backoff_ms: u64,
    /// The reply cache file. Default: `None`, which the file-to-file builders read as
    /// `<out>.llm-cache.jsonl` beside their output and the in-memory builders as no cache.
    pub cache: Option<PathBuf>,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            concurrency: DEFAULT_LLM_CONCURRENCY,
            retries: DEFAULT_LLM_RETRIES,
            timeout_secs: DEFAULT_LLM_TIMEOUT_SECS,
            max_tokens: DEFAULT_LLM_MAX_TOKENS,
            retry_backoff_ms: DEFAULT_LLM_RETRY_BACKOFF_MS,
            cache: None,
        }
    }
}

impl LlmOptions {
    /// Checks every field.
    ///
    /// # Errors
    /// [`LlmError::InvalidOption`] naming the first bad field.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |name, reason: &str| {
            Err(LlmError::InvalidOption {
                name,
                reason: reason.into(),
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("url", "must start with http:// or https://");
        }
        if self.model.trim().is_empty() {
            return bad("model", "must name the model to request");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs", "must be at least 1");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1");
        }
        Ok(())
    }

    /// The chat completions URL `url` posts to (module doc).
    pub fn endpoint(&self) -> String {
        crate::http::client::openai_route(&self.url, "chat/completions")
    }
}

/// What a client did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmStats {
    /// Requests completed over the network (each once, however many attempts it took).
    pub requests: u64,
    /// Prompts answered from the cache without a request.
    pub cached: u64,
    /// Attempts beyond the first (retried connection errors, timeouts, 429s, 5xx).
    pub retries: u64,
    /// Replies that held no usable JSON or summary (each logged with a warning).
    pub failures: u64,
}

/// A blocking client for an OpenAI-compatible chat endpoint, with bounded concurrency,
/// retries and a reply cache (module doc).
#[derive(Debug)]
pub struct LlmClient {
    opts: LlmOptions,
    endpoint: String,
    api_key: Option<String>,
    client: Client,
    permits: Semaphore,
    cache: Option<ReplyCache>,
    requests: AtomicU64,
    cached: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

impl LlmClient {
    /// Builds a client for `opts`, loading the cache at `opts.cache` when set (created when
    /// absent). Reads the API key from [`API_KEY_ENV`].
    ///
    /// # Errors
    /// [`LlmError::InvalidOption`]; [`LlmError::CacheIo`] and [`LlmError::CacheCorrupt`] for
    /// the cache file; [`LlmError::Setup`] when the runtime or HTTP client cannot be built.
    pub fn new(opts: &LlmOptions) -> Result<Self, LlmError> {
        opts.validate()?;
        let cache = match &opts.cache {
            Some(path) => Some(ReplyCache::open(path)?),
            None => None,
        };
        if let Some(c) = &cache {
            tracing::info!(replies = c.len(), "loaded LLM cache");
        }
        let client = Client::new(&ClientOptions {
            timeout: Some(Duration::from_secs(opts.timeout_secs)),
            ..ClientOptions::default()
        })
        .map_err(|e| LlmError::Setup(e.to_string()))?;
        let api_key = std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty());
        Ok(Self {
            endpoint: opts.endpoint(),
            opts: opts.clone(),
            api_key,
            client,
            permits: Semaphore::new(opts.concurrency),
            cache,
            requests: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// [`LlmClient::new`] with the cache at `opts.cache`, or at `default_cache` when that is
    /// `None`.
    ///
    /// # Errors
    /// As for [`LlmClient::new`].
    pub fn with_default_cache(opts: &LlmOptions, default_cache: &Path) -> Result<Self, LlmError> {
        let mut opts = opts.clone();
        opts.cache
            .get_or_insert_with(|| default_cache.to_path_buf());
        Self::new(&opts)
    }

    /// The options the client was built with.
    pub fn options(&self) -> &LlmOptions {
        &self.opts
    }

    /// Counts so far.
    pub fn stats(&self) -> LlmStats {
        LlmStats {
            requests: self.requests.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// The replies to `prompts`, in order: cached ones from the cache, the others requested
    /// with at most `concurrency` in flight and appended to the cache as they complete.
    ///
    /// # Errors
    /// The first request error ([`LlmError::Status`], [`LlmError::Transport`],
    /// [`LlmError::BadResponse`], [`LlmError::CacheIo`]); requests already in flight then
    /// finish (and are cached), requests not yet sent are not sent.
    pub fn complete_all(&self, prompts: &[Prompt]) -> Result<Vec<String>, LlmError> {
        let abort = AtomicBool::new(false);
        let results: Vec<(usize, Result<String, LlmError>)> = self.client.block_on(
            stream::iter(prompts.iter().enumerate())
                .map(|(i, p)| {
                    let abort = &abort;
                    async move { (i, self.complete(p, abort).await) }
                })
                .buffer_unordered(self.opts.concurrency)
                .collect(),
        );
        let mut replies: Vec<Option<String>> = vec![None; prompts.len()];
        let mut first_error: Option<LlmError> = None;
        for (i, r) in results {
            match r {
                Ok(text) => {
                    if let Some(slot) = replies.get_mut(i) {
                        *slot = Some(text);
                    }
                }
                Err(LlmError::Aborted) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // With no failure every prompt has its reply; a gap could only be a request skipped
        // after a failure, so it is reported as one rather than trusted away.
        replies
            .into_iter()
            .map(|r| r.ok_or(LlmError::Aborted))
            .collect()
    }

    /// Extracts entities and relations from each passage with [`extraction_prompt`] (title and
    /// text), in order. A reply that holds no usable JSON is an `Err` in its slot, logged with
    /// a warning naming the passage id and counted in [`LlmStats::failures`].
    ///
    /// # Errors
    /// As for [`LlmClient::complete_all`].
    pub fn extract_all(
        &self,
        passages: &[Passage],
    ) -> Result<Vec<Result<Extraction, JsonReplyError>>, LlmError> {
        let prompts: Vec<Prompt> = passages
            .iter()
            .map(|p| extraction_prompt(&p.title, &p.text))
            .collect();
        let replies = self.complete_all(&prompts)?;
        Ok(replies
            .iter()
            .zip(passages)
            .map(|(reply, p)| {
                parse_extraction(reply).inspect_err(|e| {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(passage = %p.id, error = %e, "LLM extraction reply unusable; passage skipped");
                })
            })
            .collect())
    }

    /// One summary of `texts` (e.g. the children of a RAPTOR cluster) in at most `max_words`
    /// words, from [`summary_prompt`]; the reply may be plain text or `{"summary": …}`
    /// ([`parse_summary`]). Cached like every request.
    ///
    /// # Errors
    /// As for [`LlmClient::complete_all`], and [`LlmError::Reply`] (also counted in
    /// [`LlmStats::failures`]) when the reply is empty.
    pub fn summarize(&self, texts: &[&str], max_words: usize) -> Result<String, LlmError> {
        let mut out = self.summarize_all(&[texts.to_vec()], max_words)?;
        #[allow(clippy::expect_used)] // cannot fail: `summarize_all` maps one group to one result
        let summary = out.pop().expect("one group, one summary");
        Ok(summary?)
    }

    /// [`LlmClient::summarize`] for many groups at once, requested concurrently (at most
    /// `concurrency` in flight) under the same cache; summaries in group order. An empty reply
    /// is an `Err` in its slot, logged and counted in [`LlmStats::failures`]: the caller keeps
    /// its extractive summary for that group.
    ///
    /// Tree wiring: per level, collect each cluster's child texts as `Vec<&str>`, call this
    /// once for the level, and use `Ok(summary)` as the parent's text, falling back to the
    /// extractive summary on `Err(_)`; a top-level `Err` (server down after retries) should
    /// fail the build, whose finished requests the cache keeps.
    ///
    /// # Errors
    /// As for [`LlmClient::complete_all`].
    pub fn summarize_all(
        &self,
        groups: &[Vec<&str>],
        max_words: usize,
    ) -> Result<Vec<Result<String, JsonReplyError>>, LlmError> {
        let prompts: Vec<Prompt> = groups
            .iter()
            .map(|g| summary_prompt(g, max_words))
            .collect();
        let replies = self.complete_all(&prompts)?;
        Ok(replies
            .iter()
            .enumerate()
            .map(|(i, reply)| {
                parse_summary(reply, max_words).inspect_err(|e| {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = i, error = %e, "LLM summary reply unusable");
                })
            })
            .collect())
    }

    /// One prompt: from the cache, or requested with retries and then cached.
    async fn complete(&self, prompt: &Prompt, abort: &AtomicBool) -> Result<String, LlmError> {
        let key = cache_key(&self.opts.model, prompt.version, &prompt.key_text());
        if let Some(reply) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            self.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(reply.to_string());
        }
        let result = self.request(prompt, abort).await;
        match &result {
            Ok(reply) => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.cache {
                    if let Err(e) = c.append(&key, reply) {
                        abort.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Err(LlmError::Aborted) => {}
            Err(_) => abort.store(true, Ordering::Relaxed),
        }
        result
    }

    /// Sends `prompt` until it succeeds, fails for good, or the retries run out
    /// ([`RetryPolicy::run`]); each attempt waits for a concurrency permit first.
    async fn request(&self, prompt: &Prompt, abort: &AtomicBool) -> Result<String, LlmError> {
        let body = json!({
            "model": self.opts.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": 0,
            "max_tokens": self.opts.max_tokens,
            "stream": false,
        });
        let retry = RetryPolicy {
            retries: self.opts.retries,
            backoff_ms: self.opts.retry_backoff_ms,
        };
        let body = &body;
        retry
            .run(
                &self.endpoint,
                |attempts| async move {
                    #[allow(clippy::expect_used)] // cannot fail: `permits` is never closed
                    let _permit = self
                        .permits
                        .acquire()
                        .await
                        .expect("the semaphore is never closed");
                    // Checked after the wait for a slot, which may outlast another request's
                    // failure.
                    if abort.load(Ordering::Relaxed) {
                        return Attempt::Done(Err(LlmError::Aborted));
                    }
                    self.attempt(body, attempts).await
                },
                |_| {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await
    }

    /// One HTTP attempt, its reply parsed.
    async fn attempt(&self, body: &Value, attempts: u32) -> Attempt<String, LlmError> {
        let url = &self.endpoint;
        let mut req = self.client.http().post(url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let to_llm = |e: PostError| match e {
            PostError::Status {
                status,
                attempts,
                body,
            } => LlmError::Status {
                url: url.clone(),
                status,
                attempts,
                body: head(&body),
            },
            PostError::Transport { attempts, source } => LlmError::Transport {
                url: url.clone(),
                attempts,
                source,
            },
        };
        let text = match send(req, attempts).await {
            Attempt::Done(Ok(text)) => text,
            Attempt::Done(Err(e)) => return Attempt::Done(Err(to_llm(e))),
            Attempt::Retry(e) => return Attempt::Retry(to_llm(e)),
        };
        let bad = |reason: &str| LlmError::BadResponse {
            url: url.clone(),
            reason: reason.into(),
            body: head(&text),
        };
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => return Attempt::Done(Err(bad("the body is not JSON"))),
        };
        let message = value
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("message"));
        let Some(message) = message else {
            return Attempt::Done(Err(bad("no choices[0].message")));
        };
        Attempt::Done(Ok(message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_base_with_or_without_v1() {
        let at = |url: &str| {
            LlmOptions {
                url: url.into(),
                ..LlmOptions::default()
            }
            .endpoint()
        };
        let want = "http://h:1/v1/chat/completions";
        assert_eq!(at("http://h:1"), want);
        assert_eq!(at("http://h:1/"), want);
        assert_eq!(at("http://h:1/v1"), want);
        assert_eq!(at("http://h:1/v1/"), want);
        assert_eq!(at(want), want);
    }

    #[test]
    fn options_validate_and_read_from_toml() {
        let ok = LlmOptions {
            url: "http://h:1".into(),
            model: "m".into(),
            ..LlmOptions::default()
        };
        ok.validate().unwrap();
        let no_model = LlmOptions {
            model: " ".into(),
            ..ok.clone()
        };
        assert!(matches!(
            no_model.validate(),
            Err(LlmError::InvalidOption { name: "model", .. })
        ));
        let ftp = LlmOptions {
            url: "ftp://h".into(),
            ..ok.clone()
        };
        assert!(ftp.validate().is_err());
        let parsed: LlmOptions = toml::from_str("url = \"http://h:1\"\nmodel = \"m\"").unwrap();
        assert_eq!(parsed, ok);
        assert!(toml::from_str::<LlmOptions>("urll = \"x\"").is_err());
    }
}
