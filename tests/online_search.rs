//! The online backend against a loopback web: a fake SearXNG and DuckDuckGo serving HTML
//! fixtures, plus pages that hang, fail, redirect forever or never end. Nothing touches the
//! live web.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sleuth::search::{Engine, OnlineConfig, OnlineRetriever, Retriever, SearchError};

const ARTICLE_A: &str = r#"<!doctype html><html><head><title>Arrowhead Stadium - Wiki</title>
<style>.x { color: red } secretstyleword</style><script>var secretscriptword = 1;</script></head>
<body><nav>Main page | Random | secretnavword</nav>
<article><h1>Arrowhead Stadium</h1>
<p>Arrowhead Stadium is an American football stadium in Kansas City, Missouri. It is the home
of the Kansas City Chiefs of the National Football League.</p>
<p>The stadium opened in 1972 and seats 76,416 people.</p></article>
<footer>Privacy policy secretfooterword</footer></body></html>"#;

const ARTICLE_B: &str = r#"<html><head><title>Kauffman Stadium</title></head><body>
<div><p>Kauffman Stadium is a baseball park in Kansas City, home of the Kansas City Royals.</p></div>
</body></html>"#;

fn base(addr: &std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// Streams `total` bytes of filler paragraphs, slowly enough to notice if the cap failed.
fn endless(total: usize) -> Body {
    let chunk = Bytes::from("<p>filler words endless page</p>".repeat(2048));
    let n = total / chunk.len() + 1;
    let stream =
        futures_util::stream::iter((0..n).map(move |_| Ok::<_, Infallible>(chunk.clone())));
    Body::from_stream(stream)
}

/// The fake SearXNG's failure modes, chosen by the query.
async fn failing_engine(query: &str) -> Response {
    match query {
        "engine 500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "engine hangs" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late".into_response()
        }
        _ => (
            [(header::CONTENT_TYPE, "application/json")],
            "<html>not json",
        )
            .into_response(),
    }
}

/// Builds the loopback web; the SearXNG handler needs its own address for result URLs, so the
/// result list is produced by a closure capturing it.
async fn start_web() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let me = base(&addr);
    let me2 = me.clone();
    let app = Router::new()
        .route(
            "/search",
            get(move |q: Query<std::collections::HashMap<String, String>>| {
                let me = me.clone();
                async move {
                    let query = q.get("q").cloned().unwrap_or_default();
                    if ["engine 500", "engine hangs", "engine garbage"].contains(&query.as_str()) {
                        return failing_engine(&query).await;
                    }
                    assert_eq!(q.get("format").map(String::as_str), Some("json"));
                    let body = serde_json::json!({"results": [
                        {"url": format!("{me}/hang"), "title": "Hanging page", "content": ""},
                        {"url": format!("{me}/a"), "title": "Arrowhead Stadium", "content": "Arrowhead Stadium snippet about the Chiefs"},
                        {"url": "ftp://127.0.0.1/file", "title": "FTP", "content": ""},
                        {"url": format!("{me}/big"), "title": "Big page", "content": ""},
                        {"url": format!("{me}/500"), "title": "Broken", "content": ""},
                        {"url": format!("{me}/loop"), "title": "Loop", "content": ""},
                        {"url": format!("{me}/b"), "title": "Kauffman", "content": ""},
                        {"url": format!("{me}/binary"), "title": "Binary", "content": ""},
                    ]});
                    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
                }
            }),
        )
        .route(
            "/html/",
            get(move |q: Query<std::collections::HashMap<String, String>>| {
                let me = me2.clone();
                async move {
                    let query = q.get("q").cloned().unwrap_or_default();
                    let target = urlencode(&format!("{me}/a"));
                    Html(format!(
                        r#"<html><body><div class="result"><a class="result__a" href="/l/?uddg={target}&rut=x">Arrowhead Stadium</a>
                        <a class="result__snippet">Result for {query}</a></div>
                        <div class="result"><a class="result__a" href="{me}/b">Kauffman Stadium</a></div></body></html>"#
                    ))
                }
            }),
        )
        .route("/a", get(|| async { Html(ARTICLE_A) }))
        .route("/b", get(|| async { Html(ARTICLE_B) }))
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Html("too late")
            }),
        )
        .route("/500", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/binary",
            get(|| async { ([(header::CONTENT_TYPE, "application/octet-stream")], vec![0u8, 159, 146, 150]) }),
        )
        .route(
            "/big",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], endless(50 << 20)) }),
        );
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base(&addr), handle)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cfg(base_url: &str, engine: Engine) -> OnlineConfig {
    OnlineConfig {
        engine,
        base_url: base_url.into(),
        fetch_pages: 8,
        connect_timeout_ms: 500,
        timeout_ms: 1500,
        max_bytes: 256 * 1024,
        max_redirects: 3,
        passage_words: 40,
        ..OnlineConfig::default()
    }
}

