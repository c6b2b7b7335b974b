//! The retrieval server: any [`Retriever`] over HTTP, in the request and response shapes that
//! the Python trainers of R1-Searcher and Search-R1 already send and read (DESIGN §6).
//!
//! | route | request body | response body |
//! |---|---|---|
//! | `POST /queries` (R1-Searcher) | `{"queries": [str], "k": int?}` | `{"queries": [str], "answers": [[str]]}` |
//! | `POST /retrieve` (Search-R1) | `{"queries": [str], "topk": int?, "return_scores": bool?}` | `{"result": [[doc]]}` |
//! | `GET /health` | | `{"status": "ok"}` |
//!
//! An R1-Searcher answer is the passage rendered as the policy sees it, [`Hit::render`]
//! (`"title" text`). A Search-R1 `doc` is `{"id", "title", "contents"}` with `contents` =
//! `"title"\ntext`, the layout of Search-R1's wiki-18 corpus, whose client takes the first line
//! of `contents` as the title; with `return_scores: true` each entry is
//! `{"document": doc, "score": float}` instead. A missing `k` / `topk` takes
//! [`ServerConfig::default_k`].
//!
//! **Failure is a JSON answer, never a crash.** The body is read by hand (not through axum's
//! `Json` extractor, whose rejections are plain text) so that every refusal is
//! `{"error": "..."}` with a 4xx status: 400 for malformed JSON, wrong field types or an
//! out-of-range `k`; 413 for a body over [`ServerConfig::max_body_bytes`] or more than
//! [`ServerConfig::max_batch`] queries; 404/405 for unknown routes and methods; 408 for a
//! request (its body still arriving, or its search still running) not answered within
//! [`ServerConfig::request_timeout_s`]. A failing
//! backend is a 500 with the error text. Searches run on tokio's blocking pool, so a panic in a
//! backend is caught by its `JoinHandle` and becomes a 500 as well, and the server keeps going.
//!
//! **Parallelism.** A batch is split into one chunk per core, each searched on the blocking
//! pool; concurrent requests share the same pool, so neither a big batch nor many small
//! requests stall the async workers that accept connections.
//!
//! **Bounded.** Requests search and answer within a budget of
//! [`ServerConfig::max_inflight_passages`] (queries × k summed over requests in flight; a
//! request waits for its share, inside its 408 deadline), so eight of the largest requests at
//! once no longer take 1.5 GB. Small requests, of at most
//! [`ServerConfig::small_request_passages`] (one rollout's queries, a trainer's usual batch),
//! have a lane of their own: eight of them at once, never queued behind large batches. Tokio's
//! semaphore is fair (first come, first served), so with one lane a 2-query request arriving
//! behind six queued 1,024 × 100 batches waited for all of them: 4.9 s on the 3,000-passage
//! chaos index, which the chaos script's slowloris probe counts as a stall. Connections are
//! held by the shared accept loop
//! ([`crate::http::server`]): a client that stalls mid-headers is closed after
//! [`ConnLimits::header_read_timeout_s`], and at most [`ConnLimits::max_connections`] are open.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Hit, Retriever};
use crate::http::server::ConnLimits;

