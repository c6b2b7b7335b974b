//! `sleuth data fetch` ([`sleuth::data`]) against a file server on loopback, since the
//! machines here reach none of the published sites. The server serves byte ranges
//! (`Range: bytes=N-` → 206 with `Content-Range`), records every request's path and `Range`
//! header, and can cut the first response off after N bytes or ignore ranges (answer 200).
//!
//! Checked: an interrupted download keeps its `.part` and the next fetch resumes it with
//! `Range: bytes=N-`, ending with the right bytes and SHA-256; a wrong checksum is an error
//! naming the file, leaving neither the final file nor the part; a 404 is an error naming the
//! URL; a server ignoring `Range` makes the fetch start over cleanly; a file already there
//! and matching is not requested again (one that no longer matches is); and the binary reads
//! a `--manifest` of the same schema as `corpus/manifest.toml`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use sleuth::data::{
    part_path, DataError, FetchMode, FetchOptions, FetchStatus, Fetcher, ManifestEntry,
};

// ---------------------------------------------------------------------------------------------
// The fake file server

/// What the server does, changeable between fetches.
#[derive(Default, Clone)]
struct Plan {
    /// The next response is cut off after this many body bytes (then the plan clears it).
    cut_next_at: Option<usize>,
    /// Answer every request with 200 and the whole file, whatever its `Range`.
    ignore_range: bool,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Vec<u8>>,
    plan: Mutex<Plan>,
    /// (file name, `Range` header) of every request, in order.
    requests: Mutex<Vec<(String, Option<String>)>>,
}

struct FakeServer {
    url: String,
    state: Arc<ServerState>,
}

impl FakeServer {
    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.requests.lock().unwrap().clone()
    }
    fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }
    fn set_plan(&self, plan: Plan) {
        *self.state.plan.lock().unwrap() = plan;
    }
    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }
}

async fn serve_file(
    State(state): State<Arc<ServerState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .requests
        .lock()
        .unwrap()
        .push((name.clone(), range.clone()));
    let Some(file) = state.files.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (cut, ignore_range) = {
        let mut plan = state.plan.lock().unwrap();
        (plan.cut_next_at.take(), plan.ignore_range)
    };
    let len = file.len();
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) if !ignore_range => {
            let start: usize = spec.trim_end_matches('-').parse().unwrap();
            if start >= len {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap();
            }
            Some(start)
        }
        _ => None,
    };
    let from = start.unwrap_or(0);
    let mut resp = Response::builder().header(CONTENT_LENGTH, len - from);
    resp = match start {
        Some(s) => resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_RANGE, format!("bytes {s}-{}/{len}", len - 1)),
        None => resp.status(StatusCode::OK),
    };
    let body = match cut {
        // The first `n` bytes, a pause so they reach the client, then a broken stream: hyper
        // drops the connection short of its Content-Length.
        Some(n) => {
            let head = Bytes::copy_from_slice(&file[from..from + n]);
            let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(head)]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other("connection cut by the test"))
                }),
            );
            Body::from_stream(stream)
        }
        None => Body::from(file[from..].to_vec()),
    };
    resp.body(body).unwrap()
}

