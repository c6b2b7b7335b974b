//! The learning test (CI): a tiny random-initialized Llama with the real tokenizer, trained by
//! GRPO through the real rollout loop and the masked policy loss on a synthetic reward, must
//! raise its mean reward. It proves gradients flow from rewards through advantages, the loss
//! mask and AdamW into the weights. Also checks that a checkpoint round-trips and resumes.
//!
//! The reward is the share of sampled tokens equal to one target token: the token the
//! untrained policy samples most often, so every GRPO group carries some signal from the
//! start and a policy that learns to emit it everywhere earns 1.0.

mod common;
use common::default_tokenizer as tokenizer;
use std::collections::HashMap;

use burn::module::{AutodiffModule, Param};
use sleuth::env::{rollout, PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::{text_of, Llama, LlamaConfig, Sampler, SamplingConfig, Tokenizer};
use sleuth::reward::{RewardBreakdown, RewardFn};
use sleuth::rl::Question;
use sleuth::rl::{Algo, GuardConfig, TrainConfig, TrainError, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

const MAX_NEW: usize = 12;
/// Rollouts sample the untruncated softmax at this temperature (RL refuses top-k / top-p,
/// since the loss scores the same tempered distribution). Below 1 it keeps a random model's
/// choices few, so the target token recurs often enough to be rewarded; much lower (0.35)
/// makes every sample of a group identical, and GRPO then has no variance to learn from.
const TEMPERATURE: f32 = 0.65;
/// Embedding scale over the default N(0, 0.02) init: gives a peaked output distribution, as a
/// pretrained model has (near-uniform logits over 49k tokens leave no token frequent enough
/// to reward).
const EMBED_SCALE: f64 = 6.0;
const QUESTIONS: [&str; 3] = [
    "Tell me a story.",
    "Write a sentence about the sea.",
    "What is a cat?",
];

struct NoSearch;
impl Retriever for NoSearch {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(Vec::new())
    }
}

/// Share of the budget filled with copies of `target`'s text.
struct TargetShare(String);
impl RewardFn for TargetShare {
    fn score(&self, solution: &str, _golds: &[String]) -> RewardBreakdown {
        RewardBreakdown {
            total: (solution.matches(self.0.as_str()).count() as f32 / MAX_NEW as f32).min(1.0),
            ..Default::default()
        }
    }
    fn name(&self) -> &'static str {
        "target_share"
    }
}

fn prompt() -> PromptConfig {
    PromptConfig {
        template: "{question}".into(),
        ..Default::default()
    }
}

fn rollout_cfg() -> RolloutConfig {
    RolloutConfig {
        samples_per_question: 8,
        max_new_tokens: MAX_NEW,
        context_tokens: 64,
        temperature: TEMPERATURE,
        ..Default::default()
    }
}

fn tiny_model(tok: &Tokenizer, seed: u64) -> (Llama<Train>, LlamaConfig) {
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let mut model = common::seeded(seed, || Llama::<Train>::random(&cfg, &backend::device()));
    model.embed_tokens =
        Param::from_tensor(model.embed_tokens.val().mul_scalar(EMBED_SCALE).detach());
    (model, cfg)
}

/// The text of the token the untrained policy samples most often.
fn most_sampled_token(model: &Llama<Train>, tok: &Tokenizer) -> String {
    let qs: Vec<String> = QUESTIONS.iter().map(|s| s.to_string()).collect();
    let mut sampler = Sampler::new(SamplingConfig {
        seed: 1,
        temperature: TEMPERATURE,
        ..Default::default()
    });
    let (eps, _) = rollout(
        &model.valid(),
        &sleuth::env::Env {
            tokenizer: tok.clone(),
            retriever: std::sync::Arc::new(NoSearch),
            prompt: prompt().clone(),
            rollout: rollout_cfg().clone(),
        },
        &qs,
        &mut sampler,
    )
    .unwrap();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for e in &eps {
        for (t, m) in e.tokens.iter().zip(&e.mask) {
            if *m == 1 {
                *counts.entry(*t).or_default() += 1;
            }
        }
    }
    let (&id, _) = counts
        .iter()
        .max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id)))
        .unwrap();
    text_of(tok, &[id])
}

fn trainer(tok: Tokenizer, algo: Algo, lr: f64, seed: u64) -> Trainer<Train> {
    trainer_with(tok, algo, lr, seed, None)
}

