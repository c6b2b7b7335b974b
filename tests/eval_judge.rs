//! The LLM judge (ACC_L, `sleuth::eval::judge`) against a fake OpenAI-compatible chat server
//! on loopback, and `sleuth eval --rescore` with R1-Searcher's answer rules and stored or live
//! verdicts.
//!
//! The fake "judge" reads the proposed answer out of the prompt and replies `True` for Paris,
//! `False.` for Lyon, prose for Nice (unparseable), and fails the first request about Marseille
//! with a 503 (retried). Checked: verdicts in order, the strict parse and its count, the retry,
//! an empty prediction judged without a request, and the cache (a second client sends nothing
//! and gives the same verdicts; a torn last line resends only that prompt).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use sleuth::eval::{judge_all, JudgeItem};
use sleuth::llm::{LlmClient, LlmOptions};

#[derive(Default)]
struct Hits(Mutex<HashMap<String, usize>>);

impl Hits {
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
    fn of(&self, answer: &str) -> usize {
        self.0.lock().unwrap().get(answer).copied().unwrap_or(0)
    }
}

async fn chat(State(hits): State<Arc<Hits>>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let answer = user
        .lines()
        .find_map(|l| l.strip_prefix("Proposed answer: "))
        .unwrap_or_default()
        .to_string();
    assert!(user.contains("Reference answer: "), "{user}");
    let n = {
        let mut h = hits.0.lock().unwrap();
        let c = h.entry(answer.clone()).or_default();
        *c += 1;
        *c
    };
    if answer == "Marseille" && n == 1 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "busy"}})),
        );
    }
    let verdict = match answer.as_str() {
        "Paris" | "Marseille" => "True",
        "Lyon" => "False.",
        _ => "The answer seems plausible, but I cannot be sure.",
    };
    let reply = json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict},
                     "finish_reason": "stop"}],
    });
    (StatusCode::OK, Json(reply))
}

fn serve() -> (String, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(hits.clone());
    (common::serve_loopback(app), hits)
}

fn client(url: &str, cache: &std::path::Path) -> LlmClient {
    LlmClient::new(&LlmOptions {
        url: url.to_string(),
        model: "judge-test".into(),
        retry_backoff_ms: 10,
        max_tokens: 16,
        cache: Some(cache.to_path_buf()),
        ..LlmOptions::default()
    })
    .unwrap()
}

#[test]
fn judge_parses_strictly_retries_and_replays_from_its_cache() {
    let (url, hits) = serve();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("judge-cache.jsonl");
    let golds = vec!["Paris".to_string()];
    let preds = ["Paris", "Lyon", "Nice", "Marseille", ""];
    let items: Vec<JudgeItem> = preds
        .iter()
        .map(|p| JudgeItem {
            question: "What is the capital of France?",
            golds: &golds,
            prediction: p,
        })
        .collect();
    let expected = vec![Some(true), Some(false), None, Some(true), Some(false)];

    let first = client(&url, &cache);
    assert_eq!(judge_all(&first, &items).unwrap(), expected);
    // Four requests (the empty prediction is not sent), one retried after its 503.
    assert_eq!(hits.total(), 5);
    assert_eq!(hits.of("Marseille"), 2);
    assert_eq!(hits.of(""), 0);
    let stats = first.stats();
    assert_eq!((stats.requests, stats.retries, stats.cached), (4, 1, 0));

    // Replay: a new client on the same cache sends nothing and gives the same verdicts.
    let second = client(&url, &cache);
    assert_eq!(judge_all(&second, &items).unwrap(), expected);
    assert_eq!(hits.total(), 5);
    assert_eq!(second.stats().cached, 4);

    // A torn last line (a write cut short) costs that one prompt only.
    let text = std::fs::read_to_string(&cache).unwrap();
    let keep = text.trim_end().rfind('\n').unwrap() + 1;
    std::fs::write(&cache, format!("{}{{\"key\": \"ab", &text[..keep])).unwrap();
    let third = client(&url, &cache);
    assert_eq!(judge_all(&third, &items).unwrap(), expected);
    assert_eq!(third.stats().requests, 1);
    assert_eq!(hits.total(), 6);
}

fn sleuth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sleuth"))
}

#[test]
fn rescore_reports_acc_l_from_stored_verdicts_and_from_a_live_judge() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("preds.jsonl");
    // R1-Searcher's row shape; " False " against "no" is the one divergence their script has
    // from a folded mapping (it maps only the raw strings True/False).
    std::fs::write(
        &file,
        concat!(
            r#"{"question": "Capital of France?", "answer": "Paris", "pred_ans": "Paris", "gpt4o_output": "True"}"#,
            "\n",
            r#"{"question": "Capital of France?", "answer": ["Paris"], "pred_ans": "Lyon", "gpt4o_output": "False"}"#,
            "\n",
            r#"{"question": "Is Paris in France?", "answer": "no", "pred_ans": " False ", "gpt4o_output": "True"}"#,
            "\n",
            r#"{"question": "Capital of France?", "answer": "Paris", "pred_ans": "Nice", "gpt4o_output": "True"}"#,
            "\n",
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| -> Value {
        let out = sleuth()
            .args(["eval", "--rescore"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r1 = run(&[]);
    assert_eq!(r1["n"], 4);
    assert_eq!(r1["em"], 25.0);
    assert_eq!(r1["acc_l"], 75.0);
    assert_eq!(r1["judge_unparsed"], 0);
    let folded = run(&["--answer-rules", "folded"]);
    assert_eq!(folded["em"], 50.0);
    let first_two = run(&["--limit", "2"]);
    assert_eq!(
        (first_two["n"].clone(), first_two["acc_l"].clone()),
        (json!(2), json!(50.0))
    );

    // A live judge replaces the stored verdicts: Paris True, Lyon False, " False " and Nice
    // unparseable.
    let (url, hits) = serve();
    let cache = dir.path().join("cache.jsonl");
    let live = run(&[
        "--judge-url",
        &url,
        "--judge-model",
        "judge-test",
        "--judge-cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(live["acc_l"], 25.0);
    assert_eq!(live["judge_unparsed"], 2);
    assert_eq!(hits.total(), 4);

    // A live judge needs the question: a row without one is an error naming file and line,
    // and nothing is sent.
    let bare = dir.path().join("bare.jsonl");
    std::fs::write(
        &bare,
        "{\"question\": \"Q?\", \"answer\": \"a\", \"pred_ans\": \"a\"}\n\n{\"answer\": \"b\", \"pred_ans\": \"b\"}\n",
    )
    .unwrap();
    let out = sleuth()
        .args(["eval", "--rescore"])
        .arg(&bare)
        .args([
            "--judge-url",
            &url,
            "--judge-model",
            "judge-test",
            "--judge-cache",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bare.jsonl:3") && err.contains("`question`"),
        "{err}"
    );
    assert_eq!(hits.total(), 4);
}
