//! The remote policy (`[model] backend = "openai"`, `sleuth::env::remote`) against a fake
//! OpenAI-compatible completions server on loopback, which plays the policy by rules on the
//! prompt text it receives:
//!
//! - "capital of France": first a query (the server strips `<|end_of_query|>` and, like
//!   llama.cpp, does not say which stop matched), then, once documents are in the prompt, an
//!   answer (closing `</answer>` stripped, vLLM-style `stop_reason` given);
//! - "loop": a query every turn, so the search budget ends the episode with "I don't know.";
//! - "long": `finish_reason: "length"`;
//! - "flaky": a 503 on the first request (retried).
//!
//! Checked through `sleuth::eval::evaluate` (the same call `sleuth eval` makes): searches run
//! here and their documents are in the next prompt, the endings and metrics, the token ids
//! and masks (prompt 0, policy 1, documents 0; decoding them gives the solution text), the
//! `retokenized` flag, the concurrency bound and the retry. A run against a real server
//! (llama-cpp-python serving the default GGUF) is `scripts/test-remote-policy`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use sleuth::env::remote::{RemoteOptions, RemotePolicy};
use sleuth::env::{EpisodeEnd, Policy, PromptConfig, RolloutConfig};
use sleuth::eval::evaluate;
use sleuth::model::{text_of, Sampler};
use sleuth::qa::QaExample;
use sleuth::search::{Hit, Retriever, SearchError};

#[derive(Default)]
struct Server {
    prompts: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    flaky_failed: AtomicUsize,
}

async fn completions(
    State(s): State<Arc<Server>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let prompt = body["prompt"].as_str().unwrap().to_string();
    assert_eq!(body["stop"], json!(["<|end_of_query|>", "</answer>"]));
    assert!(body["max_tokens"].as_u64().unwrap() > 0);
    s.prompts.lock().unwrap().push(prompt.clone());
    let question = prompt
        .lines()
        .find_map(|l| l.strip_prefix("Q: "))
        .unwrap_or("");
    let has_docs = prompt.contains("<|begin_of_documents|>");
    let choice = |text: &str, finish: &str, stop: Option<&str>| {
        let mut c = json!({"index": 0, "text": text, "finish_reason": finish});
        if let Some(st) = stop {
            c["stop_reason"] = json!(st);
        }
        (
            StatusCode::OK,
            Json(json!({"object": "text_completion", "choices": [c]})),
        )
    };
    if question.contains("flaky") && s.flaky_failed.fetch_add(1, Ordering::SeqCst) == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "busy"})),
        );
    }
    if question.contains("long") {
        return choice(" I keep thinking and thinking", "length", None);
    }
    if question.contains("loop") || !has_docs {
        return choice(
            " I need to search. <|begin_of_query|> capital of France",
            "stop",
            None,
        );
    }
    choice(
        " The documents say Paris. <answer> Paris",
        "stop",
        Some("</answer>"),
    )
}

fn serve() -> (String, Arc<Server>) {
    let state = Arc::new(Server::default());
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .with_state(state.clone());
    (common::serve_loopback(app), state)
}

struct Paris;
impl Retriever for Paris {
    fn search(&self, query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        assert_eq!(query, "capital of France");
        Ok(vec![Hit {
            id: "1".into(),
            title: "Paris".into(),
            text: "Paris is the capital of France.".into(),
            score: 1.0,
        }])
    }
}

fn qa(question: &str) -> QaExample {
    QaExample {
        idx: None,
        question: question.into(),
        answers: vec!["Paris".into()],
        support_titles: Vec::new(),
        kind: None,
    }
}

