//! RL with a served rollout engine (`[rollout] engine = "openai"`, `sleuth::rl::served`)
//! against a loopback fake of vLLM's API that *is* an engine: it samples with the tiny model
//! itself (the trainer's base, with the PEFT adapter folders the trainer pushes applied by
//! `hf::peft::apply_adapter`), in token ids, and returns each sampled id's log-prob under the
//! tempered distribution (vLLM's `--logprobs-mode processed_logprobs`).
//!
//! Checked: every step samples with the adapter pushed after the previous update
//! (`sleuth-step-{n-1}`), old adapters are unloaded and their folders removed, the engine's
//! log-probs agree with the trainer's (the same f32 weights on both sides), only adapter
//! tensors train, a resumed run pushes its checkpoint's adapter (unloading a stale one of the
//! same name first) and continues as the uninterrupted run did; and what the real engine
//! cannot be made to do on demand: an adapter load refused, the server going down mid-step
//! (retries, then a clear error, the last checkpoint and its metrics kept), a response without
//! log-probs, and the settings the engine needs. The same loop against a real vLLM CPU server
//! is left to a script (docs/scale.md).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use burn::module::AutodiffModule;
use serde_json::{json, Value};

use sleuth::env::remote::RemoteOptions;
use sleuth::env::{Env, PromptConfig, RolloutConfig, RolloutEngine, RolloutMode};
use sleuth::model::backend::{self, Inference, Train};
use sleuth::model::{
    BatchGenerator, Llama, LlamaConfig, LoraConfig, RowStart, Sampler, SamplingConfig, StopReason,
    Tokenizer,
};
use sleuth::reward::{RewardBreakdown, RewardFn, Rewards};
use sleuth::rl::run::{run_steps, LoopOptions};
use sleuth::rl::{GuardConfig, Question, TrainConfig, TrainError, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

const TEMPERATURE: f32 = 0.8;

/// The fake engine's state and what it was asked.
struct Engine {
    tokenizer: Tokenizer,
    base: Llama<Inference>,
    adapters: Mutex<HashMap<String, Llama<Inference>>>,
    /// `("load" | "unload", name)` in order.
    calls: Mutex<Vec<(String, String)>>,
    /// The `model` of every completions request.
    sampled_with: Mutex<Vec<String>>,
    completions: AtomicUsize,
    refuse_loads: AtomicBool,
    drop_logprobs: AtomicBool,
    /// Completions answered before every later one gets a 503 (`usize::MAX`: never).
    down_after: AtomicUsize,
}

async fn completions(
    State(e): State<Arc<Engine>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if e.completions.fetch_add(1, Ordering::SeqCst) >= e.down_after.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "down"})),
        );
    }
    let name = body["model"].as_str().unwrap().to_string();
    e.sampled_with.lock().unwrap().push(name.clone());
    let Some(model) = e.adapters.lock().unwrap().get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("model {name} does not exist")})),
        );
    };
    let prompt: Vec<u32> = body["prompt"]
        .as_array()
        .expect("training sends token ids")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(body["return_tokens_as_token_ids"], json!(true));
    let max_tokens = body["max_tokens"].as_u64().unwrap() as usize;
    let stops: Vec<String> = body["stop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let eos: Vec<u32> = e.tokenizer.eos_id().into_iter().collect();
    let n = prompt.len();
    let mut gen = BatchGenerator::from_starts(
        &model,
        &e.tokenizer,
        vec![RowStart::prompt(prompt)],
        n + max_tokens,
        (stops, eos),
    )
    .unwrap();
    let mut sampler = Sampler::new(SamplingConfig {
        // vLLM refuses seeds past i64::MAX.
        seed: body["seed"].as_i64().expect("a seed vLLM accepts") as u64,
        temperature: body["temperature"].as_f64().unwrap() as f32,
        ..Default::default()
    });
    gen.generate(&mut sampler, &[max_tokens]);
    let row = &gen.rows()[0];
    let ids = &row.tokens[n..];
    let finish = match row.stop {
        Some(StopReason::Stop(_)) | Some(StopReason::Eos) => "stop",
        _ => "length",
    };
    let mut choice = json!({
        "index": 0,
        "text": sleuth::model::text_of(&e.tokenizer, ids),
        "finish_reason": finish,
        "logprobs": {
            "tokens": ids.iter().map(|i| format!("token_id:{i}")).collect::<Vec<_>>(),
            "token_logprobs": &row.logprobs[n..],
        },
    });
    if e.drop_logprobs.load(Ordering::SeqCst) {
        choice["logprobs"] = Value::Null;
    }
    (StatusCode::OK, Json(json!({"choices": [choice]})))
}