/// [`trainer`], training LoRA adapters when `lora` is given.
fn trainer_with(
    tok: Tokenizer,
    algo: Algo,
    lr: f64,
    seed: u64,
    lora: Option<sleuth::model::LoraConfig>,
) -> Trainer<Train> {
    let (model, cfg) = tiny_model(&tok, seed);
    let target = most_sampled_token(&model, &tok);
    let train = TrainConfig {
        algo,
        questions_per_step: 2,
        micro_batch: 8,
        learning_rate: lr,
        weight_decay: 0.0,
        track_kl: true,
        seed,
        lora,
        // This reward is *meant* to collapse the policy onto one token (entropy → 0), which
        // is what the guard exists to stop; the guard has its own test below.
        guard: GuardConfig {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let data = QUESTIONS
        .iter()
        .map(|q| Question {
            question: q.to_string(),
            answers: vec![],
            ..Default::default()
        })
        .collect();
    Trainer::new(
        model,
        cfg,
        sleuth::env::Env {
            tokenizer: tok,
            retriever: std::sync::Arc::new(NoSearch),
            prompt: prompt(),
            rollout: rollout_cfg(),
        },
        sleuth::reward::Rewards {
            rule: Box::new(TargetShare(target)),
            step: Default::default(),
        },
        train,
        data,
        backend::device(),
    )
    .unwrap()
}

#[test]
fn grpo_raises_reward_on_tiny_model() {
    let Some(tok) = tokenizer() else { return };
    let mut t = trainer(tok, Algo::Grpo, 1e-2, 7);
    let mut entropies = Vec::new();
    let rewards: Vec<f64> = (0..16)
        .map(|_| {
            let m = t.step().unwrap();
            entropies.extend(m.entropy);
            eprintln!(
                "step {} reward {:.3} kl {:?} grad_norm {:.3}",
                m.step, m.reward_mean, m.kl, m.grad_norm
            );
            assert!(m.loss.is_finite() && m.grad_norm.is_finite());
            assert!(m.response_tokens_mean > 0.0);
            m.reward_mean
        })
        .collect();
    let first = rewards[..3].iter().sum::<f64>() / 3.0;
    let last = rewards[rewards.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last > first + 0.2 && last > 2.0 * first,
        "mean reward should rise: first {first:.3}, last {last:.3}"
    );
    // No assertion on entropy: it is measured only on steps that update (groups whose
    // rewards differ), so once some prompts are solved it reports the unsolved ones, and at
    // this learning rate its path depends on the GEMM kernels the CPU selects: at the same
    // commit it fell by more than half on the CI machine and rose 4.1 → 8.5 nats on an
    // AVX-512 EPYC, with the reward rising on both. It must stay a finite, positive figure.
    assert!(!entropies.is_empty(), "no step updated");
    assert!(
        entropies.iter().all(|e| e.is_finite() && *e > 0.0),
        "entropy: {entropies:.3?}"
    );
}

#[test]
fn reinforce_pp_baseline_steps_and_checkpoint_resumes() {
    let Some(tok) = tokenizer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(tok.clone(), Algo::ReinforcePpBaseline, 1e-3, 3);
    let m = t.step().unwrap();
    assert_eq!(m.step, 1);
    assert!(m.loss.is_finite());
    t.learner.save(dir.path()).unwrap();
    let saved = t.learner.model.embed_tokens.val().into_data();

    let mut resumed = trainer(tok, Algo::ReinforcePpBaseline, 1e-3, 99);
    assert_ne!(resumed.learner.model.embed_tokens.val().into_data(), saved);
    resumed.resume_from(dir.path()).unwrap();
    assert_eq!(resumed.learner.state, t.learner.state);
    assert_eq!(resumed.learner.model.embed_tokens.val().into_data(), saved);
    assert_eq!(resumed.step().unwrap().step, 2);
}

/// The collapse guard judges step N's figures as describing the weights step N started from:
/// when step 2 trips, the weights restored are those before step 1 (whose figures passed at
/// step 1), not the checkpoint after step 1; the learning rate halves from the next step on;
/// a trip past `max_trips` stops training.
#[test]
fn collapse_guard_restores_last_good_weights_and_lowers_lr() {
    let Some(tok) = tokenizer() else { return };
    let mut t = trainer(tok, Algo::Grpo, 1e-2, 7);
    // The tiny random model's entropy can exceed the default bound meant for a pretrained
    // policy, and lr 1e-2 moves it far
    // from the reference in one step: loosen those two bounds, test the mechanism.
    let pass = GuardConfig {
        max_trips: 1,
        max_entropy: 20.0,
        max_kl: 100.0,
        ..Default::default()
    };
    // A window of one step and a negative allowed drop: every step trips.
    let trip = GuardConfig {
        window: 1,
        max_format_drop: -1.0,
        ..pass.clone()
    };
    t.learner.cfg.guard = pass.clone();
    let theta0 = t.learner.model.embed_tokens.val().into_data();
    let m1 = t.step().unwrap();
    assert!(m1.guard.is_none(), "{:?}", m1.guard);
    assert!(
        m1.grad_norm > 0.0,
        "step 1 must change the weights for this test to mean anything"
    );
    assert_ne!(t.learner.model.embed_tokens.val().into_data(), theta0);

    t.learner.cfg.guard = trip.clone();
    let m2 = t.step().unwrap();
    let ev = m2.guard.clone().expect("step 2 trips");
    assert!(ev.reason.contains("format-valid rate"), "{}", ev.reason);
    assert_eq!(ev.restored_step, Some(0));
    assert_eq!(ev.lr_scale, 0.5);
    assert_eq!(t.learner.model.embed_tokens.val().into_data(), theta0);
    assert_eq!(
        (
            t.learner.state.step,
            t.learner.state.lr_scale,
            t.learner.state.guard_trips
        ),
        (2, 0.5, 1)
    );
    // The event is part of the logged metrics line.
    let line = serde_json::to_string(&m2).unwrap();
    assert!(line.contains("\"restored_step\":0"), "{line}");

    t.learner.cfg.guard = pass;
    let m3 = t.step().unwrap();
    assert!(m3.guard.is_none());
    assert_eq!(m3.step, 3, "the step counter moves on after a rollback");
    assert_eq!(m3.lr, 0.5e-2);

    t.learner.cfg.guard = trip;
    match t.step() {
        Err(TrainError::Collapsed { trips: 2, .. }) => {}
        other => panic!(
            "expected Collapsed after max_trips, got {:?}",
            other.map(|m| m.guard)
        ),
    }
}

/// The step-1 weights' guard figures pass, step 2's and step 3's format rates form a window
/// that trips at step 3: the weights restored are from before the window (θ_0, measured by
/// step 1), not θ_1, which step 2 measured inside the degraded window.
#[test]
fn windowed_guard_trip_restores_weights_from_before_the_window() {
    let Some(tok) = tokenizer() else { return };
    let mut t = trainer(tok, Algo::Grpo, 1e-2, 7);
    let pass = GuardConfig {
        max_trips: 3,
        max_entropy: 20.0,
        max_kl: 100.0,
        window: 2,
        ..Default::default()
    };
    t.learner.cfg.guard = pass.clone();
    let theta0 = t.learner.model.embed_tokens.val().into_data();
    assert!(t.step().unwrap().guard.is_none());
    let theta1 = t.learner.model.embed_tokens.val().into_data();
    assert_ne!(theta1, theta0, "step 1 must move the weights");
    assert!(t.step().unwrap().guard.is_none());
    t.learner.cfg.guard = GuardConfig {
        max_format_drop: -1.0,
        ..pass
    };
    let m3 = t.step().unwrap();
    let ev = m3.guard.expect("step 3 trips on the 2-step window");
    assert!(ev.reason.contains("over 2 steps"), "{}", ev.reason);
    assert_eq!(ev.restored_step, Some(0));
    assert_eq!(t.learner.model.embed_tokens.val().into_data(), theta0);
}

/// Scores 0 for questions whose gold is "flat" (every group all-equal, no advantage) and the
/// solution's length otherwise (samples differ).
struct FlatOrLength;
impl RewardFn for FlatOrLength {
    fn score(&self, solution: &str, golds: &[String]) -> RewardBreakdown {
        let total = if golds.iter().any(|g| g == "flat") {
            0.0
        } else {
            solution.len() as f32
        };
        RewardBreakdown {
            total,
            ..Default::default()
        }
    }
    fn name(&self) -> &'static str {
        "flat_or_length"
    }
}

fn dynamic_trainer(
    tok: Tokenizer,
    golds: &[&str],
    max_resample: usize,
    retire_after: usize,
) -> Trainer<Train> {
    let (model, cfg) = tiny_model(&tok, 5);
    let train = TrainConfig {
        questions_per_step: 2,
        micro_batch: 8,
        learning_rate: 1e-3,
        seed: 5,
        dynamic_sampling: true,
        max_resample,
        retire_after,
        guard: GuardConfig {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let data = golds
        .iter()
        .enumerate()
        .map(|(i, g)| Question {
            question: format!("{} {i}", QUESTIONS[i % QUESTIONS.len()]),
            answers: vec![g.to_string()],
            ..Default::default()
        })
        .collect();
    Trainer::new(
        model,
        cfg,
        sleuth::env::Env {
            tokenizer: tok,
            retriever: std::sync::Arc::new(NoSearch),
            prompt: prompt(),
            rollout: rollout_cfg(),
        },
        sleuth::reward::Rewards {
            rule: Box::new(FlatOrLength),
            step: Default::default(),
        },
        train,
        data,
        backend::device(),
    )
    .unwrap()
}

/// DAPO dynamic sampling: groups whose rewards are all equal are not trained on; the step
/// draws more questions until it holds `questions_per_step` informative groups, and never runs
/// more than `max_resample` extra rounds.
#[test]
fn dynamic_sampling_resamples_flat_groups_within_its_bound() {
    let Some(tok) = tokenizer() else { return };
    // Every question flat: 1 + max_resample rounds of 2 groups, nothing kept, no update.
    let mut t = dynamic_trainer(tok.clone(), &["flat", "flat", "flat"], 2, 0);
    let m = t.step().unwrap();
    assert_eq!((m.groups_sampled, m.groups_kept), (6, 0));
    assert_eq!(m.episodes, 6 * 8);
    assert_eq!(m.grad_norm, 0.0);
    assert!(
        m.entropy.is_none(),
        "no forward pass without informative groups"
    );

    // Half the questions informative: the step ends with exactly 2 kept groups, each with
    // reward variance, having sampled within the bound.
    let mut t = dynamic_trainer(tok, &["flat", "x", "flat", "y"], 3, 0);
    for _ in 0..3 {
        let m = t.step().unwrap();
        assert_eq!(m.groups_kept, 2, "{m:?}");
        assert!(
            m.groups_sampled >= 2 && m.groups_sampled <= 2 * (1 + 3),
            "{m:?}"
        );
        assert!(m.grad_norm > 0.0);
        assert_eq!(m.episodes, m.groups_sampled * 8);
    }
}

/// Questions never solved (cover-EM) after `retire_after` groups are retired and no longer
/// drawn, but never below `questions_per_step` active questions; the pass records are part
/// of the checkpointed state.
#[test]
fn never_solved_questions_retire_down_to_the_step_size() {
    let Some(tok) = tokenizer() else { return };
    let mut t = dynamic_trainer(tok, &["flat", "flat", "flat", "flat"], 0, 1);
    let mut retired = Vec::new();
    for _ in 0..4 {
        retired.push(t.step().unwrap().questions_retired);
    }
    assert!(retired.windows(2).all(|w| w[0] <= w[1]), "{retired:?}");
    assert_eq!(*retired.last().unwrap(), 2, "{retired:?}");
    let active: Vec<usize> = (0..4)
        .filter(|&i| !t.learner.state.pass[i].retired)
        .collect();
    assert_eq!(active.len(), 2);
    // Retired questions are not drawn again: their group counts stop growing.
    let before: Vec<usize> = t.learner.state.pass.iter().map(|p| p.groups).collect();
    t.step().unwrap();
    for (i, p) in t.learner.state.pass.iter().enumerate() {
        if p.retired {
            assert_eq!(p.groups, before[i]);
        }
    }
}

/// RL refuses truncated sampling: the loss scores the untruncated tempered softmax.
#[test]
fn truncated_rollout_sampling_is_refused() {
    let Some(tok) = tokenizer() else { return };
    let (model, cfg) = tiny_model(&tok, 1);
    let rollout = RolloutConfig {
        top_p: 0.9,
        ..rollout_cfg()
    };
    let err = Trainer::new(
        model,
        cfg,
        sleuth::env::Env {
            tokenizer: tok,
            retriever: std::sync::Arc::new(NoSearch),
            prompt: prompt(),
            rollout,
        },
        sleuth::reward::Rewards {
            rule: Box::new(FlatOrLength),
            step: Default::default(),
        },
        TrainConfig::default(),
        vec![Question {
            question: "q".into(),
            ..Default::default()
        }],
        backend::device(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("top_p"), "{err}");
}

/// Determinism (issue 15, item 1): two trainers built from the same seed on the same machine
/// and thread count take the same steps — every metric except wall-clock seconds equal, to the
/// last bit — and end with bit-identical weights. The rollouts (quantized engine, rayon over
/// output rows), the loss reductions and AdamW must therefore all be order-stable.
#[test]
fn same_seed_same_steps_and_same_weights() {
    let Some(tok) = tokenizer() else { return };
    let run = |tok: Tokenizer| {
        let mut t = trainer(tok, Algo::Grpo, 1e-2, 11);
        let lines: Vec<serde_json::Value> = (0..3)
            .map(|_| {
                let mut v = serde_json::to_value(t.step().unwrap()).unwrap();
                let obj = v.as_object_mut().unwrap();
                obj.retain(|k, _| {
                    !(k.starts_with("seconds") || k == "tokens_per_s" || k == "rss_peak_mib")
                });
                v
            })
            .collect();
        let weights: Vec<f32> = [
            t.learner.model.embed_tokens.val(),
            t.learner.model.norm.weight.val().unsqueeze(),
        ]
        .into_iter()
        .flat_map(|w| w.into_data().to_vec::<f32>().unwrap())
        .collect();
        (lines, weights)
    };
    let (lines_a, weights_a) = run(tok.clone());
    let (lines_b, weights_b) = run(tok);
    assert!(
        lines_a.iter().any(|l| l["grad_norm"].as_f64() != Some(0.0)),
        "no step updated"
    );
    assert_eq!(lines_a, lines_b);
    assert!(
        weights_a
            .iter()
            .zip(&weights_b)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "weights differ after three identical steps"
    );
}

/// Determinism across a kill (issue 15, item 1): a run checkpointed after step 2 and resumed
/// by a fresh trainer (as a new process would be) takes step 3 exactly as the uninterrupted
/// run does — the same metrics to the last bit — and ends with byte-identical checkpoint
/// files: weights, AdamW moments (used by step 3, so restored exactly) and progress.
#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let Some(tok) = tokenizer() else { return };
    let expected =
        assert_resume_equals_uninterrupted(|| trainer(tok.clone(), Algo::Grpo, 1e-2, 13));
    assert!(
        expected[2]["grad_norm"].as_f64().unwrap() > 0.0,
        "step 3 must update for the optimizer state to matter: {:?}",
        expected[2]
    );
}

/// GRPO with LoRA adapters: every base weight keeps its bits, the adapters move, and a run
/// resumed after step 2 (from an adapter-only checkpoint) takes step 3 exactly as the
/// uninterrupted run does. That also checks the rollout engine's adapters: the uninterrupted
/// run samples step 3 from a base quantized at step 1 with the adapters refreshed beside it,
/// the resumed one from a base quantized afresh (stale adapters fail here).
#[test]
fn lora_grpo_moves_only_the_adapters_and_resumes_bit_for_bit() {
    use sleuth::model::{LoraConfig, LoraTarget};
    let Some(tok) = tokenizer() else { return };
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj],
    };
    let make = || trainer_with(tok.clone(), Algo::Grpo, 1e-2, 13, Some(lora.clone()));
    let base = |m: &Llama<Train>| -> Vec<Vec<f32>> {
        let mut out = vec![m.embed_tokens.val().into_data().to_vec::<f32>().unwrap()];
        for layer in 0..m.layers.len() {
            for t in LoraTarget::ALL {
                out.push(
                    m.target(layer, t)
                        .weight
                        .val()
                        .into_data()
                        .to_vec::<f32>()
                        .unwrap(),
                );
            }
        }
        out
    };
    let mut t = make();
    let before = base(&t.learner.model);
    let updated: Vec<f64> = (0..3).map(|_| t.step().unwrap().grad_norm).collect();
    assert!(
        updated.iter().any(|g| *g > 0.0),
        "no step updated: {updated:?}"
    );
    assert_eq!(base(&t.learner.model), before, "a frozen base weight moved");
    let moved = (0..t.learner.model.layers.len()).any(|l| {
        let a = t
            .learner
            .model
            .target(l, LoraTarget::QProj)
            .lora
            .as_ref()
            .unwrap();
        a.b.val().abs().max().into_scalar() > 0.0
    });
    assert!(moved, "the adapters never moved");
    let lines = assert_resume_equals_uninterrupted(make);
    assert_eq!(lines.len(), 3);
}

/// A step's metrics line without the wall-clock and memory figures.
fn deterministic_line(m: sleuth::rl::StepMetrics) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap();
    v.as_object_mut()
        .unwrap()
        .retain(|k, _| !(k.starts_with("seconds") || k == "tokens_per_s" || k == "rss_peak_mib"));
    v
}

