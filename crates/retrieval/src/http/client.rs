//! The one HTTP client of sleuth's blocking callers, and the one retry policy.
//!
//! Six callers talk to servers over HTTP from synchronous code: the remote policy
//! (`sleuth::env::remote`), the retrieval-server backend (`search::http`), online search
//! (`search::online`), the LLM client behind the judge and the LLM-built graphs
//! (`llm`), `sleuth data fetch` (`data`) and `sleuth chat`. Each needs the same
//! three things, so they live here once:
//!
//! - **a runtime it owns** ([`Client`]): a current-thread tokio runtime (or a small
//!   multi-thread one, [`ClientOptions::worker_threads`]) that [`Client::block_on`] drives.
//!   Called from inside another runtime (the chat server's workers hold a retriever), it
//!   blocks a scoped thread instead of the caller's worker; dropped inside a runtime, it shuts
//!   down in the background instead of panicking;
//! - **timeouts and redirects**, set once per client ([`ClientOptions`]);
//! - **the retry policy** ([`RetryPolicy`]): connection errors, timeouts, HTTP 429 and 5xx are
//!   retried up to `retries` times, waiting `backoff_ms` milliseconds before the first retry
//!   and doubling the wait after each (capped at 2^16 times); any other status fails at once.
//!   [`Client::post_json`] applies it to a JSON POST; a caller with its own attempt (the LLM
//!   client holds a concurrency permit per attempt and stops when a sibling request failed)
//!   drives [`RetryPolicy::run`] itself.
//!
//! Callers parse the 2xx body and map [`PostError`] into their own error enum, naming their
//! endpoint.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// How a [`Client`] is built. `None` leaves reqwest's default (no timeout; ten redirects).
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Deadline of a whole request, from sending to the last body byte.
    pub timeout: Option<Duration>,
    /// Deadline for opening the connection.
    pub connect_timeout: Option<Duration>,
    /// Deadline between two reads of the response (a stalled download fails, a slow one does
    /// not).
    pub read_timeout: Option<Duration>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Redirects followed, only to http(s) URLs (others are an error).
    pub max_redirects: Option<usize>,
    /// Worker threads of the runtime; 0 (the default) is a current-thread runtime, which runs
    /// a caller's concurrent requests on the calling thread.
    pub worker_threads: usize,
}

/// The client could not be built (the TLS backend or the runtime failed to start).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(String);

/// An HTTP client with the runtime that drives it (module docs).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// Always `Some` until dropped (taken in `Drop`, which may run inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; shutting it down in the background
        // does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Client {
    /// A client for `opts`. Nothing is sent until the first request.
    ///
    /// # Errors
    /// [`BuildError`] when reqwest or tokio cannot start.
    pub fn new(opts: &ClientOptions) -> Result<Self, BuildError> {
        let mut b = reqwest::Client::builder();
        if let Some(t) = opts.timeout {
            b = b.timeout(t);
        }
        if let Some(t) = opts.connect_timeout {
            b = b.connect_timeout(t);
        }
        if let Some(t) = opts.read_timeout {
            b = b.read_timeout(t);
        }
        if let Some(ua) = &opts.user_agent {
            b = b.user_agent(ua.clone());
        }
        if let Some(max) = opts.max_redirects {
            b = b.redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max {
                    attempt.error(format!("more than {max} redirects"))
                } else if !matches!(attempt.url().scheme(), "http" | "https") {
                    let scheme = attempt.url().scheme().to_string();
                    attempt.error(format!("redirect to a {scheme}: URL refused"))
                } else {
                    attempt.follow()
                }
            }));
        }
        let http = b.build().map_err(|e| BuildError(e.to_string()))?;
        let runtime = if opts.worker_threads == 0 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(opts.worker_threads)
                .enable_all()
                .build()
        }
        .map_err(|e| BuildError(format!("runtime: {e}")))?;
        Ok(Self {
            http,
            runtime: Some(runtime),
        })
    }

    /// The reqwest client, for building requests inside a future given to
    /// [`Client::block_on`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Runs `fut` to completion on the client's runtime and returns its output. Inside
    /// another runtime it runs on a scoped thread, so the caller's worker is blocked but never
    /// asked to nest runtimes. A panic inside `fut` is resumed on the caller's thread.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        #[allow(clippy::expect_used)] // `runtime` is Some from construction until drop.
        let rt = self.runtime.as_ref().expect("runtime present until drop");
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            rt.block_on(fut)
        }
    }

    /// POSTs `body` as JSON to `url` (with `bearer` as its bearer token when given) and
    /// returns the 2xx response body, retrying under `retry`.
    ///
    /// # Errors
    /// [`PostError`] after the last attempt, or at once for a status that is not retried.
    pub async fn post_json(
        &self,
        url: &str,
        body: &Value,
        bearer: Option<&str>,
        retry: RetryPolicy,
    ) -> Result<String, PostError> {
        retry
            .run(
                url,
                |attempts| async move {
                    let mut req = self.http.post(url).json(body);
                    if let Some(key) = bearer {
                        req = req.bearer_auth(key);
                    }
                    send(req, attempts).await
                },
                |_| {},
            )
            .await
    }
}

/// Sends `req` once: its 2xx body as `Done(Ok)`, a transport error, 429 or 5xx as `Retry`,
/// any other status as `Done(Err)`. `attempts` is the number this attempt is, for the error.
pub async fn send(req: reqwest::RequestBuilder, attempts: u32) -> Attempt<String, PostError> {
    let transport = |source| Attempt::Retry(PostError::Transport { attempts, source });
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return transport(e),
    };
    let status = resp.status();
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return transport(e),
    };
    if status.is_success() {
        return Attempt::Done(Ok(text));
    }
    let error = PostError::Status {
        status: status.as_u16(),
        attempts,
        body: head(&text),
    };
    if retryable(status) {
        Attempt::Retry(error)
    } else {
        Attempt::Done(Err(error))
    }
}

