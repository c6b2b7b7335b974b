//! The axum application: routes, bearer-key check, request validation, JSON and SSE
//! responses. Handlers never touch the model: they validate, enqueue a [`Job`] and relay its
//! [`Event`]s.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use tokio::sync::mpsc;

use super::api::*;
use super::worker::{Event, Finish, Job, ServerStats};
use super::ServeOptions;

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub jobs: mpsc::Sender<Job>,
    pub opts: Arc<ServeOptions>,
    pub stats: Arc<ServerStats>,
    /// The config's default token budget per request.
    pub default_max_tokens: usize,
    /// The config's default sampling.
    pub default_temperature: f32,
    /// The config's default nucleus mass.
    pub default_top_p: f32,
}

/// An OpenAI-shaped error response.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            kind: kind.to_string(),
            param: param.map(str::to_string),
            code: code.map(str::to_string),
        },
    };
    (status, Json(body)).into_response()
}

fn bad_request(message: impl Into<String>, param: Option<&str>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        param,
        None,
    )
}

pub(crate) fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such route",
                None,
                Some("not_found"),
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed on this route",
                None,
                None,
            )
        })
        .layer(DefaultBodyLimit::max(state.opts.max_body_bytes))
        .with_state(state)
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or incorrect API key (send Authorization: Bearer KEY)",
                None,
                Some("invalid_api_key"),
            );
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health(State(st): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "model": st.opts.model_name,
        "stats": st.stats.snapshot(),
    }))
    .into_response()
}

async fn models(State(st): State<AppState>) -> Response {
    Json(serde_json::json!({
        "object": "list",
        "data": [{"id": st.opts.model_name, "object": "model", "created": 0, "owned_by": "sleuth"}],
    }))
    .into_response()
}

/// A request turned into a job's parameters, or the 4xx response explaining why not.
struct Parsed {
    job: Job,
    stream: bool,
    include_usage: bool,
    n: usize,
    events: mpsc::UnboundedReceiver<Event>,
}

