//! The retrieval server over loopback: R1-Searcher's and Search-R1's request and response
//! shapes, parallel batches, and a JSON 4xx for every malformed request.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use sleuth::corpus::Passage;
use sleuth::index::{build_bm25, IndexOptions};
use sleuth::search::server::{router, serve, ServerConfig};
use sleuth::search::{Bm25Retriever, Hit, Retriever, SearchError};

fn p(id: &str, title: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

fn build(dir: &Path) {
    let passages = vec![
        p("arrowhead", "Arrowhead Stadium", "Arrowhead Stadium is a football stadium in Kansas City, Missouri, home of the Kansas City Chiefs."),
        p("kauffman", "Kauffman Stadium", "Kauffman Stadium is a baseball park in Kansas City, Missouri, home of the Kansas City Royals."),
        p("truman", "Harry S. Truman", "Harry S. Truman was the 33rd president of the United States."),
        p("paris", "Paris", "Paris is the capital and most populous city of France."),
        p("cpp", "C++", "C++ is a general-purpose programming language created by Bjarne Stroustrup."),
    ];
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    build_bm25(passages.into_iter().map(Ok), dir, &opts).unwrap();
}

/// Starts the server on 127.0.0.1:0 and returns its base URL plus a handle that stops it.
async fn start(
    retriever: Arc<dyn Retriever>,
    cfg: ServerConfig,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let limits = cfg.conn;
    tokio::spawn(serve(listener, router(retriever, cfg), limits, async {
        let _ = rx.await;
    }));
    (format!("http://{addr}"), tx)
}

async fn bm25_server(
    cfg: ServerConfig,
) -> (tempfile::TempDir, String, tokio::sync::oneshot::Sender<()>) {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    build(&idx);
    let retriever: Arc<dyn Retriever> = Arc::new(Bm25Retriever::open(&idx).unwrap());
    let (url, stop) = start(retriever, cfg).await;
    (dir, url, stop)
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_searcher_queries_shape() {
    let (_dir, url, _stop) = bm25_server(ServerConfig::default()).await;
    let body = json!({"queries": ["Kansas City Chiefs stadium", "capital of France", ""], "k": 2});
    let (status, v) = post(&format!("{url}/queries"), body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].as_array().unwrap().len(), 2);
    assert_eq!(
        answers[0][0].as_str().unwrap(),
        "\"Arrowhead Stadium\" Arrowhead Stadium is a football stadium in Kansas City, Missouri, home of the Kansas City Chiefs."
    );
    assert!(answers[1][0].as_str().unwrap().starts_with("\"Paris\" "));
    assert_eq!(answers[2], json!([]), "an empty query finds nothing");
    assert_eq!(v["queries"][1], "capital of France");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_r1_retrieve_shapes() {
    let (_dir, url, _stop) = bm25_server(ServerConfig::default()).await;
    let body = json!({"queries": ["Kansas City Chiefs stadium", "Bjarne Stroustrup"], "topk": 3, "return_scores": true});
    let (status, v) = post(&format!("{url}/retrieve"), body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let result = v["result"].as_array().unwrap();
    assert_eq!(result.len(), 2);
    let first = &result[0][0];
    assert_eq!(first["document"]["id"], "arrowhead");
    let contents = first["document"]["contents"].as_str().unwrap();
    // Search-R1's client takes the first line as the title, the rest as the text.
    let (title, text) = contents.split_once('\n').unwrap();
    assert_eq!(title, "\"Arrowhead Stadium\"");
    assert!(text.starts_with("Arrowhead Stadium is a football stadium"));
    let s0 = first["score"].as_f64().unwrap();
    let s1 = result[0][1]["score"].as_f64().unwrap();
    assert!(s0 > 0.0 && s0 >= s1);
    assert_eq!(result[1][0]["document"]["id"], "cpp");

    // Without return_scores the documents come bare; topk defaults to 3.
    let body = json!({"queries": ["Kansas City Missouri stadium"]});
    let (status, v) = post(&format!("{url}/retrieve"), body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let list = v["result"][0].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list[0]["contents"].is_string() && list[0].get("score").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_matches_single_queries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    build(&idx);
    let retriever = Arc::new(Bm25Retriever::open(&idx).unwrap());
    let (url, _stop) = start(retriever.clone(), ServerConfig::default()).await;
    let words = [
        "Kansas",
        "Paris",
        "Truman",
        "Stroustrup",
        "Royals",
        "stadium",
        "France",
    ];
    let queries: Vec<String> = (0..200)
        .map(|i| words[i % words.len()].to_string())
        .collect();
    let (status, v) = post(
        &format!("{url}/queries"),
        json!({"queries": queries, "k": 3}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    for (i, q) in queries.iter().enumerate() {
        let want: Vec<String> = retriever
            .search(q, 3)
            .unwrap()
            .iter()
            .map(Hit::render)
            .collect();
        assert_eq!(v["answers"][i], json!(want), "query {i} {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_4xx() {
    let cfg = ServerConfig {
        max_batch: 10,
        max_body_bytes: 64 * 1024,
        ..ServerConfig::default()
    };
    let (_dir, url, _stop) = bm25_server(cfg).await;
    let q = format!("{url}/queries");
    let r = format!("{url}/retrieve");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (&q, b"{not json".to_vec(), 400, "invalid request body"),
        (&q, b"".to_vec(), 400, "invalid request body"),
        (
            &q,
            vec![0xff, 0xfe, 0x00, 0x9c],
            400,
            "invalid request body",
        ),
        (
            &q,
            br#"{"queries": "one string"}"#.to_vec(),
            400,
            "invalid type",
        ),
        (&q, br#"{"queries": [1, 2]}"#.to_vec(), 400, "invalid type"),
        (&q, br#"{"k": 3}"#.to_vec(), 400, "missing field `queries`"),
        (
            &q,
            br#"{"queries": ["a"], "k": -1}"#.to_vec(),
            400,
            "invalid value",
        ),
        (
            &q,
            br#"{"queries": ["a"], "k": 1000}"#.to_vec(),
            400,
            "over the limit",
        ),
        (
            &r,
            br#"{"queries": ["a"], "topk": "3"}"#.to_vec(),
            400,
            "invalid type",
        ),
        (
            &r,
            br#"{"queries": ["a"], "return_scores": "yes"}"#.to_vec(),
            400,
            "invalid type",
        ),
        (&r, br#"[1, 2, 3]"#.to_vec(), 400, "invalid"),
        (
            &q,
            json!({"queries": vec!["a"; 11]}).to_string().into_bytes(),
            413,
            "at most 10",
        ),
        (
            &q,
            json!({"queries": ["x".repeat(100_000)]})
                .to_string()
                .into_bytes(),
            413,
            "over 65536 bytes",
        ),
    ];
    for (route, body, want_status, want_msg) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let (status, v) = post(route, body).await;
        assert_eq!(status, want_status, "{shown}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(want_msg), "{shown}: {msg}");
    }
    // Unknown route and wrong method: JSON too.
    let resp = reqwest::get(format!("{url}/nope")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let resp = reqwest::get(format!("{url}/queries")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    // Health still answers: nothing above took the server down.
    let health: Value = reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

/// A backend that fails on one query and panics on another.
struct Flaky;

impl Retriever for Flaky {
    fn search(&self, query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        match query {
            "fail" => Err(SearchError::InvalidOption {
                name: "flaky",
                reason: "backend down".into(),
            }),
            "panic" => panic!("backend bug"),
            _ => Ok(vec![Hit {
                id: "1".into(),
                title: "T".into(),
                text: query.into(),
                score: 1.0,
            }]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_are_500_and_the_server_survives() {
    let (url, _stop) = start(Arc::new(Flaky), ServerConfig::default()).await;
    let (status, v) = post(
        &format!("{url}/queries"),
        json!({"queries": ["ok", "fail"]}).to_string(),
    )
    .await;
    assert_eq!(status, 500);
    assert!(v["error"].as_str().unwrap().contains("backend down"), "{v}");
    let (status, v) = post(
        &format!("{url}/queries"),
        json!({"queries": ["panic"]}).to_string(),
    )
    .await;
    assert_eq!(status, 500);
    assert!(
        v["error"].as_str().unwrap().contains("search task failed"),
        "{v}"
    );
    let (status, v) = post(
        &format!("{url}/queries"),
        json!({"queries": ["fine"], "k": 1}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["answers"], json!([["\"T\" fine"]]));
}

/// A backend whose query "hold" blocks until the gate opens; it counts the holds begun.
#[derive(Default)]
struct Gated {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    holds: std::sync::atomic::AtomicUsize,
}

impl Gated {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Retriever for Gated {
    fn search(&self, query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        if query == "hold" {
            self.holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        Ok(vec![Hit {
            id: query.into(),
            title: "T".into(),
            text: query.into(),
            score: 1.0,
        }])
    }
}

/// The in-flight budget: a large request waits while another holds the large lane, and a small
/// request is answered meanwhile rather than queued behind it (tokio's semaphore is first come,
/// first served, so with one lane it waited for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_are_not_queued_behind_large_batches() {
    let gated = Arc::new(Gated::default());
    let cfg = ServerConfig {
        max_inflight_passages: 100,
        small_request_passages: 10,
        ..ServerConfig::default()
    };
    let (url, _stop) = start(gated.clone(), cfg).await;
    // Opens the gate however the test ends: the runtime waits for its blocking threads.
    struct OpenOnDrop(Arc<Gated>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }
    let _guard = OpenOnDrop(gated.clone());
    let q = format!("{url}/queries");
    let large = json!({"queries": ["hold"], "k": 100}).to_string();
    let first = tokio::spawn(post_owned(q.clone(), large.clone()));
    let holds = || gated.holds.load(std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    while holds() == 0 {
        assert!(
            started.elapsed().as_secs() < 10,
            "the first large request never searched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let second = tokio::spawn(post_owned(q.clone(), large));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        holds(),
        1,
        "the second large request searched beyond the budget"
    );
    let small = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        post(
            &q,
            json!({"queries": ["quick", "brown"], "k": 5}).to_string(),
        ),
    )
    .await
    .expect("a small request waited behind the large lane");
    assert_eq!(
        small,
        (
            200,
            json!({"queries": ["quick", "brown"], "answers": [["\"T\" quick"], ["\"T\" brown"]]})
        )
    );
    assert!(!first.is_finished() && !second.is_finished());
    gated.open();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    assert_eq!(holds(), 2);
}

async fn post_owned(url: String, body: String) -> (u16, Value) {
    post(&url, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_are_plain_text() {
    let (_dir, url, _stop) = bm25_server(ServerConfig::default()).await;
    let garbage: String = (0u32..2000).filter_map(char::from_u32).collect();
    let queries = vec![
        String::new(),
        "   \t\n ".into(),
        "Kansas ".repeat(2000),
        "title:Paris AND (\"unbalanced OR +x -y *z ~2 ^3 [a TO".into(),
        garbage,
        "\u{0}\u{1}\u{fffd}".into(),
    ];
    let (status, v) = post(
        &format!("{url}/retrieve"),
        json!({"queries": queries, "topk": 2}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let result = v["result"].as_array().unwrap();
    assert_eq!(result.len(), 6);
    assert_eq!(result[0], json!([]));
    assert_eq!(result[1], json!([]));
    assert_eq!(result[2][0]["id"], "arrowhead");
    assert_eq!(result[3][0]["id"], "paris");
}

/// `[search] backend = "http"`: the rollout's retriever is the server's client, and it returns
/// exactly what the index behind the server returns (ids, titles, texts, scores, order), one
/// request per batch; a dead server is an error naming its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_backend_returns_what_the_index_behind_the_server_returns() {
    use sleuth::search::{HttpRetriever, HttpSearchOptions};
    let (dir, url, _stop) = bm25_server(ServerConfig::default()).await;
    let local = Bm25Retriever::open(dir.path().join("idx")).unwrap();
    let remote = HttpRetriever::new(&HttpSearchOptions {
        url: url.clone(),
        ..HttpSearchOptions::default()
    })
    .unwrap();
    let queries = [
        "Kansas City stadium",
        "capital of France",
        "who created C++ programming language",
        "",
    ];
    let want = local.search_batch(&queries, 2).unwrap();
    let got = remote.search_batch(&queries, 2).unwrap();
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        let key = |h: &Hit| (h.id.clone(), h.title.clone(), h.text.clone());
        assert_eq!(
            w.iter().map(key).collect::<Vec<_>>(),
            g.iter().map(key).collect::<Vec<_>>()
        );
        for (a, b) in w.iter().zip(g) {
            assert!(
                (a.score - b.score).abs() < 1e-4,
                "{} vs {}",
                a.score,
                b.score
            );
        }
    }
    assert_eq!(got[0][0].title, "Arrowhead Stadium");
    assert!(got[3].is_empty());
    assert_eq!(remote.search("Paris France", 1).unwrap()[0].id, "paris");

    let dead = HttpRetriever::new(&HttpSearchOptions {
        url: "http://127.0.0.1:9".into(),
        retries: 1,
        retry_backoff_ms: 1,
        ..HttpSearchOptions::default()
    })
    .unwrap();
    let err = dead.search("Paris", 1).unwrap_err();
    assert!(matches!(err, SearchError::Remote { .. }), "{err}");
    assert!(
        err.to_string().contains("http://127.0.0.1:9/retrieve"),
        "{err}"
    );
}

/// A backend slower than the request deadline.
struct Slow;

impl Retriever for Slow {
    fn search(&self, _query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        std::thread::sleep(std::time::Duration::from_secs(2));
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_deadline_get_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = ServerConfig {
        request_timeout_s: 1,
        ..ServerConfig::default()
    };
    let (url, _stop) = start(Arc::new(Slow), cfg).await;
    // A search slower than the deadline.
    let (status, v) = post(
        &format!("{url}/queries"),
        json!({"queries": ["x"]}).to_string(),
    )
    .await;
    assert_eq!(status, 408, "{v}");
    assert!(v["error"].as_str().unwrap().contains("within 1 s"), "{v}");
    // A body that never finishes arriving (a slow client): the same JSON 408, not an empty one.
    let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /queries HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queries\"")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !answer.ends_with(b"}") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no answer to a stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert!(v["error"].as_str().unwrap().contains("within 1 s"), "{v}");
}
