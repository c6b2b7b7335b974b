//! The chat endpoint over real HTTP (reqwest against a loopback server): the OpenAI response
//! and error shapes, streaming that reassembles to the non-streamed answer, the bearer key,
//! the body limit, batching of concurrent requests, the bounded queue, the deadline, and
//! cancellation when a client disconnects. The policy is a tiny random model driven by the
//! real tokenizer, so every request takes milliseconds.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sleuth::env::{Env, PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Inference};
use sleuth::model::gguf::GgufFile;
use sleuth::model::Tokenizer;
use sleuth::search::{Hit, Retriever, SearchError};
use sleuth::serve::{bind, serve, test_model, Agent, ServeOptions};

fn tokenizer() -> Option<Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            eprintln!("skipping: {} missing (run scripts/setup)", path.display());
            return None;
        }
        Some(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap())
    })
    .clone()
}

struct OneDoc;
impl Retriever for OneDoc {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(vec![Hit {
            id: "1".into(),
            title: "Paris".into(),
            text: "Paris is the capital of France.".into(),
            score: 1.0,
        }])
    }
}

/// Starts a server on a free loopback port; `None` when the tokenizer is not installed.
async fn start(opts: ServeOptions) -> Option<String> {
    let tok = tokenizer()?;
    let device = backend::device();
    let agent = Agent::<Inference> {
        model: test_model::random(&tok, 7, &device),
        env: Env {
            tokenizer: tok,
            retriever: std::sync::Arc::new(OneDoc),
            prompt: PromptConfig::default(),
            rollout: RolloutConfig {
                max_new_tokens: 16,
                temperature: 0.0,
                ..Default::default()
            },
        },
    };
    let (listener, addr) = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    tokio::spawn(serve(listener, agent, opts, std::future::pending()));
    Some(format!("http://{addr}"))
}

