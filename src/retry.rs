//! POST a JSON body and retry what is worth retrying: the one retry policy of the HTTP clients
//! that talk to servers sleuth does not own (the remote policy, `crate::env::remote`; the
//! retrieval-server backend, `crate::search::http`).
//!
//! Connection errors, timeouts, HTTP 429 and 5xx are retried up to `retries` times, waiting
//! `backoff_ms` milliseconds before the first retry and doubling the wait after each; any
//! other status fails at once. Callers parse the 2xx body and map [`PostError`] into their own
//! error enum, naming their endpoint.

use std::time::Duration;

use serde_json::Value;

/// A request that failed after its retries.
#[derive(Debug)]
pub(crate) enum PostError {
    /// The server answered with a non-2xx status (a 429 / 5xx only after every retry).
    Status {
        /// HTTP status code.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first 300 characters of the body.
        body: String,
    },
    /// The request did not complete (connection refused or reset, timeout).
    Transport {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: reqwest::Error,
    },
}

/// POSTs `body` to `url` and returns the 2xx response body, retrying as the module docs say.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    retries: u32,
    backoff_ms: u64,
) -> Result<String, PostError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let retry = attempt <= retries;
        let wait = Duration::from_millis(backoff_ms.saturating_mul(1u64 << (attempt - 1).min(16)));
        match http.post(url).json(body).send().await {
            Err(e) if retry => {
                tracing::debug!(url, attempt, error = %e, "retrying request");
                tokio::time::sleep(wait).await;
            }
            Err(source) => {
                return Err(PostError::Transport {
                    attempts: attempt,
                    source,
                })
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    return Ok(text);
                }
                if (status.as_u16() == 429 || status.is_server_error()) && retry {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(PostError::Status {
                    status: status.as_u16(),
                    attempts: attempt,
                    body: head(&text),
                });
            }
        }
    }
}

/// The first 300 characters of a body, for error messages.
pub(crate) fn head(s: &str) -> String {
    s.chars().take(300).collect()
}