async fn load(State(e): State<Arc<Engine>>, Json(body): Json<Value>) -> (StatusCode, String) {
    let name = body["lora_name"].as_str().unwrap().to_string();
    e.calls.lock().unwrap().push(("load".into(), name.clone()));
    if e.refuse_loads.load(Ordering::SeqCst) {
        return (
            StatusCode::BAD_REQUEST,
            "LoRA is not enabled: start the server with --enable-lora".into(),
        );
    }
    let mut adapters = e.adapters.lock().unwrap();
    if adapters.contains_key(&name) {
        return (
            StatusCode::BAD_REQUEST,
            format!("The lora adapter '{name}' has already been loaded."),
        );
    }
    let dir = Path::new(body["lora_path"].as_str().unwrap());
    let model = sleuth::model::hf::peft::apply_adapter(e.base.clone(), dir).unwrap();
    adapters.insert(name.clone(), model);
    (
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
}

async fn unload(State(e): State<Arc<Engine>>, Json(body): Json<Value>) -> (StatusCode, String) {
    let name = body["lora_name"].as_str().unwrap().to_string();
    e.calls
        .lock()
        .unwrap()
        .push(("unload".into(), name.clone()));
    match e.adapters.lock().unwrap().remove(&name) {
        Some(_) => (StatusCode::OK, "removed".into()),
        None => (StatusCode::NOT_FOUND, format!("{name} is not loaded")),
    }
}

fn serve(tokenizer: &Tokenizer, base: Llama<Inference>) -> (String, Arc<Engine>) {
    let state = Arc::new(Engine {
        tokenizer: tokenizer.clone(),
        base,
        adapters: Mutex::new(HashMap::new()),
        calls: Mutex::new(Vec::new()),
        sampled_with: Mutex::new(Vec::new()),
        completions: AtomicUsize::new(0),
        refuse_loads: AtomicBool::new(false),
        drop_logprobs: AtomicBool::new(false),
        down_after: AtomicUsize::new(usize::MAX),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/load_lora_adapter", post(load))
        .route("/v1/unload_lora_adapter", post(unload))
        .with_state(state.clone());
    (common::serve_loopback(app), state)
}

struct NoSearch;
impl Retriever for NoSearch {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(Vec::new())
    }
}

/// Pays the share of "e" among the solution's characters: arbitrary but varied, so groups
/// carry advantages.
struct ShareOfE;
impl RewardFn for ShareOfE {
    fn score(&self, solution: &str, _golds: &[String]) -> RewardBreakdown {
        let n = solution.chars().count().max(1) as f32;
        RewardBreakdown {
            total: solution.matches('e').count() as f32 / n,
            ..Default::default()
        }
    }
    fn name(&self) -> &'static str {
        "share_of_e"
    }
}

fn base_model(tok: &Tokenizer) -> (Llama<Train>, LlamaConfig) {
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let model = common::seeded(11, || Llama::<Train>::random(&cfg, &backend::device()));
    (model, cfg)
}

fn rollout(url: &str) -> RolloutConfig {
    RolloutConfig {
        samples_per_question: 2,
        max_new_tokens: 10,
        context_tokens: 64,
        temperature: TEMPERATURE,
        engine: RolloutEngine::Openai,
        openai: RemoteOptions {
            url: url.into(),
            retries: 2,
            retry_backoff_ms: 10,
            ..RemoteOptions::default()
        },
        ..Default::default()
    }
}

fn train_cfg(lora: bool) -> TrainConfig {
    TrainConfig {
        questions_per_step: 2,
        micro_batch: 4,
        learning_rate: 1e-2,
        weight_decay: 0.0,
        seed: 5,
        dynamic_sampling: false,
        lora: lora.then(|| LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        }),
        guard: GuardConfig {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn trainer(
    tok: &Tokenizer,
    rollout: RolloutConfig,
    cfg: TrainConfig,
) -> Result<Trainer<Train>, TrainError> {
    let (model, arch) = base_model(tok);
    let data = ["Tell me a story.", "What is a cat?", "Name a river."]
        .iter()
        .map(|q| Question {
            question: q.to_string(),
            ..Default::default()
        })
        .collect();
    Trainer::new(
        model,
        arch,
        Env {
            tokenizer: tok.clone(),
            retriever: Arc::new(NoSearch),
            prompt: PromptConfig {
                template: "{question}".into(),
                ..Default::default()
            },
            rollout,
        },
        Rewards {
            rule: Box::new(ShareOfE),
            step: Default::default(),
        },
        cfg,
        data,
        backend::device(),
    )
}

fn opts(steps: usize) -> LoopOptions {
    LoopOptions {
        steps,
        checkpoint_every: 1,
        ..Default::default()
    }
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The figures a resumed run must reproduce (no timings).
fn learning_figures(m: &Value) -> Value {
    json!([
        m["step"],
        m["reward_mean"],
        m["loss"],
        m["grad_norm"],
        m["sampled_by"],
        m["logprob_mismatch"]
    ])
}

#[test]
fn each_step_samples_with_the_adapter_pushed_after_the_last_update_and_resumes() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let (url, engine) = serve(&tok, base_model(&tok).0.valid());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut t = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    run_steps(&mut t, &run, &run.join("metrics.jsonl"), &opts(3)).unwrap();

    let m = metrics(&run);
    assert_eq!(m.len(), 3);
    for (i, line) in m.iter().enumerate() {
        assert_eq!(
            line["sampled_by"],
            json!(format!("sleuth-step-{i}")),
            "{line}"
        );
        assert!(line["seconds_sync"].as_f64().unwrap() > 0.0);
        // Same f32 weights on both sides: the engine's log-probs are the trainer's.
        let gap = line["logprob_mismatch"].as_f64().unwrap();
        let max = line["logprob_mismatch_max"].as_f64().unwrap();
        assert!(
            gap <= max && max < 1e-3,
            "step {}: engine/trainer log-prob gap {gap}, max {max}",
            i + 1
        );
    }
    // Each step had a gradient to apply.
    assert!(m.iter().all(|l| l["grad_norm"].as_f64().unwrap() > 0.0));
    let calls = engine.calls.lock().unwrap().clone();
    let c = |k: &str, n: &str| (k.to_string(), n.to_string());
    assert_eq!(
        calls,
        vec![
            c("unload", "sleuth-step-0"), // first push of a process: a stale name is dropped
            c("load", "sleuth-step-0"),
            c("load", "sleuth-step-1"),
            c("unload", "sleuth-step-0"),
            c("load", "sleuth-step-2"),
            c("unload", "sleuth-step-1"),
        ]
    );
    // Every request of step n + 1 named sleuth-step-n, in order.
    let used = engine.sampled_with.lock().unwrap().clone();
    let mut seen: Vec<&String> = used.iter().collect();
    seen.dedup();
    assert_eq!(seen, ["sleuth-step-0", "sleuth-step-1", "sleuth-step-2"]);
    // Only the adapter in use is kept on disk.
    let kept: Vec<String> = std::fs::read_dir(run.join("adapters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, ["sleuth-step-2"]);

    // Resume from step 2's checkpoint in a fresh trainer (as after a kill): it pushes the
    // checkpoint's adapter under step 2's name — the server still holds a stale one, which is
    // unloaded first — and step 3 comes out as the uninterrupted run's.
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let mut t = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    run_steps(&mut t, &resumed, &resumed.join("metrics.jsonl"), &opts(2)).unwrap();
    engine.calls.lock().unwrap().clear();
    let mut t = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    t.resume_from(&resumed).unwrap();
    run_steps(&mut t, &resumed, &resumed.join("metrics.jsonl"), &opts(3)).unwrap();
    let calls = engine.calls.lock().unwrap().clone();
    assert_eq!(
        &calls[..2],
        &[c("unload", "sleuth-step-2"), c("load", "sleuth-step-2")]
    );
    let r = metrics(&resumed);
    assert_eq!(r.len(), 3);
    assert_eq!(learning_figures(&r[2]), learning_figures(&m[2]));
}

#[test]
fn engine_failures_name_the_cause_and_keep_the_last_checkpoint() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let (url, engine) = serve(&tok, base_model(&tok).0.valid());
    let dir = tempfile::tempdir().unwrap();

    // An adapter load refused: the first step stops, naming the adapter and the server's words.
    engine.refuse_loads.store(true, Ordering::SeqCst);
    let mut t = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    let err = t.step().unwrap_err().to_string();
    assert!(
        err.contains("refused adapter sleuth-step-0") && err.contains("--enable-lora"),
        "{err}"
    );
    engine.refuse_loads.store(false, Ordering::SeqCst);

    // A response without log-probs cannot be trained on.
    engine.drop_logprobs.store(true, Ordering::SeqCst);
    let err = t.step().unwrap_err().to_string();
    assert!(err.contains("no logprobs"), "{err}");
    engine.drop_logprobs.store(false, Ordering::SeqCst);

    // The server goes down during step 2: the retries run out, the error names the URL and
    // status, and step 1's checkpoint and metrics line stay.
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut t = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    run_steps(&mut t, &run, &run.join("metrics.jsonl"), &opts(1)).unwrap();
    engine.down_after.store(
        engine.completions.load(Ordering::SeqCst) + 1,
        Ordering::SeqCst,
    );
    let err = run_steps(&mut t, &run, &run.join("metrics.jsonl"), &opts(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 503") && err.contains("3 attempt(s)") && err.contains(&url),
        "{err}"
    );
    assert_eq!(metrics(&run).len(), 1);
    let mut again = trainer(&tok, rollout(&url), train_cfg(true)).unwrap();
    again.resume_from(&run).unwrap();
    assert_eq!(again.learner.state.step, 1);
}

#[test]
fn the_served_engine_needs_lora_chains_and_a_url() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let msg = |r: Result<Trainer<Train>, TrainError>| r.err().expect("refused").to_string();
    let url = "http://127.0.0.1:9";
    let err = msg(trainer(&tok, rollout(url), train_cfg(false)));
    assert!(err.contains("[train] lora"), "{err}");
    let tree = RolloutConfig {
        mode: RolloutMode::Tree,
        ..rollout(url)
    };
    let err = msg(trainer(&tok, tree, train_cfg(true)));
    assert!(err.contains("tree"), "{err}");
    let err = msg(trainer(&tok, rollout("127.0.0.1:9"), train_cfg(true)));
    assert!(err.contains("http://"), "{err}");
}
