//! The OpenAI-compatible chat endpoint (DESIGN §7): `sleuth serve`.
//!
//! `POST /v1/chat/completions` runs the search agent server-side with the same prompt
//! template, search budget and retriever as training, and answers with the text inside
//! `<answer>…</answer>` as `message.content`. The trajectory before the answer (reasoning,
//! queries and the documents inserted) comes back as `reasoning_content`, and each search as
//! a `tool_calls` entry (`search`, `{"query": …}`), so a plain OpenAI client sees the answer
//! and a curious one sees the work. `stream: true` relays the same events as
//! `chat.completion.chunk` server-sent events while they happen, ending in `data: [DONE]`.
//! `GET /v1/models` and `GET /health` (with queue and batch counters) complete the surface.
//!
//! Design choices:
//! - **One generation thread owns the model** ([`worker`]). burn's CPU backend already uses
//!   every core for one forward pass, so parallel forward passes would only contend; instead
//!   requests that wait together and sample alike are batched as row groups of one rollout,
//!   which amortizes the weight reads the way training's `questions × G` batch does.
//!   Handlers on the tokio runtime only validate, enqueue and relay events.
//! - **Bounded everywhere**: a request-body limit, a bounded job queue (a full queue answers
//!   429 rather than letting latency grow without bound), a cap on `n` and `max_tokens`, and
//!   a per-request deadline. A client that disconnects (or times out) closes its event
//!   channel; the worker sees that at the next token and stops those rows, and jobs still
//!   queued are dropped unrun.
//! - **Errors are OpenAI's JSON shape** (`{"error": {"message", "type", "param", "code"}}`)
//!   with a 4xx status for anything the client got wrong; a panic inside generation fails the
//!   request, not the server.
//! - Binds 127.0.0.1 unless told otherwise; an optional bearer key guards `/v1/*`.

pub mod api;
mod http;
pub mod test_model;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::backend::Backend;

pub use worker::{Agent, ServerStats, StatsSnapshot};

use crate::model::Llama;

/// Server settings. Each default is stated once, in `impl Default`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model id clients must name. Default `sleuth`.
    pub model_name: String,
    /// Bearer key required on `/v1/*`; `None` leaves them open. Default `None`.
    pub api_key: Option<String>,
    /// Largest request body in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Requests that may wait in the queue (the worker holds as many again while it picks
    /// a batch); more get 429. Default 64.
    pub queue: usize,
    /// Requests batched into one rollout at most. Default 8.
    pub max_batch: usize,
    /// Wall-clock limit of one request (queueing included). Default 300 s.
    pub timeout: Duration,
    /// Largest `max_tokens` a request may ask for. Default 2048.
    pub max_tokens_limit: usize,
    /// Largest `n`. Default 8.
    pub max_n: usize,
    /// Header-read deadline and connection bound ([`crate::http::server`]).
    pub conn: crate::http::server::ConnLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_name: "sleuth".into(),
            api_key: None,
            max_body_bytes: 1 << 20,
            queue: 64,
            max_batch: 8,
            timeout: Duration::from_secs(300),
            max_tokens_limit: 2048,
            max_n: 8,
            conn: crate::http::server::ConnLimits::default(),
        }
    }
}

/// Errors starting or running the server or the chat client.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The run config could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The model or tokenizer could not be loaded.
    #[error("loading model {path}: {source}", path = path.display())]
    Model {
        /// The model file.
        path: std::path::PathBuf,
        /// Cause.
        source: crate::model::ModelError,
    },
    /// The checkpoint could not be loaded.
    #[error(transparent)]
    Checkpoint(#[from] crate::rl::checkpoint::CheckpointError),
    /// The retriever could not be opened.
    #[error("opening index {path}: {source}", path = path.display())]
    Search {
        /// The index directory.
        path: std::path::PathBuf,
        /// Cause.
        source: crate::search::SearchError,
    },
    /// An option is invalid (named in the message).
    #[error("invalid option: {0}")]
    Option(String),
    /// Binding, serving or the runtime failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The chat client's HTTP request failed.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The endpoint.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The server answered the chat client with an error.
    #[error("server error {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The error message from the body.
        message: String,
    },
}

/// Builds the application: spawns the generation worker that owns `agent` and returns the
/// router (for embedding in another axum app or for tests).
///
/// # Errors
/// [`ServeError::Io`] when the worker thread cannot be spawned.
pub fn router<B: Backend>(agent: Agent<B>, opts: ServeOptions) -> Result<axum::Router, ServeError>
where
    Llama<B>: Send + 'static,
{
    let stats = Arc::new(ServerStats::default());
    let state = http::AppState {
        default_max_tokens: agent.env.rollout.max_new_tokens.min(opts.max_tokens_limit),
        default_temperature: agent.env.rollout.temperature,
        default_top_p: agent.env.rollout.top_p,
        jobs: worker::spawn(agent, opts.queue, opts.max_batch, stats.clone()).map_err(
            |source| ServeError::Io {
                context: "spawning the generation thread".into(),
                source,
            },
        )?,
        opts: Arc::new(opts),
        stats,
    };
    Ok(http::router(state))
}

/// Serves `agent` on `listener` until `shutdown` resolves, on the shared accept loop
/// ([`crate::http::server::serve`]: header-read deadline, connection bound).
///
/// # Errors
/// [`ServeError::Io`] when the worker cannot start or the server fails.
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    agent: Agent<B>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    Llama<B>: Send + 'static,
{
    let limits = opts.conn;
    let app = router(agent, opts)?;
    crate::http::server::serve(listener, app, limits, shutdown)
        .await
        .map_err(|source| ServeError::Io {
            context: "serving".into(),
            source,
        })
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
///
/// # Errors
/// [`ServeError::Io`] naming the address.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("binding {addr}"),
            source,
        })?;
    let local = l.local_addr().map_err(|source| ServeError::Io {
        context: format!("binding {addr}"),
        source,
    })?;
    Ok((l, local))
}