/// Settings of the retrieval server. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Passages per query when a request names no `k` / `topk`. Default 3 (Search-R1's default;
    /// R1-Searcher's trainer always sends `k`).
    pub default_k: usize,
    /// Largest `k` / `topk` accepted. Default 100.
    pub max_k: usize,
    /// Most queries in one request. Default 1024.
    pub max_batch: usize,
    /// Largest request body in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// A request still unanswered after this many seconds gets a 408. Default 60.
    pub request_timeout_s: u64,
    /// Passages (queries × k, summed over the large requests in flight) searched and answered
    /// at once; a request waits until its share is free, so the memory of concurrent answers
    /// is bounded (the largest request, 1,024 × 100, briefly takes 150–230 MB). Default
    /// 204,800: two of the largest requests. Small requests have their own lane
    /// ([`Self::small_request_passages`]).
    pub max_inflight_passages: usize,
    /// Requests of at most this many passages (queries × k) are small: they wait only for
    /// each other, in a lane of eight times this many passages, never behind large batches.
    /// Default 4,096 (1,024 queries at k = 4, or 40 at k = 100), so the lane adds at most
    /// 32,768 passages to [`Self::max_inflight_passages`].
    pub small_request_passages: usize,
    /// Header-read deadline and connection bound ([`crate::http::server`]).
    pub conn: ConnLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_k: 3,
            max_k: 100,
            max_batch: 1024,
            max_body_bytes: 4 << 20,
            request_timeout_s: 60,
            max_inflight_passages: 2 * 1024 * 100,
            small_request_passages: 4096,
            conn: ConnLimits::default(),
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running (accepting connections).
    #[error("retrieval server on {addr} failed: {source}")]
    Serve {
        /// The address it listened on.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// R1-Searcher's request body for `POST /queries`.
#[derive(Debug, Clone, Deserialize)]
struct QueriesRequest {
    queries: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
}

/// Search-R1's request body for `POST /retrieve`.
#[derive(Debug, Clone, Deserialize)]
struct RetrieveRequest {
    queries: Vec<String>,
    #[serde(default)]
    topk: Option<usize>,
    #[serde(default)]
    return_scores: bool,
}

#[derive(Clone)]
struct AppState {
    retriever: Arc<dyn Retriever>,
    cfg: ServerConfig,
    /// The in-flight budget ([`ServerConfig::max_inflight_passages`]) in its two lanes; a
    /// request holds queries × k permits of its lane from its search until its answer is
    /// serialized.
    lanes: Lanes,
}

/// The two lanes of the in-flight budget (module doc, **Bounded**).
#[derive(Clone)]
struct Lanes {
    /// Requests of at most `small_max` passages.
    small: Arc<tokio::sync::Semaphore>,
    small_max: usize,
    small_size: usize,
    /// Everything larger.
    large: Arc<tokio::sync::Semaphore>,
    large_size: usize,
}

impl Lanes {
    /// Eight small requests' worth for the small lane, `max_inflight_passages` for the large
    /// one; each at least 1 and at most what one `acquire_many` takes (`u32::MAX` permits).
    fn new(cfg: &ServerConfig) -> Self {
        const LIMIT: usize = u32::MAX as usize;
        let small_max = cfg.small_request_passages.clamp(1, LIMIT);
        let small_size = small_max.saturating_mul(8).min(LIMIT);
        let large_size = cfg.max_inflight_passages.clamp(1, LIMIT);
        Self {
            small: Arc::new(tokio::sync::Semaphore::new(small_size)),
            small_max,
            small_size,
            large: Arc::new(tokio::sync::Semaphore::new(large_size)),
            large_size,
        }
    }

    /// Waits for `n_queries × k` permits of the request's lane (the lane's whole size at
    /// most, so an oversized request runs alone rather than never).
    async fn reserve(
        &self,
        n_queries: usize,
        k: usize,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        let want = n_queries.saturating_mul(k).max(1);
        let (lane, size) = if want <= self.small_max {
            (&self.small, self.small_size)
        } else {
            (&self.large, self.large_size)
        };
        lane.acquire_many(u32::try_from(want.min(size)).unwrap_or(u32::MAX))
            .await
            .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))
    }
}

/// A refusal: status plus message, sent as `{"error": message}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The axum router serving `retriever` with `cfg`. Mount it with [`serve`], or in tests on any
/// listener.
pub fn router(retriever: Arc<dyn Retriever>, cfg: ServerConfig) -> Router {
    let timeout = Duration::from_secs(cfg.request_timeout_s.max(1));
    let lanes = Lanes::new(&cfg);
    let state = AppState {
        retriever,
        cfg,
        lanes,
    };
    Router::new()
        .route("/queries", post(queries))
        .route("/retrieve", post(retrieve))
        .route("/health", get(health))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route; use POST /queries, POST /retrieve or GET /health".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed; /queries and /retrieve take POST, /health GET".into(),
            )
        })
        .layer(axum::middleware::from_fn(move |req, next| {
            request_deadline(timeout, req, next)
        }))
        .with_state(state)
}

/// Answers a request still unanswered (its body still arriving, or its search still running)
/// after `timeout` with a JSON 408, like every other refusal. (tower-http's `TimeoutLayer`
/// answers with an empty body.)
async fn request_deadline(
    timeout: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request not answered within {} s (request_timeout_s)",
                timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Serves `router` on an already bound `listener` until `shutdown` resolves, on the shared
/// accept loop ([`crate::http::server::serve`]: header-read deadline, connection bound).
///
/// # Errors
/// [`ServerError::Serve`] when accepting connections fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = crate::http::server::local_addr(&listener);
    tracing::info!(%addr, "retrieval server listening");
    crate::http::server::serve(listener, router, limits, shutdown)
        .await
        .map_err(|source| ServerError::Serve { addr, source })
}

