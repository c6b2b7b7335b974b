//! A retrieval server as a search backend (`[search] backend = "http"`): the client side of
//! [`super::server`], so rollouts on many machines can share one index, or replicas of it
//! behind a load balancer.
//!
//! The protocol is Search-R1's `POST /retrieve` (`{"queries": [str], "topk": k,
//! "return_scores": true}` → `{"result": [[{"document": {"id", "title", "contents"},
//! "score"}]]}`), which `sleuth retrieval-server` and Search-R1's / FlashRAG's own retrieval
//! servers all speak. A document's title is its `title` field when present, else the first
//! line of `contents` with its quotes stripped (Search-R1's wiki-18 layout, `"title"\ntext`);
//! the text is the rest of `contents`. [`Retriever::search_batch`] sends one request for all
//! the queries of a rollout round.
//!
//! Connection errors, timeouts, 429 and 5xx are retried with exponential backoff
//! ([`HttpSearchOptions::retries`]); anything else, and a body that is not a `/retrieve`
//! answer, is a [`SearchError::Remote`] naming the URL. The client is blocking
//! ([`crate::http::client::Client`]: its own runtime; called from inside another runtime it
//! runs the request on a scoped thread).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Hit, Retriever, SearchError};
use crate::http::client::{head, Client, ClientOptions, RetryPolicy};

/// `[search.http]`: where the retrieval server is. Defaults stated once, in `impl Default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSearchOptions {
    /// Base URL (`http://host:8000`); `/retrieve` is appended unless the URL already ends in
    /// it. Default `http://127.0.0.1:8000` (`sleuth retrieval-server`'s default port).
    pub url: String,
    /// Timeout of one request, in seconds. Default 30.
    pub timeout_secs: u64,
    /// Retries after a connection error, timeout, 429 or 5xx. Default 3.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds, doubled per retry. Default 200.
    pub retry_backoff_ms: u64,
}

impl Default for HttpSearchOptions {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".into(),
            timeout_secs: 30,
            retries: 3,
            retry_backoff_ms: 200,
        }
    }
}

/// A remote retrieval server, searched over HTTP (module docs).
#[derive(Debug)]
pub struct HttpRetriever {
    endpoint: String,
    opts: HttpSearchOptions,
    client: Client,
}

impl HttpRetriever {
    /// A client for `opts`. Nothing is sent until the first search.
    ///
    /// # Errors
    /// [`SearchError::InvalidOption`] for a URL that is not http(s) or a zero timeout.
    pub fn new(opts: &HttpSearchOptions) -> Result<Self, SearchError> {
        let bad = |reason: String| SearchError::InvalidOption {
            name: "search.http",
            reason,
        };
        if !(opts.url.starts_with("http://") || opts.url.starts_with("https://")) {
            return Err(bad(format!(
                "url must start with http:// or https:// (got {:?})",
                opts.url
            )));
        }
        if opts.timeout_secs == 0 {
            return Err(bad("timeout_secs must be at least 1".into()));
        }
        let base = opts.url.trim_end_matches('/');
        let endpoint = if base.ends_with("/retrieve") {
            base.to_string()
        } else {
            format!("{base}/retrieve")
        };
        let client = Client::new(&ClientOptions {
            timeout: Some(Duration::from_secs(opts.timeout_secs)),
            ..ClientOptions::default()
        })
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            endpoint,
            opts: opts.clone(),
            client,
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, reason: impl Into<String>) -> SearchError {
        SearchError::Remote {
            url: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    async fn post(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        let body = json!({"queries": queries, "topk": k, "return_scores": true});
        let retry = RetryPolicy {
            retries: self.opts.retries,
            backoff_ms: self.opts.retry_backoff_ms,
        };
        let text = self
            .client
            .post_json(&self.endpoint, &body, None, retry)
            .await
            .map_err(|e| self.error(e.to_string()))?;
        parse_retrieve(&text, queries.len())
            .ok_or_else(|| self.error(format!("not a /retrieve answer: {}", head(&text))))
    }
}

impl Retriever for HttpRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(self.search_batch(&[query], k)?.pop().unwrap_or_default())
    }

    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        if queries.is_empty() || k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let mut lists = self.client.block_on(self.post(queries, k))?;
        for list in &mut lists {
            list.truncate(k);
        }
        Ok(lists)
    }
}

/// Read a `/retrieve` body with `n` result lists; entries with or without scores.
fn parse_retrieve(body: &str, n: usize) -> Option<Vec<Vec<Hit>>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let result = v.get("result")?.as_array()?;
    if result.len() != n {
        return None;
    }
    result
        .iter()
        .map(|list| list.as_array()?.iter().map(parse_doc).collect())
        .collect()
}

fn parse_doc(entry: &Value) -> Option<Hit> {
    let (doc, score) = match entry.get("document") {
        Some(d) => (d, entry.get("score").and_then(Value::as_f64).unwrap_or(0.0)),
        None => (entry, 0.0),
    };
    let contents = doc.get("contents").and_then(Value::as_str).unwrap_or("");
    let (first, rest) = contents.split_once('\n').unwrap_or((contents, ""));
    let (title, text) = match doc.get("title").and_then(Value::as_str) {
        Some(t) => (t.to_string(), rest.to_string()),
        None => (first.trim().trim_matches('"').to_string(), rest.to_string()),
    };
    let id = match doc.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) if !other.is_null() => other.to_string(),
        _ => String::new(),
    };
    Some(Hit {
        id,
        title,
        text,
        score: score as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_with_and_without_scores_and_titles() {
        let body = r#"{"result": [
            [{"document": {"id": "7", "title": "Paris", "contents": "\"Paris\"\nParis is big."}, "score": 2.5}],
            [{"id": 3, "contents": "\"Lyon\"\nLyon is a city."}]
        ]}"#;
        let lists = parse_retrieve(body, 2).unwrap();
        assert_eq!(lists[0][0].title, "Paris");
        assert_eq!(lists[0][0].text, "Paris is big.");
        assert_eq!((lists[0][0].id.as_str(), lists[0][0].score), ("7", 2.5));
        assert_eq!(
            (lists[1][0].title.as_str(), lists[1][0].text.as_str()),
            ("Lyon", "Lyon is a city.")
        );
        assert_eq!(lists[1][0].id, "3");
        // A result count that does not match the queries is not an answer.
        assert!(parse_retrieve(body, 3).is_none());
        assert!(parse_retrieve(r#"{"error": "x"}"#, 1).is_none());
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = HttpSearchOptions {
            url: "ftp://x".into(),
            ..HttpSearchOptions::default()
        };
        assert!(HttpRetriever::new(&opts).is_err());
        let ok = HttpRetriever::new(&HttpSearchOptions::default()).unwrap();
        assert_eq!(ok.endpoint(), "http://127.0.0.1:8000/retrieve");
    }
}
