//! The KG builders with an LLM (DESIGN §6, `sleuth::llm`), against a fake OpenAI-compatible
//! server on loopback that answers each passage with canned JSON (fenced, with prose, with a
//! trailing comma, unparseable), can fail chosen passages with a status, and records every
//! request and the most requests it had in flight at once.
//!
//! Checked: the exact graph built from the replies (entities merged case-insensitively,
//! passages, relations, descriptions, keywords), retries on 5xx and 429 and none on other 4xx,
//! the concurrency bound, the cache (a repeat build sends nothing and writes the same bytes; an
//! interrupted build or a torn cache line resends only what is missing; a malformed middle line
//! is an error), and a reply that does not parse counted as a failure.

mod common;

use common::{p, serve_loopback, write_corpus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use sleuth::corpus::Passage;
use sleuth::index::graph::{
    build_kg, build_kg_from_path, build_tree_from_path, llm_cache_path, EmbedderKind, GraphError,
    GraphKind, KgOptions, KnowledgeGraph, TreeIndex, TreeOptions,
};
use sleuth::llm::{LlmClient, LlmError, LlmOptions};

// ---------------------------------------------------------------------------------------------
// The fake server

/// What the server does, changeable between builds.
#[derive(Default, Clone)]
struct Plan {
    /// Titles whose first request gets a 500.
    fail_once: Vec<String>,
    /// Title → status returned for every request about it.
    fail_always: HashMap<String, u16>,
    /// Delay before answering, so concurrent requests overlap.
    delay_ms: u64,
}

#[derive(Default)]
struct ServerState {
    plan: Mutex<Plan>,
    /// Requests received, per passage title (every attempt).
    hits: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct FakeServer {
    url: String,
    state: Arc<ServerState>,
}

impl FakeServer {
    fn hits(&self) -> HashMap<String, usize> {
        self.state.hits.lock().unwrap().clone()
    }
    fn total_hits(&self) -> usize {
        self.hits().values().sum()
    }
    fn reset_hits(&self) {
        self.state.hits.lock().unwrap().clear();
    }
    fn set_plan(&self, plan: Plan) {
        *self.state.plan.lock().unwrap() = plan;
    }
    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// The reply the "model" gives for a passage title.
fn canned(title: &str) -> &'static str {
    match title {
        // Fenced, with a doubled space and a relation end also listed as an entity.
        "Ada Lovelace" => {
            "```json\n{\"entities\": [\
             {\"name\": \"Ada Lovelace\", \"description\": \"An English mathematician.\"}, \
             {\"name\": \"London\", \"description\": \"City where Ada was born.\"}, \
             {\"name\": \"Charles  Babbage\", \"description\": \"Collaborator of Ada.\"}], \
             \"relations\": [\
             {\"source\": \"Ada Lovelace\", \"target\": \"London\", \"relation\": \"was born in\", \
              \"description\": \"Ada Lovelace was born in London.\", \"keywords\": [\"birth\", \"birthplace\"]}, \
             {\"source\": \"Ada Lovelace\", \"target\": \"Charles Babbage\", \"relation\": \"worked with\", \
              \"description\": \"She worked with Babbage.\", \"keywords\": [\"collaboration\", \"Analytical Engine\"]}]}\n```"
        }
        // Plain, lowercase names of entities seen before, trailing commas.
        "Charles Babbage" => {
            "{\"entities\": [\
             {\"name\": \"charles babbage\", \"description\": \"Designer of the Analytical Engine.\"}, \
             {\"name\": \"Analytical Engine\", \"description\": \"A machine Babbage designed.\"}, \
             {\"name\": \"london\", \"description\": \"City where Babbage worked.\"},], \
             \"relations\": [{\"source\": \"Charles Babbage\", \"target\": \"Analytical Engine\", \
             \"relation\": \"designed\", \"description\": \"Babbage designed the engine.\", \
             \"keywords\": [\"design\", \"machine\",]}]}"
        }
        // Prose around a fenced block.
        "Analytical Engine" => {
            "Here is the graph:\n```json\n{\"entities\": [{\"name\": \"Analytical Engine\", \
             \"description\": \"A mechanical computer.\"}], \"relations\": []}\n```\nDone."
        }
        // Not JSON at all.
        _ => "I am sorry, I cannot help with that.",
    }
}

async fn chat(
    State(state): State<Arc<ServerState>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let title = user
        .lines()
        .find_map(|l| l.strip_prefix("Title: "))
        .unwrap_or_default()
        .to_string();
    assert_eq!(body["temperature"], json!(0));
    assert!(body["max_tokens"].as_u64().is_some());
    let count = {
        let mut hits = state.hits.lock().unwrap();
        let c = hits.entry(title.clone()).or_default();
        *c += 1;
        *c
    };
    let plan = state.plan.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if let Some(&status) = plan.fail_always.get(&title) {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"message": format!("refused {title}")}})),
        );
    }
    if count == 1 && plan.fail_once.contains(&title) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "try again"}})),
        );
    }
    // A summary prompt (no `Title:` line) about "EMPTY" or rockets (the tree test's corpus)
    // gets a blank reply; one about cats a JSON summary.
    let content = if user.contains("EMPTY") || user.contains("orbit") {
        "  \n"
    } else if user.contains("purr") {
        "{\"summary\": \"Cats purr, said the model.\"}"
    } else {
        canned(&title)
    };
    let reply = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
    });
    (StatusCode::OK, Json(reply))
}