fn ask(extra: Value) -> Value {
    let mut body = json!({
        "model": "sleuth",
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn health(base: &str) -> Value {
    reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn assert_openai_error(status: u16, v: &Value, want_status: u16) {
    assert_eq!(status, want_status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// Reads an SSE response into its `data:` payloads.
async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_models_and_a_plain_completion() {
    let Some(base) = start(ServeOptions::default()).await else {
        return;
    };
    assert_eq!(health(&base).await["status"], "ok");
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "sleuth");

    let (status, v) = post(&base, &ask(json!({"max_tokens": 8, "temperature": 0}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // A random model never closes </answer>: it runs out of its 8-token budget.
    assert_eq!(choice["finish_reason"], "length");
    assert!(!choice["message"]["reasoning_content"]
        .as_str()
        .unwrap()
        .is_empty());
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 8);
    assert!(
        u["prompt_tokens"].as_u64().unwrap() > 100,
        "the protocol prompt is counted: {u}"
    );
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 8
    );
    // max_completion_tokens is an alias (and wins); n gives several choices.
    let (status, v) = post(
        &base,
        &ask(json!({"max_tokens": 3, "max_completion_tokens": 5, "n": 2, "temperature": 0})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    // Earlier turns and a system message are accepted; content may be a list of parts.
    let body = json!({"model": "sleuth", "max_tokens": 4, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "user", "content": [{"type": "text", "text": "Who wrote Hamlet?"}]}
    ], "user": "someone", "frequency_penalty": 0});
    let (status, v) = post(&base, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_survives() {
    let Some(base) = start(ServeOptions {
        max_body_bytes: 4096,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let raw = |body: &'static str| {
        let c = client.clone();
        let url = url.clone();
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = raw("{not json").await;
    assert_openai_error(s, &v, 400);
    let (s, v) = raw("").await;
    assert_openai_error(s, &v, 400);
    let (s, v) = raw("[1, 2]").await;
    assert_openai_error(s, &v, 400);
    let (s, v) = raw(r#"{"model": "sleuth"}"#).await;
    assert_openai_error(s, &v, 400);
    for (extra, param) in [
        (json!({"temperature": "hot"}), None),
        (json!({"max_tokens": -1}), None),
        (json!({"messages": "hello"}), None),
        (json!({"messages": []}), Some("messages")),
        (
            json!({"messages": [{"role": "user", "content": "   "}]}),
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "assistant", "content": "x"}]}),
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            None,
        ),
        (json!({"max_tokens": 0}), Some("max_tokens")),
        (json!({"max_tokens": 1_000_000}), Some("max_tokens")),
        (json!({"n": 0}), Some("n")),
        (json!({"n": 100}), Some("n")),
        (json!({"temperature": 9}), Some("temperature")),
        (json!({"top_p": 0}), Some("top_p")),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), Some("stop")),
        (json!({"stream": "yes"}), None),
    ] {
        let (s, v) = post(&base, &ask(extra.clone())).await;
        assert_openai_error(s, &v, 400);
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{extra}: {v}");
        }
    }
    let (s, v) = post(&base, &ask(json!({"model": "gpt-4o"}))).await;
    assert_openai_error(s, &v, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    // Over the body limit.
    let big = "x".repeat(10_000);
    let (s, v) = post(
        &base,
        &ask(json!({"messages": [{"role": "user", "content": big}]})),
    )
    .await;
    assert_openai_error(s, &v, 413);
    let r = client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client.get(&url).send().await.unwrap();
    let s = r.status().as_u16();
    assert_openai_error(s, &r.json().await.unwrap(), 405);
    // Still serving.
    let (s, v) = post(&base, &ask(json!({"max_tokens": 2}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(health(&base).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_key_guards_v1_routes() {
    let Some(base) = start(ServeOptions {
        api_key: Some("s3cret".into()),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let body = ask(json!({"max_tokens": 2}));
    let r = client.post(&url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_openai_error(s, &v, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Health stays open for probes.
    assert_eq!(health(&base).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reassembles_to_the_plain_answer() {
    let Some(base) = start(ServeOptions::default()).await else {
        return;
    };
    let params = json!({"max_tokens": 12, "temperature": 0});
    let (s, plain) = post(&base, &ask(params.clone())).await;
    assert_eq!(s, 200, "{plain}");
    let mut body = ask(params);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(r).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() > 3, "tokens come as separate chunks: {data:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].as_str().unwrap();
    let (mut reasoning, mut content, mut finish) = (String::new(), String::new(), None);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        if let Some(ch) = c["choices"].get(0) {
            reasoning.push_str(ch["delta"]["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    let m = &plain["choices"][0]["message"];
    assert_eq!(reasoning, m["reasoning_content"].as_str().unwrap());
    assert_eq!(content, m["content"].as_str().unwrap());
    assert_eq!(
        finish.as_deref(),
        plain["choices"][0]["finish_reason"].as_str()
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["usage"], plain["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_batch() {
    let Some(base) = start(ServeOptions::default()).await else {
        return;
    };
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { post(&base, &ask(json!({"max_tokens": 48}))).await })
        })
        .collect();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 48);
    }
    let stats = &health(&base).await["stats"];
    assert_eq!(stats["completed"], 6, "{stats}");
    assert!(stats["max_batch"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["batches"].as_u64().unwrap() < 6, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_deadline_answers_504() {
    let Some(base) = start(ServeOptions {
        queue: 1,
        max_batch: 1,
        timeout: Duration::from_millis(1500),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { post(&base, &ask(json!({"max_tokens": 2000}))).await })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        if s != 200 {
            assert_openai_error(s, &v, s);
        }
        codes.push(s);
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert!(
        codes.iter().all(|c| [200, 429, 504].contains(c)),
        "{codes:?}"
    );
    let t0 = Instant::now();
    let (s, v) = post(&base, &ask(json!({"max_tokens": 2000}))).await;
    if s == 504 {
        assert_openai_error(s, &v, 504);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    assert!(codes.contains(&504) || s == 504, "{codes:?} {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_client_cancels_its_generation() {
    let Some(base) = start(ServeOptions::default()).await else {
        return;
    };
    let mut body = ask(json!({"max_tokens": 2000, "temperature": 0}));
    body["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    // Wait for the first token chunk, then hang up.
    let mut seen = String::new();
    while !seen.contains("reasoning_content") {
        seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
    }
    drop(s);
    wait_cancelled(&base, 1, 0).await;
    // The worker is free again at once.
    let t0 = Instant::now();
    let (s, v) = post(&base, &ask(json!({"max_tokens": 2}))).await;
    assert_eq!(s, 200, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // A non-streamed request whose client gives up is cancelled too.
    let r = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{base}/v1/chat/completions"))
        .json(&ask(json!({"max_tokens": 2000, "temperature": 0})))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    wait_cancelled(&base, 2, 1).await;
}

/// Polls `/health` (10 s at most) until `cancelled` requests were counted, then checks how many
/// had completed.
async fn wait_cancelled(base: &str, cancelled: u64, completed: u64) {
    let t0 = Instant::now();
    loop {
        let stats = health(base).await["stats"].clone();
        if stats["cancelled"] == cancelled {
            assert_eq!(stats["completed"], completed, "{stats}");
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not cancelled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_longer_than_the_context_is_a_400_and_spares_its_batch() {
    let Some(base) = start(ServeOptions::default()).await else {
        return;
    };
    let long = "history ".repeat(6000);
    let big = {
        let base = base.clone();
        tokio::spawn(async move {
            post(
                &base,
                &ask(json!({"messages": [{"role": "user", "content": long}]})),
            )
            .await
        })
    };
    let small = {
        let base = base.clone();
        tokio::spawn(async move { post(&base, &ask(json!({"max_tokens": 4}))).await })
    };
    let (s, v) = big.await.unwrap();
    assert_openai_error(s, &v, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("context"),
        "{v}"
    );
    let (s, v) = small.await.unwrap();
    assert_eq!(s, 200, "{v}");
}