/// Runs blocking retriever calls off the test's async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searxng_pages_are_fetched_cleaned_ranked_and_bounded() {
    let (url, _web) = start_web().await;
    let r = OnlineRetriever::new(cfg(&url, Engine::Searxng)).unwrap();
    let (hits, elapsed) = blocking(move || {
        let t = Instant::now();
        let hits = r
            .search("Which stadium do the Kansas City Chiefs play in?", 5)
            .unwrap();
        (hits, t.elapsed())
    })
    .await;
    // The hanging page costs one timeout (pages are fetched concurrently), not a stuck rollout.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(!hits.is_empty() && hits.len() <= 5);
    assert_eq!(hits[0].title, "Arrowhead Stadium - Wiki", "{hits:#?}");
    assert!(
        hits[0].text.contains("home of the Kansas City Chiefs"),
        "{}",
        hits[0].text
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let all: String = hits.iter().map(|h| h.render()).collect();
    for secret in [
        "secretscriptword",
        "secretstyleword",
        "secretnavword",
        "secretfooterword",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into {all}");
    }
    assert!(hits.iter().any(|h| h.title == "Kauffman Stadium"));
    assert!(!all.contains("too late") && !all.contains("boom"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_page_is_cut_at_the_byte_cap() {
    let (url, _web) = start_web().await;
    let r = OnlineRetriever::new(cfg(&url, Engine::Searxng)).unwrap();
    let hits = blocking(move || r.search("filler endless page", 50).unwrap()).await;
    let big: Vec<_> = hits.iter().filter(|h| h.id.contains("/big#")).collect();
    assert!(!big.is_empty(), "the big page still yields passages");
    let words: usize = big.iter().map(|h| h.text.split_whitespace().count()).sum();
    // 256 KiB of "<p>filler words endless page</p>" is about 8,000 paragraphs of 4 words.
    assert!(words < 40_000, "read far past the cap: {words} words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckduckgo_html_results_and_redirector() {
    let (url, _web) = start_web().await;
    let r = OnlineRetriever::new(cfg(&url, Engine::Duckduckgo)).unwrap();
    let hits = blocking(move || r.search("Kansas City Chiefs stadium", 3).unwrap()).await;
    // The snippet (it echoes the query) and the article behind DDG's redirector both count.
    let snippet = hits
        .iter()
        .find(|h| h.text == "Result for Kansas City Chiefs stadium");
    assert!(
        snippet.is_some_and(|h| h.id.starts_with(&format!("{url}/a#"))),
        "{hits:#?}"
    );
    let article = hits.iter().find(|h| h.title == "Arrowhead Stadium - Wiki");
    assert!(
        article.is_some_and(|h| h.id.starts_with(&format!("{url}/a#"))),
        "{hits:#?}"
    );
    assert!(
        hits.iter().any(|h| h.title == "Kauffman Stadium"),
        "{hits:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_engines_are_errors_naming_the_engine() {
    let (url, _web) = start_web().await;
    let r = std::sync::Arc::new(OnlineRetriever::new(cfg(&url, Engine::Searxng)).unwrap());
    for (query, want) in [
        ("engine 500", "500"),
        ("engine hangs", "timed out"),
        ("engine garbage", "not a SearXNG JSON result page"),
    ] {
        let r = r.clone();
        let (res, elapsed) = blocking(move || {
            let t = Instant::now();
            (r.search(query, 3), t.elapsed())
        })
        .await;
        let err = res.unwrap_err();
        assert!(
            matches!(
                err,
                SearchError::Online {
                    engine: "searxng",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(want), "{query}: {msg}");
        assert!(elapsed < Duration::from_secs(4), "{query} took {elapsed:?}");
    }
    // An unreachable engine (nothing listens on port 9 of loopback here) fails fast too.
    let dead = OnlineRetriever::new(cfg("http://127.0.0.1:9", Engine::Searxng)).unwrap();
    let err = blocking(move || dead.search("anything", 3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_never_panic() {
    let (url, _web) = start_web().await;
    let r = std::sync::Arc::new(OnlineRetriever::new(cfg(&url, Engine::Searxng)).unwrap());
    let garbage: String = (0u32..3000).filter_map(char::from_u32).collect();
    let cases = vec![
        (String::new(), Some(true)),
        ("  ?!  ".to_string(), Some(true)),
        ("Kansas ".repeat(1500), Some(false)),
        (
            "title:Kansas AND (\"Chiefs OR +x -y *z ~2 ^3 [a TO".to_string(),
            Some(false),
        ),
        (garbage, None),
        ("\u{0}\u{1}Chiefs\u{fffd}".to_string(), Some(false)),
    ];
    for (q, empty) in cases {
        let r = r.clone();
        let shown = q.chars().take(30).collect::<String>();
        let hits = blocking(move || r.search(&q, 3)).await.unwrap();
        assert!(hits.len() <= 3);
        if let Some(empty) = empty {
            assert_eq!(hits.is_empty(), empty, "{shown:?}: {hits:?}");
        }
    }
    assert!(r.search("Kansas", 0).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_replays_offline() {
    let (url, web) = start_web().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&url, Engine::Searxng);
    c.cache_dir = Some(dir.path().to_path_buf());
    let r = OnlineRetriever::new(c.clone()).unwrap();
    let first = blocking(move || r.search("Kansas City Chiefs stadium", 4).unwrap()).await;
    assert!(!first.is_empty());
    web.abort();
    // The web is gone; an offline retriever answers from the cache, identically.
    c.offline = true;
    let r = OnlineRetriever::new(c).unwrap();
    let (again, miss) = blocking(move || {
        (
            r.search("Kansas City Chiefs stadium", 4).unwrap(),
            r.search("a query never made", 4).unwrap_err(),
        )
    })
    .await;
    assert_eq!(first, again);
    assert!(miss.to_string().contains("not in the cache"), "{miss}");
}

#[test]
fn bad_settings_are_rejected_naming_the_field() {
    let err = OnlineRetriever::new(OnlineConfig {
        base_url: "file:///etc".into(),
        ..OnlineConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            SearchError::InvalidOption {
                name: "base_url",
                ..
            }
        ),
        "{err:?}"
    );
    let err = OnlineRetriever::new(OnlineConfig {
        max_bytes: 0,
        ..OnlineConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("max_bytes"), "{err}");
}

#[test]
fn config_reads_from_toml_section() {
    let cfg: sleuth::config::RunConfig = toml::from_str(
        "[search]\nbackend = \"online\"\n[search.online]\nengine = \"duckduckgo\"\nbase_url = \"http://127.0.0.1:1\"\nmax_bytes = 1000\n",
    )
    .unwrap();
    assert_eq!(cfg.search.backend, sleuth::config::SearchBackend::Online);
    assert_eq!(cfg.search.online.engine, Engine::Duckduckgo);
    assert_eq!(cfg.search.online.max_bytes, 1000);
    assert_eq!(
        cfg.search.online.timeout_ms,
        OnlineConfig::default().timeout_ms
    );
    let err =
        toml::from_str::<sleuth::config::RunConfig>("[search.online]\nmax_byte = 1\n").unwrap_err();
    assert!(err.to_string().contains("max_byte"), "{err}");
}

#[test]
fn search_section_opens_the_named_backend() {
    let section = sleuth::config::SearchSection {
        backend: sleuth::config::SearchBackend::Online,
        ..Default::default()
    };
    let r = section.open().unwrap();
    // A query without words never reaches the network.
    assert!(r.search("?!", 3).unwrap().is_empty());
    // A backend no retriever answers to is refused when the config is read.
    let err = toml::from_str::<sleuth::config::RunConfig>("[search]\nbackend = \"gopher\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gopher") && err.contains("online"), "{err}");
}