/// Starts the fake server on 127.0.0.1:0 in a thread of its own (the client under test is
/// blocking and runs its own runtime).
fn serve(plan: Plan) -> FakeServer {
    let state = Arc::new(ServerState {
        plan: Mutex::new(plan),
        ..ServerState::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(state.clone());
    FakeServer {
        url: serve_loopback(app),
        state,
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus and expectations

/// Four passages; their replies are [`canned`].
fn corpus() -> Vec<Passage> {
    vec![
        p(
            "a",
            "Ada Lovelace",
            "Ada Lovelace was born in London. She worked with Charles Babbage.",
        ),
        p(
            "b",
            "Charles Babbage",
            "Charles Babbage designed the Analytical Engine in London.",
        ),
        p(
            "c",
            "Analytical Engine",
            "The Analytical Engine was a mechanical computer.",
        ),
        p("d", "London", "London is the capital of England."),
    ]
}

fn llm(server: &FakeServer, concurrency: usize) -> LlmOptions {
    LlmOptions {
        url: server.url.clone(),
        model: "fake-model".into(),
        concurrency,
        retries: 2,
        retry_backoff_ms: 5,
        timeout_secs: 10,
        ..LlmOptions::default()
    }
}

fn opts(llm: LlmOptions) -> KgOptions {
    KgOptions {
        progress: false,
        overwrite: true,
        llm: Some(llm),
        ..KgOptions::default()
    }
}

/// (name, passages, description) of every entity.
fn entities(g: &KnowledgeGraph) -> Vec<(String, Vec<u32>, String)> {
    g.entities()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.name.clone(),
                e.passages.clone(),
                g.entity_description(i as u32),
            )
        })
        .collect()
}

/// (head name, tail name, text, passages, description, keywords) of every relation.
type RelationRow = (String, String, String, Vec<u32>, String, Vec<String>);

fn relations(g: &KnowledgeGraph) -> Vec<RelationRow> {
    g.relations()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                g.entities()[r.head as usize].name.clone(),
                g.entities()[r.tail as usize].name.clone(),
                r.text.clone(),
                r.passages.clone(),
                g.relation_description(i),
                r.keywords.clone(),
            )
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

fn expected_entities() -> Vec<(String, Vec<u32>, String)> {
    vec![
        (s("Ada Lovelace"), vec![0], s("An English mathematician.")),
        (
            s("Analytical Engine"),
            vec![1, 2],
            s("A machine Babbage designed. A mechanical computer."),
        ),
        (
            s("Charles Babbage"),
            vec![0, 1],
            s("Collaborator of Ada. Designer of the Analytical Engine."),
        ),
        (
            s("London"),
            vec![0, 1],
            s("City where Ada was born. City where Babbage worked."),
        ),
    ]
}

fn expected_relations(keywords: bool) -> Vec<RelationRow> {
    let kw = |k: &[&str]| -> Vec<String> {
        if keywords {
            k.iter().map(|x| s(x)).collect()
        } else {
            Vec::new()
        }
    };
    vec![
        (
            s("Ada Lovelace"),
            s("Charles Babbage"),
            s("worked with"),
            vec![0],
            s("She worked with Babbage."),
            kw(&["collaboration", "analytical", "engine"]),
        ),
        (
            s("Ada Lovelace"),
            s("London"),
            s("was born in"),
            vec![0],
            s("Ada Lovelace was born in London."),
            kw(&["birth", "birthplace"]),
        ),
        (
            s("Charles Babbage"),
            s("Analytical Engine"),
            s("designed"),
            vec![1],
            s("Babbage designed the engine."),
            kw(&["design", "machine"]),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn tkg_from_replies_with_retry_bounded_concurrency_and_a_cache_that_replays() {
    let server = serve(Plan {
        fail_once: vec![s("Charles Babbage")],
        delay_ms: 300,
        ..Plan::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &corpus());
    let out = dir.path().join("g.tkg");
    let o = opts(llm(&server, 2));

    let stats = build_kg_from_path(&corpus, &out, GraphKind::Tkg, &o).unwrap();
    let g = KnowledgeGraph::read(&out).unwrap();
    assert_eq!(entities(&g), expected_entities());
    assert_eq!(relations(&g), expected_relations(false));
    assert_eq!(stats.entities, 4);
    assert_eq!(stats.relations, 3);
    assert_eq!(stats.llm_requests, 4);
    assert_eq!(stats.llm_cached, 0);
    assert_eq!(stats.llm_retries, 1, "the 500 was retried once");
    assert_eq!(stats.llm_failures, 1, "the London reply is not JSON");
    let hits = server.hits();
    assert_eq!(hits["Charles Babbage"], 2);
    assert_eq!(hits["Ada Lovelace"], 1);
    assert_eq!(server.total_hits(), 5);
    assert_eq!(
        server.max_in_flight(),
        2,
        "two requests overlap, never more"
    );
    let cache = std::fs::read_to_string(llm_cache_path(&out)).unwrap();
    assert_eq!(cache.lines().count(), 4, "one line per completed request");
    for line in cache.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["key"].as_str().unwrap().len(), 32);
        assert!(v["reply"].is_string());
    }

    // The same build again: everything from the cache, nothing sent, same bytes.
    let first = std::fs::read(&out).unwrap();
    server.reset_hits();
    let again = build_kg_from_path(&corpus, &out, GraphKind::Tkg, &o).unwrap();
    assert_eq!(server.total_hits(), 0);
    assert_eq!((again.llm_requests, again.llm_cached), (0, 4));
    assert_eq!(
        again.llm_failures, 1,
        "the cached unparseable reply still counts"
    );
    assert_eq!(std::fs::read(&out).unwrap(), first);
}

#[test]
fn kg_and_rkg_share_the_cache_and_differ_only_in_descriptions_and_keywords() {
    let server = serve(Plan::default());
    let dir = tempfile::tempdir().unwrap();
    let mut l = llm(&server, 4);
    l.cache = Some(dir.path().join("shared.jsonl"));
    let (rkg, stats) = build_kg(&corpus(), GraphKind::Rkg, &opts(l.clone())).unwrap();
    assert_eq!(entities(&rkg), expected_entities());
    assert_eq!(relations(&rkg), expected_relations(true));
    assert_eq!(stats.llm_requests, 4);
    assert!(server.max_in_flight() <= 4);

    let (kg, stats) = build_kg(&corpus(), GraphKind::Kg, &opts(l)).unwrap();
    assert_eq!(
        server.total_hits(),
        4,
        "the KG build is served by the cache"
    );
    assert_eq!((stats.llm_requests, stats.llm_cached), (0, 4));
    assert!(kg.sentences().is_empty());
    let names: Vec<&str> = kg.entities().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Ada Lovelace",
            "Analytical Engine",
            "Charles Babbage",
            "London"
        ]
    );
    let triples: Vec<(u32, u32, &str)> = kg
        .relations()
        .iter()
        .map(|r| (r.head, r.tail, r.text.as_str()))
        .collect();
    assert_eq!(
        triples,
        [
            (0, 2, "worked with"),
            (0, 3, "was born in"),
            (2, 1, "designed")
        ]
    );
    assert!(kg.relations().iter().all(|r| r.keywords.is_empty()));

    // Caps: one description entry per entity.
    let capped = KgOptions {
        description_sentences: 1,
        keywords: 1,
        ..opts(llm(&server, 1))
    };
    let (g, _) = build_kg(&corpus(), GraphKind::Rkg, &capped).unwrap();
    assert_eq!(g.entity_description(1), "A machine Babbage designed.");
    assert_eq!(g.relations()[0].keywords, ["collaboration"]);
}

#[test]
fn a_400_stops_the_build_and_the_rerun_sends_only_the_missing_requests() {
    let server = serve(Plan {
        fail_always: HashMap::from([(s("Analytical Engine"), 400)]),
        ..Plan::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &corpus());
    let out = dir.path().join("g.rkg");
    let o = opts(llm(&server, 1));
    let err = build_kg_from_path(&corpus, &out, GraphKind::Rkg, &o).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            GraphError::Llm(LlmError::Status {
                status: 400,
                attempts: 1,
                ..
            })
        ),
        "{msg}"
    );
    assert!(msg.contains(&server.url), "{msg}");
    assert!(msg.contains("refused Analytical Engine"), "{msg}");
    assert!(!out.exists());
    let hits = server.hits();
    assert_eq!(hits["Analytical Engine"], 1, "a 400 is not retried");
    assert!(
        !hits.contains_key("London"),
        "nothing is sent after the failure"
    );
    assert_eq!(server.total_hits(), 3);

    server.set_plan(Plan::default());
    server.reset_hits();
    let stats = build_kg_from_path(&corpus, &out, GraphKind::Rkg, &o).unwrap();
    assert_eq!(
        server.hits(),
        HashMap::from([(s("Analytical Engine"), 1), (s("London"), 1)])
    );
    assert_eq!((stats.llm_requests, stats.llm_cached), (2, 2));

    // Same bytes as a build that was never interrupted.
    let clean = dir.path().join("clean.rkg");
    build_kg_from_path(&corpus, &clean, GraphKind::Rkg, &o).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&clean).unwrap());
}