/// Starts the server on 127.0.0.1:0 in a thread of its own (the fetcher under test is
/// blocking and runs its own runtime), serving `files` at `/NAME`.
fn serve(files: &[(&str, &[u8])]) -> FakeServer {
    let state = Arc::new(ServerState {
        files: files
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect(),
        ..ServerState::default()
    });
    let app = Router::new()
        .route("/{name}", get(serve_file))
        .with_state(state.clone());
    FakeServer {
        url: common::serve_loopback(app),
        state,
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// 100 kB of bytes that differ from position to position.
fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entry(url: String, dest: &str, sha256: Option<String>) -> ManifestEntry {
    ManifestEntry {
        name: "blob".into(),
        url,
        dest: dest.into(),
        license: "CC0".into(),
        description: "test payload".into(),
        sha256,
        size: None,
        fetch: FetchMode::Default,
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(&FetchOptions {
        progress: false,
        ..FetchOptions::default()
    })
    .unwrap()
}

fn ranges(server: &FakeServer) -> Vec<Option<String>> {
    server.requests().into_iter().map(|(_, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let data = payload();
    let server = serve(&[("blob.bin", &data)]);
    let out = tempfile::tempdir().unwrap();
    let e = entry(
        server.url("blob.bin"),
        "sub/blob.bin",
        Some(sha256_hex(&data)),
    );
    let dest = out.path().join("sub/blob.bin");
    let part = part_path(&dest);

    server.set_plan(Plan {
        cut_next_at: Some(40_000),
        ..Plan::default()
    });
    let err = fetcher().fetch(&e, out.path()).unwrap_err();
    assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
    assert!(err.to_string().contains(&e.url), "{err}");
    assert!(!dest.exists());
    let kept = std::fs::read(&part).unwrap();
    assert!(
        !kept.is_empty() && kept.len() < data.len(),
        "{}",
        kept.len()
    );
    assert_eq!(kept[..], data[..kept.len()]);

    let report = fetcher().fetch(&e, out.path()).unwrap();
    assert_eq!(report.status, FetchStatus::Resumed);
    assert_eq!(report.downloaded, (data.len() - kept.len()) as u64);
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(report.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(
        ranges(&server),
        [None, Some(format!("bytes={}-", kept.len()))]
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!part.exists());
}

#[test]
fn a_wrong_checksum_names_the_file_and_leaves_nothing() {
    let data = payload();
    let server = serve(&[("blob.bin", &data)]);
    let out = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let e = entry(server.url("blob.bin"), "blob.bin", Some(wrong.clone()));
    let err = fetcher().fetch(&e, out.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Checksum { .. }), "{msg}");
    let dest = out.path().join("blob.bin");
    assert!(msg.contains(&dest.display().to_string()), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&sha256_hex(&data)),
        "{msg}"
    );
    assert!(!dest.exists());
    assert!(!part_path(&dest).exists());
}

#[test]
fn a_404_names_the_url() {
    let server = serve(&[]);
    let out = tempfile::tempdir().unwrap();
    let e = entry(server.url("missing.bin"), "missing.bin", None);
    let err = fetcher().fetch(&e, out.path()).unwrap_err();
    assert!(matches!(err, DataError::Http { status: 404, .. }), "{err}");
    assert!(err.to_string().contains(&e.url), "{err}");
    assert!(!out.path().join("missing.bin").exists());
    assert!(!part_path(&out.path().join("missing.bin")).exists());
}

#[test]
fn a_server_ignoring_range_restarts_from_zero() {
    let data = payload();
    let server = serve(&[("blob.bin", &data)]);
    server.set_plan(Plan {
        ignore_range: true,
        ..Plan::default()
    });
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("blob.bin");
    // A stale part whose bytes are not the file's start: it must be discarded, not extended.
    std::fs::write(part_path(&dest), vec![b'x'; 30_000]).unwrap();
    let e = entry(server.url("blob.bin"), "blob.bin", Some(sha256_hex(&data)));
    let report = fetcher().fetch(&e, out.path()).unwrap();
    assert_eq!(report.status, FetchStatus::Downloaded);
    assert_eq!(report.downloaded, data.len() as u64);
    assert_eq!(ranges(&server), [Some("bytes=30000-".to_string())]);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!part_path(&dest).exists());
}

#[test]
fn an_up_to_date_file_is_not_downloaded_again() {
    let data = payload();
    let server = serve(&[("blob.bin", &data)]);
    let out = tempfile::tempdir().unwrap();
    let e = entry(server.url("blob.bin"), "blob.bin", Some(sha256_hex(&data)));
    let first = fetcher().fetch(&e, out.path()).unwrap();
    assert_eq!(first.status, FetchStatus::Downloaded);
    server.clear_requests();

    let again = fetcher().fetch(&e, out.path()).unwrap();
    assert_eq!(again.status, FetchStatus::UpToDate);
    assert_eq!(again.downloaded, 0);
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // A file that no longer matches its checksum is fetched again and replaced.
    let dest = out.path().join("blob.bin");
    std::fs::write(&dest, b"tampered").unwrap();
    let fixed = fetcher().fetch(&e, out.path()).unwrap();
    assert_eq!(fixed.status, FetchStatus::Downloaded);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn the_binary_fetches_from_a_manifest_and_skips_on_rerun() {
    let data = payload();
    let server = serve(&[("a.jsonl", b"{\"q\": 1}\n"), ("blob.bin", &data)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[[file]]
name = "a"
url = "{a}"
dest = "qa/a.jsonl"
license = "MIT"
description = "a tiny QA set"
sha256 = "{a_sha}"
size = 9

[[file]]
name = "big"
url = "{big}"
dest = "raw/blob.bin"
license = "CC0"
description = "fetched only on request"
fetch = "on-request"

[[file]]
name = "held_out"
url = "{big}"
dest = "raw/held_out.bin"
license = "CC BY 4.0"
description = "never fetched"
fetch = "manual"
"#,
            a = server.url("a.jsonl"),
            a_sha = sha256_hex(b"{\"q\": 1}\n"),
            big = server.url("blob.bin"),
        ),
    )
    .unwrap();
    let out = dir.path().join("data");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sleuth"))
            .args(["data", "fetch", "--manifest"])
            .arg(&manifest)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let status = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["status"].to_string())
            .collect()
    };

    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(status(&stdout), ["\"downloaded\""]);
    assert!(out.join("qa/a.jsonl").exists() && !out.join("raw").exists());

    let (ok, stdout, stderr) = run(&["--only", "a,big"]);
    assert!(ok, "{stderr}");
    assert_eq!(status(&stdout), ["\"up-to-date\"", "\"downloaded\""]);
    assert_eq!(std::fs::read(out.join("raw/blob.bin")).unwrap(), data);

    let (ok, _, stderr) = run(&["--only", "held_out"]);
    assert!(!ok && stderr.contains("by hand"), "{stderr}");
    let (ok, _, stderr) = run(&["--only", "nope"]);
    assert!(!ok && stderr.contains("`nope`"), "{stderr}");
    assert!(!out.join("raw/held_out.bin").exists());
}

/// The shipped manifest parses and lists its entries without touching the network.
#[test]
fn the_builtin_manifest_lists() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sleuth"))
        .args(["data", "fetch", "--list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].to_string())
        .collect();
    for want in ["\"hotpotqa_500\"", "\"dpr_wiki\"", "\"musique_dev\""] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
}
