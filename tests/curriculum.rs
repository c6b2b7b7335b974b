//! The curriculum as one resumable run, on a tiny random model with the real tokenizer and a
//! fake retriever: collect (scripted) → SFT → RL stage 1 → RL stage 2 → eval. A run
//! interrupted inside each training phase (and right after a metrics line whose checkpoint
//! was never written) resumes into the same sequence of metrics lines as an uninterrupted
//! run, with no step lost or repeated, and bit for bit: the same metrics lines (every field but
//! the wall-clock and memory figures) and the same final weights.

mod common;
use common::default_tokenizer as tokenizer;
use std::path::Path;
use std::sync::Arc;

use burn::module::Param;
use serde_json::Value;
use sleuth::config::RunConfig;
use sleuth::curriculum::{run_curriculum, CurriculumOptions};
use sleuth::model::backend::{self, Inference, Train};
use sleuth::model::{Llama, LlamaConfig, Tokenizer};
use sleuth::rl::checkpoint;
use sleuth::search::{Hit, Retriever, SearchError};

struct Docs;
impl Retriever for Docs {
    fn search(&self, q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        let hit = |title: &str, text: &str| Hit {
            id: title.into(),
            title: title.into(),
            text: text.into(),
            score: 1.0,
        };
        Ok(if q.contains("Arrowhead") {
            vec![hit(
                "Arrowhead Stadium",
                "Arrowhead Stadium is in Kansas City.",
            )]
        } else {
            vec![hit(
                "Kansas City Chiefs",
                "The Chiefs play at Arrowhead Stadium.",
            )]
        })
    }
}

/// Held by every test of this file for its whole run: [`base`] seeds burn's global RNG and
/// draws the random weights from it, so two tests building models at once would interleave
/// their draws and the bit-for-bit comparisons would see different weights.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn base(tok: &Tokenizer) -> (Llama<Train>, LlamaConfig, Tokenizer) {
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let mut model = common::seeded(7, || Llama::<Train>::random(&cfg, &backend::device()));
    model.embed_tokens = Param::from_tensor(model.embed_tokens.val().mul_scalar(6.0).detach());
    (model, cfg, tok.clone())
}

fn config(dir: &Path) -> RunConfig {
    // Cold-start, RL and eval questions are distinct: the curriculum refuses overlaps.
    let cold = dir.join("cold.jsonl");
    let rows = [
        r#"{"question": "Where do the Kansas City Chiefs play?", "answer": "Arrowhead Stadium", "type": "bridge", "support_titles": ["Kansas City Chiefs", "Arrowhead Stadium"]}"#,
        r#"{"question": "Which team plays at Arrowhead?", "answer": "Kansas City Chiefs", "type": "bridge", "support_titles": ["Arrowhead Stadium"]}"#,
    ];
    std::fs::write(&cold, rows.join("\n") + "\n").unwrap();
    let qa = dir.join("qa.jsonl");
    let rows = [
        r#"{"question": "In which stadium do the Kansas City Chiefs play home games?", "answer": "Arrowhead Stadium", "type": "bridge", "support_titles": ["Kansas City Chiefs", "Arrowhead Stadium"]}"#,
        r#"{"question": "Which NFL team plays at Arrowhead?", "answer": "Kansas City Chiefs", "type": "bridge", "support_titles": ["Arrowhead Stadium"]}"#,
    ];
    std::fs::write(&qa, rows.join("\n") + "\n").unwrap();
    let held_out = dir.join("heldout.jsonl");
    let rows = [
        r#"{"question": "Where do the Chiefs of Kansas City play?", "answer": "Arrowhead Stadium"}"#,
        r#"{"question": "Who plays at Arrowhead Stadium?", "answer": "Kansas City Chiefs"}"#,
    ];
    std::fs::write(&held_out, rows.join("\n") + "\n").unwrap();
    let text = format!(
        r#"
[prompt]
template = "User:{{question}}\nAssistant: <think>"
[rollout]
samples_per_question = 2
max_new_tokens = 160
context_tokens = 1024
top_k = 1
[reward.step]
new_support = 0.25
repeat = -0.25
[data]
train = [{qa:?}]
eval = {held_out:?}
[train]
questions_per_step = 1
micro_batch = 2
learning_rate = 1e-3
seed = 3
dynamic_sampling = true
max_resample = 1
guard = {{ enabled = false }}
[[phase]]
name = "collect"
kind = "collect"
data = {{ train = [{cold:?}] }}
[[phase]]
name = "sft"
kind = "sft"
steps = 2
[[phase]]
name = "stage1"
kind = "rl"
steps = 2
[[phase]]
name = "stage2"
kind = "rl"
steps = 2
reward = {{ kind = "stage2" }}
train = {{ algo = "reinforce_pp_baseline" }}
[[phase]]
name = "after"
kind = "eval"
batch = 2
"#
    );
    let path = dir.join("cur.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::load(&path).unwrap()
}

/// Each metrics line without the fields that measure the machine rather than the run
/// (`seconds*`, `tokens_per_s`, `rss_peak_mib`): what two runs with one seed must share.
fn deterministic_lines(run: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
            v.retain(|k, _| {
                !(k.starts_with("seconds") || k == "tokens_per_s" || k == "rss_peak_mib")
            });
            v
        })
        .collect()
}