#[test]
fn a_torn_cache_line_is_dropped_and_only_its_request_is_resent() {
    let server = serve(Plan::default());
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &corpus());
    let out = dir.path().join("g.tkg");
    let o = opts(llm(&server, 1));
    build_kg_from_path(&corpus, &out, GraphKind::Tkg, &o).unwrap();
    let first = std::fs::read(&out).unwrap();
    let cache = llm_cache_path(&out);
    let text = std::fs::read_to_string(&cache).unwrap();
    // Concurrency 1: lines in passage order, so the last one is London's.
    let torn = &text[..text.len() - 20];
    std::fs::write(&cache, torn).unwrap();

    server.reset_hits();
    let stats = build_kg_from_path(&corpus, &out, GraphKind::Tkg, &o).unwrap();
    assert_eq!(server.hits(), HashMap::from([(s("London"), 1)]));
    assert_eq!((stats.llm_requests, stats.llm_cached), (1, 3));
    assert_eq!(std::fs::read(&out).unwrap(), first);
    let repaired = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(repaired.lines().count(), 4);
    assert!(repaired
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_ok()));

    // A malformed line that is not the last is an error naming the file and line.
    let mut lines: Vec<&str> = repaired.lines().collect();
    lines[1] = "{\"key\": 1}";
    std::fs::write(&cache, lines.join("\n") + "\n").unwrap();
    let err = build_kg_from_path(&corpus, &out, GraphKind::Tkg, &o).unwrap_err();
    assert!(
        matches!(err, GraphError::Llm(LlmError::CacheCorrupt { line: 2, .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("g.tkg.llm-cache.jsonl line 2"),
        "{err}"
    );
}

#[test]
fn status_429_is_retried_then_reported_and_a_dead_server_is_a_transport_error() {
    let server = serve(Plan {
        fail_always: HashMap::from([(s("Ada Lovelace"), 429)]),
        ..Plan::default()
    });
    let client = LlmClient::new(&llm(&server, 1)).unwrap();
    let err = client.extract_all(&corpus()[..1]).unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Status {
                status: 429,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.hits()["Ada Lovelace"], 3, "1 attempt + 2 retries");
    assert_eq!(client.stats().retries, 2);

    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = LlmOptions {
        url: format!("http://127.0.0.1:{port}/v1"),
        ..llm(&server, 1)
    };
    let client = LlmClient::new(&dead).unwrap();
    let err = client.summarize(&["a", "b"], 10).unwrap_err();
    assert!(
        matches!(err, LlmError::Transport { attempts: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port}/v1/chat/completions")),
        "{err}"
    );
}

#[test]
fn summaries_come_back_in_group_order_and_an_unusable_one_is_a_slot_error() {
    let server = serve(Plan::default());
    let client = LlmClient::new(&llm(&server, 3)).unwrap();
    // The fake answers a summary prompt (no `Title:` line) with its fallback sentence.
    let out = client
        .summarize_all(&[vec!["one", "two"], vec!["EMPTY"], vec!["three"]], 4)
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_deref().unwrap(), "I am sorry, I");
    assert!(out[1].is_err());
    assert_eq!(out[2].as_deref().unwrap(), "I am sorry, I");
    assert_eq!(client.stats().failures, 1);
    assert_eq!(
        client.summarize(&["one", "two"], 4).unwrap(),
        "I am sorry, I"
    );
    assert!(matches!(
        client.summarize(&["EMPTY"], 4),
        Err(LlmError::Reply(_))
    ));
    assert_eq!(client.stats().failures, 2);
    assert_eq!(
        server.total_hits(),
        5,
        "no cache configured: every call is sent"
    );
}

/// The tree with an LLM: each cluster's summary is the model's reply; a cluster whose reply is
/// unusable keeps its extractive summary; a rebuild answers everything from the cache.
#[test]
fn tree_summaries_come_from_the_llm_and_fall_back_to_extractive() {
    let server = serve(Plan::default());
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &common::cats_and_rockets());
    let out = dir.path().join("tree");
    let opts = TreeOptions {
        embedder: EmbedderKind::Tfidf,
        cluster_size: 3,
        dims: 1024,
        summary_sentences: 1,
        progress: false,
        overwrite: true,
        llm: Some(llm(&server, 2)),
        ..TreeOptions::default()
    };
    let stats = build_tree_from_path(&corpus, &out, &opts).unwrap();
    assert_eq!(
        (stats.llm_requests, stats.llm_cached, stats.llm_failures),
        (2, 0, 1)
    );
    let tree = TreeIndex::read(&out).unwrap();
    assert_eq!(tree.nodes_per_level(), vec![6, 2]);
    let mut summaries: Vec<&str> = (6..8).map(|n| tree.summary(n).unwrap()).collect();
    summaries.sort_unstable();
    assert_eq!(
        summaries,
        // The rockets reply was blank, so that cluster keeps its extractive summary: the one
        // sentence nearest its TF-IDF centroid (three of its words are in every rocket passage).
        [
            "Cats purr, said the model.",
            "Rockets reach orbit after launch."
        ],
        "the cats cluster from the model, the rockets cluster extractive"
    );
    let bytes = std::fs::read(&out).unwrap();
    server.reset_hits();
    let again = build_tree_from_path(&corpus, &out, &opts).unwrap();
    assert_eq!(server.total_hits(), 0);
    assert_eq!((again.llm_requests, again.llm_cached), (0, 2));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(llm_cache_path(&out).is_file());
}
