//! The learning test (CI): a tiny random-initialized Llama with the real tokenizer, trained by
//! GRPO through the real rollout loop and the masked policy loss on a synthetic reward, must
//! raise its mean reward. It proves gradients flow from rewards through advantages, the loss
//! mask and AdamW into the weights. Also checks that a checkpoint round-trips and resumes.
//!
//! The reward is the share of sampled tokens equal to one target token: the token the
//! untrained policy samples most often, so every GRPO group carries some signal from the
//! start and a policy that learns to emit it everywhere earns 1.0.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, Param};
use sleuth::env::{rollout, PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::gguf::GgufFile;
use sleuth::model::{text_of, Llama, LlamaConfig, Sampler, SamplingConfig, Tokenizer};
use sleuth::reward::{RewardBreakdown, RewardFn};
use sleuth::rl::trainer::Question;
use sleuth::rl::{Algo, GuardConfig, TrainConfig, TrainError, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

const MAX_NEW: usize = 12;
const TOP_K: usize = 4;
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

fn tokenizer() -> Option<Tokenizer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", path.display());
        return None;
    }
    Some(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap())
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
        // Sampling among the 4 likeliest tokens keeps a random model's choices few, so the
        // target token recurs often enough to be rewarded.
        top_k_sampling: TOP_K,
        ..Default::default()
    }
}

fn tiny_model(tok: &Tokenizer, seed: u64) -> (Llama<Train>, LlamaConfig) {
    let device = backend::device();
    <Train as burn::tensor::backend::Backend>::seed(&device, seed);
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let mut model = Llama::<Train>::random(&cfg, &device);
    model.embed_tokens =
        Param::from_tensor(model.embed_tokens.val().mul_scalar(EMBED_SCALE).detach());
    (model, cfg)
}

/// The text of the token the untrained policy samples most often.
fn most_sampled_token(model: &Llama<Train>, tok: &Tokenizer) -> String {
    let qs: Vec<String> = QUESTIONS.iter().map(|s| s.to_string()).collect();
    let mut sampler = Sampler::new(SamplingConfig {
        seed: 1,
        top_k: TOP_K,
        ..Default::default()
    });
    let (eps, _) = rollout(
        &model.valid(),
        tok,
        &NoSearch,
        &prompt(),
        &rollout_cfg(),
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
        })
        .collect();
    Trainer::new(
        model,
        cfg,
        tok,
        Box::new(NoSearch),
        Box::new(TargetShare(target)),
        prompt(),
        rollout_cfg(),
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
    // The policy concentrates on the rewarded token: its entropy falls.
    let (e0, e1) = (entropies[0], *entropies.last().unwrap());
    assert!(e1 < 0.5 * e0, "entropy should fall: {entropies:.3?}");
}

#[test]
fn reinforce_pp_baseline_steps_and_checkpoint_resumes() {
    let Some(tok) = tokenizer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(tok.clone(), Algo::ReinforcePpBaseline, 1e-3, 3);
    let m = t.step().unwrap();
    assert_eq!(m.step, 1);
    assert!(m.loss.is_finite());
    t.save(dir.path()).unwrap();
    let saved = t.model.embed_tokens.val().into_data();

    let mut resumed = trainer(tok, Algo::ReinforcePpBaseline, 1e-3, 99);
    assert_ne!(resumed.model.embed_tokens.val().into_data(), saved);
    resumed.resume_from(dir.path()).unwrap();
    assert_eq!(resumed.state, t.state);
    assert_eq!(resumed.model.embed_tokens.val().into_data(), saved);
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
    // The tiny random model's full-vocabulary entropy is ~9.8 nats (it samples from its top 4
    // only), above the default bound meant for a pretrained policy, and lr 1e-2 moves it far
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
    t.cfg.guard = pass.clone();
    let theta0 = t.model.embed_tokens.val().into_data();
    let m1 = t.step().unwrap();
    assert!(m1.guard.is_none(), "{:?}", m1.guard);
    assert!(
        m1.grad_norm > 0.0,
        "step 1 must change the weights for this test to mean anything"
    );
    assert_ne!(t.model.embed_tokens.val().into_data(), theta0);

    t.cfg.guard = trip.clone();
    let m2 = t.step().unwrap();
    let ev = m2.guard.clone().expect("step 2 trips");
    assert!(ev.reason.contains("format-valid rate"), "{}", ev.reason);
    assert_eq!(ev.restored_step, Some(0));
    assert_eq!(ev.lr_scale, 0.5);
    assert_eq!(t.model.embed_tokens.val().into_data(), theta0);
    assert_eq!(
        (t.state.step, t.state.lr_scale, t.state.guard_trips),
        (2, 0.5, 1)
    );
    // The event is part of the logged metrics line.
    let line = serde_json::to_string(&m2).unwrap();
    assert!(line.contains("\"restored_step\":0"), "{line}");

    t.cfg.guard = pass;
    let m3 = t.step().unwrap();
    assert!(m3.guard.is_none());
    assert_eq!(m3.step, 3, "the step counter moves on after a rollback");
    assert_eq!(m3.lr, 0.5e-2);

    t.cfg.guard = trip;
    match t.step() {
        Err(TrainError::Collapsed { trips: 2, .. }) => {}
        other => panic!(
            "expected Collapsed after max_trips, got {:?}",
            other.map(|m| m.guard)
        ),
    }
}