/// Runs three steps of `make()`'s trainer, then two steps of another, a checkpoint, and step 3
/// from a third trainer (built as a new process would build it: same config, base weights and
/// reference model) resumed from that checkpoint; asserts the same metrics lines and
/// byte-identical checkpoint files, and returns the lines.
fn assert_resume_equals_uninterrupted(make: impl Fn() -> Trainer<Train>) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let mut t = make();
    let expected: Vec<_> = (0..3)
        .map(|_| deterministic_line(t.step().unwrap()))
        .collect();
    t.learner.save(&whole).unwrap();

    let mut first = make();
    let mut got: Vec<_> = (0..2)
        .map(|_| deterministic_line(first.step().unwrap()))
        .collect();
    first.learner.save(&cut).unwrap();
    drop(first);
    let mut resumed = make();
    resumed.resume_from(&cut).unwrap();
    got.push(deterministic_line(resumed.step().unwrap()));
    resumed.learner.save(&cut).unwrap();

    assert_eq!(got, expected);
    // A LoRA run's checkpoint holds its adapters instead of the model.
    let weights = if sleuth::rl::checkpoint::is_adapter_only(&whole) {
        "adapter/adapter_model.safetensors"
    } else {
        "model.mpk"
    };
    for file in [weights, "optimizer.mpk", "state.json"] {
        let read =
            |run: &std::path::Path| std::fs::read(run.join("checkpoint").join(file)).unwrap();
        assert!(read(&cut) == read(&whole), "{file} differs after resume");
    }
    expected
}

