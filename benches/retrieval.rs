//! Retrieval benchmark (DESIGN §8): BM25 index build passages/s and queries/s (one thread and
//! all cores) against the `bm25s` Python peer in the same run, then the retrieval server's
//! p50/p99 latency under 32 concurrent clients.
//!
//! `cargo bench --bench retrieval` (or `scripts/bench-retrieval`). Inputs default to
//! `../shared/data`; override with `SLEUTH_BENCH_CORPUS` and `SLEUTH_BENCH_QA` (comma-separated).
//! The peer runs `scripts/reference/bm25s_bench.py` with `SLEUTH_PYTHON` (default
//! `.venv-ref/bin/python`, then `python3`); without bm25s installed the ratios are skipped.
//! Prints JSON lines: `sleuth`, `bm25s`, `ratio`, `server`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sleuth::index::{build_bm25_from_path, IndexOptions};
use sleuth::qa::read_qa;
use sleuth::search::server::{router, serve, ServerConfig};
use sleuth::search::{Bm25Retriever, Retriever};

const K: usize = 10;
const CLIENTS: usize = 32;
const SERVER_REQUESTS: usize = 4000;
/// Passes over the query set per measurement; the best is reported (both systems).
const REPS: usize = 3;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/data");
    let corpus = std::env::var("SLEUTH_BENCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| shared.join("corpus/wiki_paragraphs.jsonl.gz"));
    let qa: Vec<PathBuf> = std::env::var("SLEUTH_BENCH_QA")
        .map(|s| s.split(',').map(PathBuf::from).collect())
        .unwrap_or_else(|_| {
            vec![
                shared.join("qa/hotpotqa_500.jsonl"),
                shared.join("qa/2wiki_500.jsonl"),
            ]
        });
    if !corpus.is_file() {
        eprintln!("no corpus at {}; set SLEUTH_BENCH_CORPUS", corpus.display());
        return;
    }
    let questions: Vec<String> = qa
        .iter()
        .flat_map(|p| read_qa(p).unwrap_or_else(|e| panic!("{e}")))
        .map(|e| e.question)
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Index build (the corpus is gzip JSONL read while indexing, as `sleuth index build` does).
    let dir = tempfile::tempdir().expect("temp dir");
    let index = dir.path().join("index");
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    let t = Instant::now();
    let stats = build_bm25_from_path(&corpus, &index, &opts).expect("index build");
    let build_s = t.elapsed().as_secs_f64();
    let passages = stats.passages as f64;

    let retriever = Arc::new(Bm25Retriever::open(&index).expect("open index"));
    // Warm-up, then one thread, then all cores; each the best of REPS passes, since this
    // machine is shared and one pass over 1,000 queries takes about a second.
    for q in &questions {
        retriever.search(q, K).expect("search");
    }
    let best = |f: &dyn Fn()| {
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                f();
                questions.len() as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    };
    let qps1 = best(&|| {
        for q in &questions {
            retriever.search(q, K).expect("search");
        }
    });
    let chunk = questions.len().div_ceil(cores);
    let qpsn = best(&|| {
        std::thread::scope(|s| {
            for part in questions.chunks(chunk) {
                let r = &retriever;
                s.spawn(move || {
                    for q in part {
                        r.search(q, K).expect("search");
                    }
                });
            }
        })
    });
    let ours = json!({
        "system": "sleuth", "passages": stats.passages, "queries": questions.len(),
        "build_s": (build_s * 1000.0).round() / 1000.0,
        "build_passages_per_s": round1(passages / build_s),
        "qps_1_thread": round1(qps1), "qps_all_cores": round1(qpsn), "cores": cores,
    });
    println!("{ours}");

    match run_peer(&root, &corpus, &qa) {
        Ok(peer) => {
            println!("{peer}");
            let ratio = |key: &str| {
                let (a, b) = (ours[key].as_f64(), peer[key].as_f64());
                match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
                    _ => Value::Null,
                }
            };
            println!(
                "{}",
                json!({
                    "ratio": "sleuth / bm25s (higher is better for sleuth)",
                    "build_passages_per_s": ratio("build_passages_per_s"),
                    "qps_1_thread": ratio("qps_1_thread"),
                    "qps_all_cores": ratio("qps_all_cores"),
                })
            );
        }
        Err(e) => eprintln!("bm25s peer skipped: {e}"),
    }

    println!("{}", server_latency(retriever, &questions));
}

/// Runs the bm25s peer script and parses its JSON line.
fn run_peer(
    root: &std::path::Path,
    corpus: &std::path::Path,
    qa: &[PathBuf],
) -> Result<Value, String> {
    let python = std::env::var("SLEUTH_PYTHON").unwrap_or_else(|_| {
        let venv = root.join(".venv-ref/bin/python");
        if venv.is_file() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/reference/bm25s_bench.py"))
        .arg(corpus)
        .args(qa)
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().ok_or("peer printed nothing")?;
    serde_json::from_str(line).map_err(|e| format!("peer output {line:?}: {e}"))
}

/// p50/p99 latency of single-query `POST /queries` requests from [`CLIENTS`] concurrent clients.
fn server_latency(retriever: Arc<Bm25Retriever>, questions: &[String]) -> Value {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/queries", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router(retriever, ServerConfig::default()),
            ServerConfig::default().conn,
            async {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .build()
            .expect("client");
        let questions = Arc::new(questions.to_vec());
        let t = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let client = client.clone();
                let url = url.clone();
                let questions = Arc::clone(&questions);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in (c..SERVER_REQUESTS).step_by(CLIENTS) {
                        let q = &questions[i % questions.len()];
                        let t = Instant::now();
                        let resp = client
                            .post(&url)
                            .json(&json!({"queries": [q], "k": 5}))
                            .send()
                            .await
                            .expect("request");
                        assert!(resp.status().is_success());
                        let _ = resp.bytes().await.expect("body");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("client task"));
        }
        let wall = t.elapsed().as_secs_f64();
        let _ = stop.send(());
        let _ = server.await;
        lat.sort();
        let pct = |p: f64| {
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            (lat[i].as_secs_f64() * 1e5).round() / 100.0
        };
        json!({
            "server": "POST /queries, 1 query, k=5", "clients": CLIENTS, "requests": lat.len(),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "requests_per_s": round1(lat.len() as f64 / wall),
        })
    })
}