#[test]
fn remote_episodes_search_here_stop_where_told_and_score() {
    let Some(tokenizer) = common::default_tokenizer() else {
        return;
    };
    let (url, server) = serve();
    let policy = RemotePolicy::new(&RemoteOptions {
        url,
        model: "fake".into(),
        concurrency: 3,
        retry_backoff_ms: 10,
        ..RemoteOptions::default()
    })
    .unwrap();
    let prompt = PromptConfig {
        template: "Q: {question}\nA: <think>".into(),
        ..PromptConfig::default()
    };
    let cfg = RolloutConfig {
        samples_per_question: 1,
        max_new_tokens: 200,
        max_searches: 2,
        top_k: 1,
        context_tokens: 2048,
        temperature: 0.0,
        ..RolloutConfig::default()
    };
    let examples: Vec<QaExample> = [
        "What is the capital of France?",
        "Name the capital of France, flaky server",
        "loop: what is the capital of France?",
        "long: the capital of France?",
        "Capital of France, once more?",
        "And the capital of France again?",
    ]
    .iter()
    .map(|q| qa(q))
    .collect();
    let (report, records) = evaluate(
        &policy,
        &sleuth::env::Env {
            tokenizer: tokenizer.clone(),
            retriever: std::sync::Arc::new(Paris),
            prompt: prompt.clone(),
            rollout: cfg.clone(),
        },
        0,
        &examples,
        6,
        |_| {},
    )
    .unwrap();

    let ends: Vec<EpisodeEnd> = records.iter().map(|r| r.end).collect();
    use EpisodeEnd::*;
    assert_eq!(
        ends,
        [Answered, Answered, SearchBudget, Length, Answered, Answered]
    );
    assert_eq!(records[0].pred_ans, "Paris");
    assert_eq!(records[0].searches.len(), 1);
    assert!(records[0].solution.contains("<|end_of_query|>\n\n<|begin_of_documents|>\n(1)\"Paris\" Paris is the capital of France.\n<|end_of_documents|>"), "{}", records[0].solution);
    assert!(records[0].solution.ends_with("<answer> Paris</answer>"));
    assert_eq!(records[2].pred_ans, "I don't know.");
    assert_eq!(records[2].searches.len(), 2);
    assert_eq!(report.n, 6);
    assert_eq!(report.em, 66.7);
    assert_eq!(report.finished_rate, 66.7);
    // The 503 was retried: the flaky question took three requests for its two turns (it
    // answered, above). Never more than 3 requests at once.
    assert_eq!(server.flaky_failed.load(Ordering::SeqCst), 3);
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=3).contains(&max), "{max}");
    // The second turn's prompt carries the first turn's text and the documents.
    assert!(server
        .prompts
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.starts_with("Q: What is the capital of France?\nA: <think> I need to search. <|begin_of_query|> capital of France<|end_of_query|>\n\n<|begin_of_documents|>")));

    // Token ids and masks, through the Policy seam.
    let mut sampler = Sampler::new(cfg.sampling(0));
    let (episodes, stats) = policy
        .rollout(
            &sleuth::env::Env {
                tokenizer: tokenizer.clone(),
                retriever: std::sync::Arc::new(Paris),
                prompt: prompt.clone(),
                rollout: cfg.clone(),
            },
            &[examples[0].question.clone()],
            &mut sampler,
        )
        .unwrap();
    let ep = &episodes[0];
    assert!(ep.retokenized && ep.logprobs.is_empty());
    assert_eq!(ep.tokens.len(), ep.mask.len());
    assert!(ep.mask[..ep.prompt_len].iter().all(|&m| m == 0));
    assert_eq!(
        text_of(&tokenizer, &ep.tokens[ep.prompt_len..]),
        ep.solution
    );
    let policy_text: String = ep.tokens[ep.prompt_len..]
        .iter()
        .zip(&ep.mask[ep.prompt_len..])
        .filter(|(_, &m)| m == 1)
        .map(|(&t, _)| text_of(&tokenizer, &[t]))
        .collect();
    assert!(
        policy_text.contains("<|end_of_query|>") && !policy_text.contains("begin_of_documents")
    );
    assert_eq!(stats.sampled_tokens, ep.policy_tokens());
}

/// The MuSiQue and Bamboogle configs (data paths only, nothing under ../shared) drive an
/// evaluation of a few-line fixture in R1-Searcher's eval-set format (`idx`, `question`,
/// `answer` as a string or a list), through the fake server.
#[test]
fn the_held_out_benchmark_configs_evaluate_a_fixture_in_their_format() {
    let Some(tokenizer) = common::default_tokenizer() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = sleuth::qa::read_qa(&root.join("tests/fixtures/qa_r1_format.jsonl")).unwrap();
    assert_eq!(fixture.len(), 3);
    assert_eq!(fixture[1].answers, ["1583", "1582"]);
    let (url, _server) = serve();
    for (config, set) in [
        ("envs/eval-musique.toml", "data/qa/musique_500.jsonl"),
        ("envs/eval-bamboogle.toml", "data/qa/bamboogle.jsonl"),
    ] {
        let mut cfg = sleuth::config::RunConfig::load(&root.join(config)).unwrap();
        assert_eq!(cfg.data.eval, std::path::PathBuf::from(set), "{config}");
        assert!(
            !cfg.search.index.to_string_lossy().contains("shared"),
            "{config}"
        );
        assert_eq!(
            cfg.rollout.temperature, 0.0,
            "{config}: greedy, as R1-Searcher reports"
        );
        cfg.model.openai.url = url.clone();
        let policy = RemotePolicy::new(&cfg.model.openai).unwrap();
        let prompt = PromptConfig {
            template: "Q: {question}\nA: <think>".into(),
            ..cfg.prompt.clone()
        };
        let (report, records) = evaluate(
            &policy,
            &sleuth::env::Env {
                tokenizer: tokenizer.clone(),
                retriever: std::sync::Arc::new(Paris),
                prompt: prompt.clone(),
                rollout: cfg.rollout.clone(),
            },
            0,
            &fixture,
            3,
            |_| {},
        )
        .unwrap();
        assert_eq!(report.n, 3);
        assert!(records
            .iter()
            .all(|r| r.end == EpisodeEnd::Answered && r.searches.len() == 1));
        assert_eq!(
            report.cover_em, 0.0,
            "the fake policy answers Paris to everything"
        );
    }
}
