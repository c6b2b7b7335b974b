//! Helpers shared by the integration tests: hand-written passages, a JSONL corpus file, a BM25
//! index over them, running the `sleuth` binary (graph-RAG tests), and the default model's
//! tokenizer for the tiny-model training tests (`learning`, `cold_start`, `curriculum`).
//! Each test binary compiles this module on its own, so not every helper is used by each.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sleuth::corpus::Passage;
use sleuth::index::{build_bm25, IndexOptions};

/// Seeds burn's backend random generator with `seed` and runs `draw` (a model's random
/// initialisation) under one lock. The generator is one per process and the tests of a file
/// run on parallel threads, so without the lock another test's draws interleave with this
/// one's and one seed gives different models: `tests/served_engine.rs` built its fake
/// engine's base and its trainer's base from one seed and saw a log-prob gap of 0.2 in about
/// one run in five.
pub fn seeded<T>(seed: u64, draw: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let device = sleuth::model::backend::device();
    <sleuth::model::backend::Train as burn::tensor::backend::Backend>::seed(&device, seed);
    draw()
}

/// The default model's tokenizer, or `None` (with a note on stderr) when `scripts/setup` has
/// not installed the model, so model-dependent tests skip.
pub fn default_tokenizer() -> Option<sleuth::model::Tokenizer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", path.display());
        return None;
    }
    let gguf = sleuth::model::gguf::GgufFile::open(&path).unwrap();
    Some(sleuth::model::Tokenizer::from_gguf(&gguf).unwrap())
}

/// A JSON fixture of `tests/fixtures/` (recorded by `scripts/reference/`).
pub fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A passage from its id, title and text.
pub fn p(id: &str, title: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

/// Writes `passages` as a JSONL corpus `dir/corpus.jsonl` and returns its path.
pub fn write_corpus(dir: &Path, passages: &[Passage]) -> PathBuf {
    let path = dir.join("corpus.jsonl");
    let lines: String = passages
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// Builds a BM25 index over `passages` at `dir/bm25` and returns its path.
pub fn bm25_index(dir: &Path, passages: &[Passage]) -> PathBuf {
    let out = dir.join("bm25");
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    build_bm25(passages.iter().cloned().map(Ok), &out, &opts).unwrap();
    out
}

/// A command running the `sleuth` binary under test.
pub fn sleuth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sleuth"))
}

/// Runs `cmd`, asserts it succeeded (showing its stderr if not) and returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Two topics with disjoint words: cats (t0–t2) and rockets (t3–t5). Each passage has one
/// sentence in its topic's shared words and one off-topic sentence of words found nowhere
/// else, so the topics are the clusters and the shared sentences are nearest their centroid.
pub fn cats_and_rockets() -> Vec<Passage> {
    vec![
        p(
            "t0",
            "Cats",
            "Cats purr softly. Grandma knits woollen sweaters.",
        ),
        p(
            "t1",
            "Kittens",
            "Kittens purr softly near cats. Pirates bury treasure.",
        ),
        p(
            "t2",
            "House cat",
            "House cats purr softly. Volcanoes erupt.",
        ),
        p(
            "t3",
            "Rockets",
            "Rockets reach orbit quickly. Bakers knead dough.",
        ),
        p(
            "t4",
            "Boosters",
            "Boosters lift rockets into orbit. Owls hoot.",
        ),
        p(
            "t5",
            "Launch",
            "Rockets reach orbit after launch. Tulips bloom.",
        ),
    ]
}

/// Serves `app` on 127.0.0.1 at a free port, on a tokio runtime in a thread of its own (the
/// clients under test are blocking and run their own runtimes), and returns `http://ADDR`.
/// The server lives until the test process ends.
pub fn serve_loopback(app: axum::Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel::<std::net::SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}
