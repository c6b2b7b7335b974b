//! all-MiniLM-L6-v2 in burn against transformers' `BertModel` (fixture recorded by
//! `scripts/reference/record_minilm_fixtures.py`), on the model `scripts/setup` installs.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sleuth::embed::{EmbedError, Embedder, MiniLmEmbedder, DEFAULT_MINILM_DIR};

#[derive(Deserialize)]
struct Fixture {
    model_sha256: String,
    max_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MINILM_DIR);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/setup first",
        dir.display()
    );
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn ids_and_embeddings_match_transformers() {
    let fx = fixture();
    let dir = model_dir();
    let sha: String = Sha256::digest(std::fs::read(dir.join("model.safetensors")).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha, fx.model_sha256,
        "the fixture was recorded on another model file"
    );
    let e = MiniLmEmbedder::load(&dir).unwrap();
    assert_eq!(e.dims(), 384);
    for case in &fx.cases {
        let ids = e.token_ids(&case.text);
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        assert!(ids.len() <= fx.max_tokens);
        let got = e.embed(&case.text);
        let diff = max_abs_diff(&got, &case.embedding);
        assert!(diff < 1e-4, "{:?}: max |diff| {diff}", case.text);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
    }
    // The long case really was cut at the limit.
    assert!(fx.cases.iter().any(|c| c.ids.len() == fx.max_tokens));
}

#[test]
fn a_batch_equals_one_text_at_a_time_and_ranks_by_meaning() {
    let fx = fixture();
    let e = MiniLmEmbedder::load(&model_dir()).unwrap();
    let texts: Vec<&str> = fx.cases.iter().map(|c| c.text.as_str()).collect();
    let mut batch = vec![0.0; texts.len() * e.dims()];
    let mut calls = Vec::new();
    e.embed_batch(&texts, &mut batch, &mut |n| calls.push(n));
    assert_eq!(calls.last(), Some(&texts.len()));
    for (i, case) in fx.cases.iter().enumerate() {
        let row = &batch[i * 384..(i + 1) * 384];
        let diff = max_abs_diff(row, &case.embedding);
        assert!(diff < 1e-4, "batched {:?}: max |diff| {diff}", case.text);
    }
    // The question about the Royals' stadium is nearer the Kauffman Stadium sentence than the
    // unrelated punctuation sentence.
    let q = &batch[0..384];
    assert!(cosine(q, &batch[384..768]) > cosine(q, &batch[3 * 384..4 * 384]) + 0.2);
}

#[test]
fn a_missing_or_damaged_model_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = MiniLmEmbedder::load(tmp.path()).unwrap_err();
    assert!(matches!(err, EmbedError::Model { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = model_dir();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    // Weights cut short: the safetensors header promises more than the file holds.
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), &weights[..1 << 20]).unwrap();
    let err = MiniLmEmbedder::load(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("model.safetensors"),
        "error names the file: {err}"
    );
    std::fs::write(tmp.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = MiniLmEmbedder::load(tmp.path()).unwrap_err();
    assert!(matches!(err, EmbedError::Tokenizer { .. }), "{err}");
}