/// Binds `addr` and serves `retriever` until Ctrl-C, on a multi-threaded tokio runtime: the
/// whole of `sleuth retrieval-server`. `on_ready` is called with the bound address (useful with
/// port 0).
///
/// # Errors
/// [`ServerError::Bind`] when the address cannot be bound; [`ServerError::Serve`] when
/// serving fails.
pub fn run(
    retriever: Arc<dyn Retriever>,
    addr: SocketAddr,
    cfg: ServerConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Bind { addr, source })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        on_ready(bound);
        let shutdown = async {
            // If the signal handler cannot be installed, serve until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let limits = cfg.conn;
        serve(listener, router(retriever, cfg), limits, shutdown).await
    })
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Reads the body (bounded) and parses it as `T`, turning every failure into a JSON 4xx.
async fn parse_body<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {limit} bytes: {e}"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

/// Checks batch size and `k`, returning the `k` to use.
fn check(cfg: &ServerConfig, n: usize, k: Option<usize>, k_name: &str) -> Result<usize, ApiError> {
    if n > cfg.max_batch {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} queries in one request; at most {} allowed",
                cfg.max_batch
            ),
        ));
    }
    let k = k.unwrap_or(cfg.default_k);
    if k > cfg.max_k {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`{k_name}` = {k} is over the limit of {}", cfg.max_k),
        ));
    }
    Ok(k)
}

/// Searches every query, in parallel chunks on the blocking pool; result `i` answers query `i`.
async fn search_all(
    retriever: &Arc<dyn Retriever>,
    queries: Vec<String>,
    k: usize,
) -> Result<Vec<Vec<Hit>>, ApiError> {
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = queries.len().div_ceil(cores);
    let queries = Arc::new(queries);
    let tasks: Vec<_> = (0..queries.len())
        .step_by(chunk)
        .map(|start| {
            let retriever = Arc::clone(retriever);
            let queries = Arc::clone(&queries);
            on_blocking_pool("search", move || {
                let slice: Vec<&str> = queries
                    .iter()
                    .skip(start)
                    .take(chunk)
                    .map(String::as_str)
                    .collect();
                retriever.search_batch(&slice, k)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(queries.len());
    for joined in futures_util::future::join_all(tasks).await {
        let hits =
            joined?.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        out.extend(hits);
    }
    Ok(out)
}

async fn queries(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: QueriesRequest = parse_body(body, state.cfg.max_body_bytes).await?;
    let k = check(&state.cfg, req.queries.len(), req.k, "k")?;
    let _budget = state.lanes.reserve(req.queries.len(), k).await?;
    let hits = search_all(&state.retriever, req.queries.clone(), k).await?;
    // Serialized while the budget is held: the answer's bytes are part of what it bounds.
    on_blocking_pool("answer", move || {
        let answers: Vec<Vec<String>> = hits
            .iter()
            .map(|list| list.iter().map(Hit::render).collect())
            .collect();
        Json(json!({ "queries": req.queries, "answers": answers })).into_response()
    })
    .await
}

/// Runs `f` (the `what` of a request: its search, its answer) on tokio's blocking pool; a
/// panic in it becomes a 500 naming `what`. Searching, and rendering and serializing the
/// largest answer (102,400 passages, ~60 MB of JSON), take a core for up to a few hundred
/// milliseconds; on one of the async workers (as many as cores) they would delay every other
/// connection's reads and writes.
async fn on_blocking_pool<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} task failed: {e}"),
        )
    })
}

/// A hit as a Search-R1 corpus document.
fn search_r1_doc(hit: &Hit) -> Value {
    json!({
        "id": hit.id,
        "title": hit.title,
        "contents": format!("\"{}\"\n{}", hit.title, hit.text),
    })
}

async fn retrieve(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: RetrieveRequest = parse_body(body, state.cfg.max_body_bytes).await?;
    let k = check(&state.cfg, req.queries.len(), req.topk, "topk")?;
    let _budget = state.lanes.reserve(req.queries.len(), k).await?;
    let hits = search_all(&state.retriever, req.queries, k).await?;
    let with_scores = req.return_scores;
    on_blocking_pool("answer", move || {
        let result: Vec<Vec<Value>> = hits
            .iter()
            .map(|list| {
                list.iter()
                    .map(|h| {
                        if with_scores {
                            json!({ "document": search_r1_doc(h), "score": h.score })
                        } else {
                            search_r1_doc(h)
                        }
                    })
                    .collect()
            })
            .collect();
        Json(json!({ "result": result })).into_response()
    })
    .await
}