/// Validates a request body; the error is the 4xx response to send (built once per bad
/// request, so its size does not matter).
#[allow(clippy::result_large_err)]
fn parse(st: &AppState, body: &[u8]) -> Result<Parsed, Response> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("invalid request body: {e}"), None))?;
    if req.model != st.opts.model_name {
        return Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{}` does not exist; this server serves `{}`",
                req.model, st.opts.model_name
            ),
            Some("model"),
            Some("model_not_found"),
        ));
    }
    if req.messages.is_empty() {
        return Err(bad_request("messages must not be empty", Some("messages")));
    }
    let Some(last) = req.messages.last() else {
        return Err(bad_request("messages must not be empty", Some("messages")));
    };
    let question = last.content.as_ref().map(Content::text).unwrap_or_default();
    if last.role != Role::User || question.trim().is_empty() {
        return Err(bad_request(
            "the last message must be a non-empty user message (the question)",
            Some("messages"),
        ));
    }
    // Earlier turns stay in the prompt, written the way the template writes a turn.
    let mut system = Vec::new();
    let mut history = String::new();
    let earlier = req.messages.split_last().map_or(&[][..], |(_, rest)| rest);
    for m in earlier {
        let text = m.content.as_ref().map(Content::text).unwrap_or_default();
        match m.role {
            Role::System | Role::Developer => system.push(text),
            Role::User => history.push_str(&format!("{}\n", text.trim())),
            Role::Assistant => history.push_str(&format!("Assistant: {}\nUser:", text.trim())),
            Role::Tool => history.push_str(&format!("{}\n", text.trim())),
        }
    }
    if !history.is_empty() && !history.ends_with("User:") {
        history.push_str("User:");
    }
    let question = format!("{history}{}", question.trim());
    let temperature = req.temperature.unwrap_or(st.default_temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let top_p = req.top_p.unwrap_or(st.default_top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad_request("top_p must be in (0, 1]", Some("top_p")));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => st.default_max_tokens,
        Some(0) => {
            return Err(bad_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(m) if m as usize > st.opts.max_tokens_limit => {
            return Err(bad_request(
                format!("max_tokens must be at most {}", st.opts.max_tokens_limit),
                Some("max_tokens"),
            ))
        }
        Some(m) => m as usize,
    };
    let n = req.n.unwrap_or(1);
    if n == 0 || n as usize > st.opts.max_n {
        return Err(bad_request(
            format!("n must be between 1 and {}", st.opts.max_n),
            Some("n"),
        ));
    }
    let stops = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > 4 {
        return Err(bad_request("at most 4 stop sequences", Some("stop")));
    }
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        question,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        temperature,
        top_p,
        max_tokens,
        n: n as usize,
        stops,
        seed: req.seed.map(|s| s as u64),
        events: tx,
    };
    Ok(Parsed {
        job,
        stream,
        include_usage,
        n: n as usize,
        events: rx,
    })
}

fn request_id() -> String {
    format!(
        "chatcmpl-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

fn tool_call(choice: usize, k: usize, query: &str, index: Option<usize>) -> ToolCall {
    ToolCall {
        index,
        id: format!("search_{choice}_{k}"),
        kind: "function".into(),
        function: FunctionCall {
            name: "search".into(),
            arguments: serde_json::json!({ "query": query }).to_string(),
        },
    }
}

async fn chat(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            return error(
                status,
                "invalid_request_error",
                format!("cannot read request body: {}", e.body_text()),
                None,
                None,
            );
        }
    };
    let p = match parse(&st, &body) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    st.stats.queued.fetch_add(1, Ordering::Relaxed);
    match st.jobs.try_send(p.job) {
        Ok(()) => {}
        Err(e) => {
            st.stats.queued.fetch_sub(1, Ordering::Relaxed);
            let full = matches!(e, mpsc::error::TrySendError::Full(_));
            if full {
                st.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            return error(
                if full {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "server_error",
                if full {
                    "the request queue is full; retry later"
                } else {
                    "the generation worker has stopped"
                },
                None,
                Some(if full { "queue_full" } else { "unavailable" }),
            );
        }
    }
    let id = request_id();
    if p.stream {
        stream_response(st, id, p.n, p.include_usage, p.events)
    } else {
        match tokio::time::timeout(st.opts.timeout, collect(&st, id, p.n, p.events)).await {
            Ok(r) => r,
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!(
                    "generation did not finish within {} s",
                    st.opts.timeout.as_secs_f64()
                ),
                None,
                Some("timeout"),
            ),
        }
    }
}

/// Gathers a request's events into one `chat.completion`.
async fn collect(
    st: &AppState,
    id: String,
    n: usize,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let mut msgs: Vec<ResponseMessage> = (0..n)
        .map(|_| ResponseMessage {
            role: "assistant".into(),
            content: String::new(),
            reasoning_content: String::new(),
            tool_calls: Vec::new(),
        })
        .collect();
    let mut finish: Vec<Option<Finish>> = vec![None; n];
    let mut usage = Usage::default();
    while finish.iter().any(Option::is_none) {
        let Some(ev) = rx.recv().await else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the generation worker stopped",
                None,
                None,
            );
        };
        match ev {
            // `choice` < n: the worker numbers a request's rows 0..n.
            Event::Reasoning { choice, text } => {
                if let Some(m) = msgs.get_mut(choice) {
                    m.reasoning_content.push_str(&text);
                }
            }
            Event::Content { choice, text } => {
                if let Some(m) = msgs.get_mut(choice) {
                    m.content.push_str(&text);
                }
            }
            Event::Search { choice, call } => {
                if let Some(m) = msgs.get_mut(choice) {
                    let k = m.tool_calls.len();
                    m.tool_calls.push(tool_call(choice, k, &call.query, None));
                }
            }
            Event::Done {
                choice,
                finish: f,
                prompt_tokens,
                completion_tokens,
            } => {
                if let Some(slot) = finish.get_mut(choice) {
                    *slot = Some(f);
                }
                usage.prompt_tokens += prompt_tokens;
                usage.completion_tokens += completion_tokens;
            }
            Event::Error(msg) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    msg,
                    None,
                    None,
                )
            }
            Event::Invalid(msg) => return bad_request(msg, Some("messages")),
        }
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let resp = ChatResponse {
        id,
        object: "chat.completion".into(),
        created: now(),
        model: st.opts.model_name.clone(),
        choices: msgs
            .into_iter()
            .zip(finish)
            .enumerate()
            .map(|(index, (message, f))| Choice {
                index,
                message,
                finish_reason: f.unwrap_or(Finish::Stop).as_str().into(),
                logprobs: None,
            })
            .collect(),
        usage,
    };
    Json(resp).into_response()
}

/// Relays a request's events as `chat.completion.chunk` server-sent events.
fn stream_response(
    st: AppState,
    id: String,
    n: usize,
    include_usage: bool,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let (out_tx, out_rx) = mpsc::channel::<SseEvent>(64);
    let model = st.opts.model_name.clone();
    let timeout = st.opts.timeout;
    let created = now();
    tokio::spawn(async move {
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| {
            let c = ChatChunk {
                id: id.clone(),
                object: "chat.completion.chunk".into(),
                created,
                model: model.clone(),
                choices,
                usage,
            };
            SseEvent::default().data(serde_json::to_string(&c).unwrap_or_default())
        };
        let delta = |index: usize, delta: Delta, finish: Option<Finish>| ChunkChoice {
            index,
            delta,
            finish_reason: finish.map(|f| f.as_str().to_string()),
        };
        for i in 0..n {
            let d = Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Default::default()
            };
            if out_tx
                .send(chunk(vec![delta(i, d, None)], None))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut searches = vec![0usize; n];
        let mut done = 0;
        let mut usage = Usage::default();
        while done < n {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = out_tx.closed() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = out_tx.send(error_event("generation timed out", "server_error")).await;
                    return;
                }
            };
            let fatal = matches!(ev, None | Some(Event::Error(_)) | Some(Event::Invalid(_)));
            let msg = match ev {
                None => error_event("the generation worker stopped", "server_error"),
                Some(Event::Error(m)) => error_event(&m, "server_error"),
                Some(Event::Invalid(m)) => error_event(&m, "invalid_request_error"),
                Some(Event::Reasoning { choice, text }) => chunk(
                    vec![delta(
                        choice,
                        Delta {
                            reasoning_content: Some(text),
                            ..Default::default()
                        },
                        None,
                    )],
                    None,
                ),
                Some(Event::Content { choice, text }) => chunk(
                    vec![delta(
                        choice,
                        Delta {
                            content: Some(text),
                            ..Default::default()
                        },
                        None,
                    )],
                    None,
                ),
                Some(Event::Search { choice, call }) => {
                    let k = searches.get(choice).copied().unwrap_or(0);
                    if let Some(s) = searches.get_mut(choice) {
                        *s += 1;
                    }
                    chunk(
                        vec![delta(
                            choice,
                            Delta {
                                tool_calls: Some(vec![tool_call(choice, k, &call.query, Some(k))]),
                                ..Default::default()
                            },
                            None,
                        )],
                        None,
                    )
                }
                Some(Event::Done {
                    choice,
                    finish,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    done += 1;
                    usage.prompt_tokens += prompt_tokens;
                    usage.completion_tokens += completion_tokens;
                    chunk(vec![delta(choice, Delta::default(), Some(finish))], None)
                }
            };
            if out_tx.send(msg).await.is_err() || fatal {
                return;
            }
        }
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        if include_usage && out_tx.send(chunk(Vec::new(), Some(usage))).await.is_err() {
            return;
        }
        let _ = out_tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let body = stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response()
}

/// An error sent mid-stream: a `data:` line holding OpenAI's error body (what the official
/// clients raise as an API error).
fn error_event(message: &str, kind: &str) -> SseEvent {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.to_string(),
            kind: kind.to_string(),
            param: None,
            code: None,
        },
    };
    SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default())
}