/// (phase, step, run_step, reward_mean or loss) of each metrics line.
fn lines(run: &Path) -> Vec<(String, u64, u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let figure = v.get("reward_mean").or(v.get("loss")).unwrap();
            (
                v["phase"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
                v["run_step"].as_u64().unwrap(),
                format!("{:.4}", figure.as_f64().unwrap()),
            )
        })
        .collect()
}

fn run(cfg: &RunConfig, tok: &Tokenizer, out: &Path, resume: bool, max: Option<usize>) {
    let opts = CurriculumOptions {
        resume,
        max_total_steps: max,
        ..Default::default()
    };
    run_curriculum(
        cfg,
        base(tok),
        Arc::new(Docs),
        out,
        &opts,
        &backend::device(),
    )
    .unwrap();
}

#[test]
fn curriculum_resumes_inside_every_phase_to_the_uninterrupted_run() {
    let _serial = serial();
    let Some(tok) = tokenizer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    let whole = dir.path().join("whole");
    run(&cfg, &tok, &whole, false, None);
    let expected = lines(&whole);
    let phases: Vec<&str> = expected.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        phases,
        ["sft", "sft", "stage1", "stage1", "stage2", "stage2"]
    );
    let run_steps: Vec<u64> = expected.iter().map(|l| l.2).collect();
    assert_eq!(run_steps, [1, 2, 3, 4, 5, 6]);
    assert!(whole.join("05-after/eval-heldout.json").exists());
    // Re-running without --resume refuses to overwrite.
    let again = run_curriculum(
        &cfg,
        base(&tok),
        Arc::new(Docs),
        &whole,
        &CurriculumOptions::default(),
        &backend::device(),
    );
    assert!(again.unwrap_err().to_string().contains("--resume"));

    // Interrupted after run steps 1 (inside SFT), 3 (inside stage 1) and 5 (inside stage 2).
    let cut = dir.path().join("cut");
    for stop in [1, 3, 5] {
        run(&cfg, &tok, &cut, stop > 1, Some(stop));
        let got = lines(&cut);
        assert_eq!(got.len(), stop, "{got:?}");
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(cut.join("curriculum.json")).unwrap())
                .unwrap();
        assert!(!state["completed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "stage2"));
    }
    // A line written after the last checkpoint (killed between the two) is dropped on resume.
    let mut text = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    text.push_str(r#"{"phase":"stage2","step":2,"run_step":6,"reward_mean":9.0}"#);
    text.push('\n');
    std::fs::write(cut.join("metrics.jsonl"), text).unwrap();
    run(&cfg, &tok, &cut, true, None);
    let got = lines(&cut);
    let key = |v: &[(String, u64, u64, String)]| -> Vec<(String, u64, u64)> {
        v.iter().map(|l| (l.0.clone(), l.1, l.2)).collect()
    };
    assert_eq!(key(&got), key(&expected), "no step lost or repeated");
    assert_ne!(
        got.last().unwrap().3,
        "9.0000",
        "the orphan line was dropped"
    );
    assert!(cut.join("05-after/eval-heldout.json").exists());

    // Bit for bit: every metrics figure, the final checkpoint's files (weights, progress) and
    // the evaluation. Completed phases keep no optimizer moments, in either run.
    assert_eq!(deterministic_lines(&cut), deterministic_lines(&whole));
    for file in ["model.mpk", "state.json"] {
        let read = |run: &Path| std::fs::read(run.join("04-stage2/checkpoint").join(file)).unwrap();
        assert!(read(&cut) == read(&whole), "{file} differs after resume");
    }
    for run in [&cut, &whole] {
        for phase in ["02-sft", "03-stage1", "04-stage2"] {
            let ckpt = run.join(phase).join("checkpoint");
            assert!(
                ckpt.join("model.mpk").is_file(),
                "{phase} keeps its weights"
            );
            assert!(
                !ckpt.join("optimizer.mpk").exists(),
                "{phase} completed but kept its optimizer moments"
            );
            assert!(checkpoint::load_saved::<Inference>(
                run.join(phase).as_path(),
                &backend::device()
            )
            .is_ok());
        }
    }
    // `eval --checkpoint`, `export` and `serve` take the curriculum's own folder: its last phase
    // with a checkpoint.
    assert_eq!(
        checkpoint::resolve(&whole).unwrap(),
        whole.join("04-stage2")
    );
    let report = |run: &Path| {
        let text = std::fs::read_to_string(run.join("05-after/eval-heldout.json")).unwrap();
        let mut v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        v.retain(|k, _| k != "seconds" && k != "tokens_per_s");
        v
    };
    assert_eq!(report(&cut), report(&whole));

    // Killed inside the eval phase after a set finished: the resume keeps that set's report
    // (marked here by a `seconds` no run would measure) when it covered the same questions,
    // and evaluates again when the question count changed.
    let reopen = |run: &Path| {
        let path = run.join("curriculum.json");
        let mut state: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        state["completed"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p != "after");
        std::fs::write(&path, state.to_string()).unwrap();
    };
    let report_path = cut.join("05-after/eval-heldout.json");
    let mut saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    saved["seconds"] = serde_json::json!(12345.0);
    std::fs::write(&report_path, saved.to_string()).unwrap();
    reopen(&cut);
    run(&cfg, &tok, &cut, true, None);
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(
        kept["seconds"], 12345.0,
        "the finished set was evaluated again"
    );
    reopen(&cut);
    let opts = CurriculumOptions {
        resume: true,
        limit: Some(1),
        ..Default::default()
    };
    run_curriculum(
        &cfg,
        base(&tok),
        Arc::new(Docs),
        &cut,
        &opts,
        &backend::device(),
    )
    .unwrap();
    let redone: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(redone["n"], 1);
    assert_ne!(redone["seconds"], 12345.0);
}

/// A cold-start question that is also an RL question, or a training question that is also an
/// evaluation question, stops the run before any phase; a valid run records which questions
/// each phase used in `data-split.json`.
#[test]
fn overlapping_phase_questions_are_refused_and_the_split_is_recorded() {
    let _serial = serial();
    let Some(tok) = tokenizer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("ok");
    let opts = CurriculumOptions {
        max_total_steps: Some(0),
        ..Default::default()
    };
    run_curriculum(
        &cfg,
        base(&tok),
        Arc::new(Docs),
        &out,
        &opts,
        &backend::device(),
    )
    .unwrap();
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data-split.json")).unwrap())
            .unwrap();
    let phases: Vec<(&str, u64)> = record["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap(),
                p["questions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [("collect", 2), ("stage1", 2), ("stage2", 2), ("after", 2)]
    );

    for (what, from, to) in [
        ("cold-start", "cold.jsonl", "qa.jsonl"),
        ("evaluation", "heldout.jsonl", "qa.jsonl"),
    ] {
        let mut bad = cfg.clone();
        // The collect phase reads the RL questions, or the eval set is the RL set.
        if from == "cold.jsonl" {
            let table = bad.phase[0].data.as_mut().unwrap();
            table.insert(
                "train".into(),
                toml::Value::Array(vec![toml::Value::String(
                    dir.path().join(to).display().to_string(),
                )]),
            );
        } else {
            bad.data.eval = dir.path().join(to);
        }
        let e = run_curriculum(
            &bad,
            base(&tok),
            Arc::new(Docs),
            &dir.path().join(format!("bad-{what}")),
            &CurriculumOptions::default(),
            &backend::device(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(what) && e.contains("share 2 question"), "{e}");
        assert!(
            !dir.path().join(format!("bad-{what}/01-collect")).exists(),
            "no phase ran"
        );
    }
}

/// The before/after lines give each cover-EM ± one standard error and, paired question by
/// question from the first and last eval phases' trajectories, the questions gained and lost
/// with McNemar's exact p; a set without trajectories keeps its line and says why it has no
/// test.
#[test]
fn before_after_pairs_the_first_and_last_eval_phases() {
    let _serial = serial();
    use sleuth::curriculum::{before_after, PhaseEval};
    use sleuth::eval::EvalReport;

    let run = tempfile::tempdir().unwrap();
    // 100 questions; `right(i)` says whether the phase answered question i.
    let phase = |name: &str, right: &dyn Fn(usize) -> bool| -> PhaseEval {
        let dir = run.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let rows: String = (0..100)
            .map(|i| {
                let pred = if right(i) { format!("ans{i}") } else { "no".into() };
                format!(
                    r#"{{"idx": {i}, "question": "Q{i}?", "answer": ["ans{i}"], "pred_ans": "{pred}"}}"#
                ) + "\n"
            })
            .collect();
        std::fs::write(dir.join("eval-qa.trajectories.jsonl"), rows).unwrap();
        let right_count = (0..100).filter(|&i| right(i)).count();
        let report = |cover_em: f64| EvalReport {
            n: 100,
            cover_em,
            ..EvalReport::default()
        };
        PhaseEval {
            phase: name.into(),
            reports: vec![
                ("qa".into(), report(right_count as f64)),
                // Reported, but its trajectories were never written.
                ("other".into(), report(1.0)),
            ],
            dir,
        }
    };
    // Before: right on 0..15. After: keeps 10..15, gains 15..22, loses 0..10.
    let evals = [
        phase("before", &|i| i < 15),
        phase("middle", &|_| true),
        phase("after", &|i| (10..22).contains(&i)),
    ];
    let lines = before_after(&evals);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // SE sqrt(.15·.85/100) = 3.57 and sqrt(.12·.88/100) = 3.25 points;
    // p = 2 · Σ_{k≤7} C(17,k) / 2^17 = 0.629.
    assert!(
        lines[0].starts_with(
            "qa: before cover-EM 15.0 ± 3.6 → after 12.0 ± 3.2 \
             (n=100; gained 7, lost 10, McNemar p = 0.63); F1 "
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1]
            .starts_with("other: before cover-EM 1.0 ± 1.0 → after 1.0 ± 1.0 (no paired test: ")
            && lines[1].contains("eval-other.trajectories.jsonl"),
        "{}",
        lines[1]
    );

    // A phase recorded before `dir` existed still loads.
    let old: PhaseEval = serde_json::from_str(r#"{"phase": "x", "reports": []}"#).unwrap();
    assert_eq!(old.dir, Path::new(""));
}