/// The URL of an OpenAI-compatible API's `route` (`"completions"`, `"chat/completions"`) on
/// the server `url` names: a base URL with or without `/v1` gets `/v1/{route}`, and a URL that
/// already ends in the route is used as given (trailing slashes ignored).
pub fn openai_route(url: &str, route: &str) -> String {
    let base = url.trim_end_matches('/');
    if base.ends_with(&format!("/{route}")) {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/{route}")
    } else {
        format!("{base}/v1/{route}")
    }
}

/// Whether a status is worth another attempt: 429 (rate limited) and every 5xx.
pub fn retryable(status: reqwest::StatusCode) -> bool {
    status.as_u16() == 429 || status.is_server_error()
}

/// The outcome of one attempt under [`RetryPolicy::run`].
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// Final: success or an error not worth retrying.
    Done(Result<T, E>),
    /// Failed in a way worth retrying (returned as the error once the retries run out).
    Retry(E),
}

/// Retries after a transient failure, with doubling backoff (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds; doubled after each.
    pub backoff_ms: u64,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `backoff_ms · 2^(attempt−1)`,
    /// the exponent capped at 16.
    pub fn wait(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        Duration::from_millis(self.backoff_ms.saturating_mul(1u64 << doublings))
    }

    /// Calls `attempt(n)` for n = 1, 2, … until it is `Done` or `retries` retries have
    /// failed; `on_retry` sees each error that is about to be retried (for counting). `url`
    /// names the request in the debug log.
    ///
    /// # Errors
    /// The `Done` error, or the last `Retry` error once the retries run out.
    pub async fn run<T, E, F, Fut>(
        &self,
        url: &str,
        mut attempt: F,
        mut on_retry: impl FnMut(&E),
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        let mut n = 0u32;
        loop {
            n += 1;
            match attempt(n).await {
                Attempt::Done(result) => return result,
                Attempt::Retry(error) if n <= self.retries => {
                    let wait = self.wait(n);
                    tracing::debug!(url, attempt = n, wait_ms = wait.as_millis() as u64, %error, "retrying request");
                    on_retry(&error);
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry(error) => return Err(error),
            }
        }
    }
}

/// A request that failed after its retries.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The server answered with a non-2xx status (a 429 / 5xx only after every retry).
    #[error("HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first 300 characters of the body.
        body: String,
    },
    /// The request did not complete (connection refused or reset, timeout).
    #[error("after {attempts} attempt(s): {source}")]
    Transport {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: reqwest::Error,
    },
}

/// The first 300 characters of a body or a model reply, for error messages (the one such
/// helper: HTTP errors, the LLM client and its JSON-reply parser all quote this much).
pub fn head(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A loopback server answering each connection with the next of `statuses` (the last one
    /// repeated), counting requests.
    fn server(statuses: Vec<u16>) -> (String, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let i = seen.fetch_add(1, Ordering::SeqCst) as usize;
                let status = statuses[i.min(statuses.len() - 1)];
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = format!("body {i}");
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    fn client() -> Client {
        Client::new(&ClientOptions {
            timeout: Some(Duration::from_secs(5)),
            ..ClientOptions::default()
        })
        .unwrap()
    }

    const FAST: RetryPolicy = RetryPolicy {
        retries: 3,
        backoff_ms: 1,
    };

    #[test]
    fn transient_statuses_are_retried_and_others_fail_at_once() {
        let c = client();
        let body = serde_json::json!({"q": 1});
        // Two 503s and a 429, then success: four requests, the fourth body.
        let (url, count) = server(vec![503, 503, 429, 200]);
        let text = c.block_on(c.post_json(&url, &body, None, FAST)).unwrap();
        assert_eq!((text.as_str(), count.load(Ordering::SeqCst)), ("body 3", 4));
        // A 400 is not retried.
        let (url, count) = server(vec![400, 200]);
        let err = c
            .block_on(c.post_json(&url, &body, None, FAST))
            .unwrap_err();
        assert!(
            matches!(
                err,
                PostError::Status {
                    status: 400,
                    attempts: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Retries run out: 1 + 3 attempts, the last status reported.
        let (url, count) = server(vec![500]);
        let err = c
            .block_on(c.post_json(&url, &body, None, FAST))
            .unwrap_err();
        assert!(
            matches!(
                err,
                PostError::Status {
                    status: 500,
                    attempts: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 4);
        // Nothing listening: a transport error after every attempt.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = c
            .block_on(c.post_json(&format!("http://127.0.0.1:{port}/"), &body, None, FAST))
            .unwrap_err();
        assert!(
            matches!(err, PostError::Transport { attempts: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_wait_doubles_and_saturates() {
        let p = RetryPolicy {
            retries: 40,
            backoff_ms: 200,
        };
        assert_eq!(p.wait(1), Duration::from_millis(200));
        assert_eq!(p.wait(3), Duration::from_millis(800));
        assert_eq!(p.wait(40), p.wait(17));
        let huge = RetryPolicy {
            retries: 1,
            backoff_ms: u64::MAX,
        };
        assert_eq!(huge.wait(5), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn block_on_works_inside_another_runtime_and_drops_there() {
        let (url, _) = server(vec![200]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(async {
            let c = client();
            let body = serde_json::json!({});
            let text = c.block_on(c.post_json(&url, &body, None, FAST)).unwrap();
            drop(c); // inside the runtime: must not panic
            text
        });
        assert_eq!(text, "body 0");
    }
}