/// Tree rollouts (`[rollout] mode = "tree"`) through the trainer: every step's group is the
/// question's leaves, its metrics carry the tree figures, and a run resumed after step 2 takes
/// step 3 exactly as the uninterrupted run does (node picks are seeded by the step). The tiny
/// model never searches, so its trees grow from the root; search nodes are covered in
/// `tests/tree.rs`.
#[test]
fn tree_mode_steps_report_trees_and_resume_bit_for_bit() {
    let Some(tok) = tokenizer() else { return };
    let tree_trainer = || {
        let mut t = trainer(tok.clone(), Algo::Grpo, 1e-2, 21);
        t.env.rollout.mode = sleuth::env::RolloutMode::Tree;
        t.env.rollout.tree = sleuth::env::TreeConfig {
            trees: 2,
            expansions: 1,
            expand_nodes: 2,
            ..Default::default()
        };
        t
    };
    let expected = assert_resume_equals_uninterrupted(tree_trainer);
    for m in &expected {
        assert_eq!(m["tree_trees"], 2 * 2, "{m}");
        assert_eq!(m["tree_leaves"], 2 * 6, "{m}");
        assert_eq!(m["episodes"], 2 * 6, "{m}");
        assert_eq!(m["tree_nodes_expanded"], 2 * 2 * 2, "{m}");
        assert!(m["episodes_per_1k_tokens"].as_f64().unwrap() > 0.0);
        assert!(m["sampled_tokens"].as_u64().unwrap() > 0);
    }
    assert!(expected
        .iter()
        .any(|m| m["grad_norm"].as_f64().unwrap() > 0.0));

    // Tree advantages are GRPO's: Reinforce++ with trees is refused.
    let mut rpp = trainer(tok.clone(), Algo::ReinforcePpBaseline, 1e-2, 21);
    rpp.env.rollout.mode = sleuth::env::RolloutMode::Tree;
    let err = rpp.step().unwrap_err().to_string();
    assert!(
        err.contains("mode = \"tree\"") && err.contains("grpo"),
        "{err}"
    );
    // A forest of no trees is a clear error, not a silent default.
    let mut none = tree_trainer();
    none.env.rollout.tree.trees = 0;
    let err = none.step().unwrap_err().to_string();
    assert!(
        err.contains("trees = 0") && err.contains("at least 1"),
        "{err}"
    );
}
