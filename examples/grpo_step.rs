//! One GRPO step, spelled out on a tiny random-weight policy.
//!
//! `cargo run --release --example grpo_step`
//!
//! Needs the default model's tokenizer (`bash scripts/setup`); the policy itself is a tiny
//! random Llama of that vocabulary, so a step takes seconds. What [`Trainer::step`] does:
//!
//! 1. draw `questions_per_step` questions and roll out G samples of each (the rollout
//!    environment searches whenever a sample closes a query);
//! 2. score every episode with the [`RewardFn`] (here a toy reward, see below);
//! 3. GRPO advantages: each reward minus its group's mean, over the group's std
//!    (DeepSeekMath, Shao et al. 2024);
//! 4. the clipped surrogate loss over mask-1 tokens only (inserted documents are masked out),
//!    gradients accumulated over micro-batches, global-norm clip, one AdamW update.
//!
//! The returned [`StepMetrics`] are the line `sleuth train` appends to `metrics.jsonl`.

use std::path::Path;
use std::sync::Arc;

use sleuth::env::{Env, PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::{gguf::GgufFile, Llama, LlamaConfig, Tokenizer};
use sleuth::reward::{RewardBreakdown, RewardFn, Rewards};
use sleuth::rl::Question;
use sleuth::rl::{Algo, TrainConfig, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

/// A toy reward: +1 for solutions with an even number of characters, −1 otherwise — an
/// arbitrary rule that splits a random policy's samples about evenly. Any rule works as long
/// as a group's rewards differ: GRPO needs reward *variance* (equal rewards give zero
/// advantages, and the step skips its update).
struct EvenLength;
impl RewardFn for EvenLength {
    fn score(&self, solution: &str, _golds: &[String]) -> RewardBreakdown {
        let total = if solution.chars().count().is_multiple_of(2) {
            1.0
        } else {
            -1.0
        };
        RewardBreakdown {
            total,
            answer: total,
            ..Default::default()
        }
    }
    fn name(&self) -> &'static str {
        "even-length"
    }
}

/// A retriever with one passage, so a sample that happens to write a query gets documents.
struct OnePassage;
impl Retriever for OnePassage {
    fn search(&self, _query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(vec![Hit {
            id: "1".into(),
            title: "Arrowhead Stadium".into(),
            text: "Arrowhead Stadium is home of the Kansas City Chiefs.".into(),
            score: 1.0,
        }])
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(Path::new(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ))?)?;
    let device = backend::device();
    <Train as burn::tensor::backend::Backend>::seed(&device, 0);
    let arch = LlamaConfig::tiny(tokenizer.vocab_size());
    let policy = Llama::<Train>::random(&arch, &device);

    let questions = ["Tell me a story.", "What is a cat?"]
        .iter()
        .map(|q| Question {
            question: q.to_string(),
            ..Default::default()
        })
        .collect();
    let rollout = RolloutConfig {
        samples_per_question: 4, // G
        max_new_tokens: 16,
        ..Default::default()
    };
    let train = TrainConfig {
        algo: Algo::Grpo,
        questions_per_step: 2,
        learning_rate: 1e-3,
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        policy,
        arch,
        // The environment: what the policy's queries search and how episodes are sampled.
        Env {
            tokenizer,
            retriever: Arc::new(OnePassage),
            prompt: PromptConfig::default(),
            rollout,
        },
        // What an episode is paid: the toy rule, no step-level retrieval reward.
        Rewards {
            rule: Box::new(EvenLength),
            step: Default::default(),
        },
        train,
        questions,
        device,
    )?;
    for _ in 0..2 {
        let m = trainer.step()?;
        println!(
            "step {}: reward {:+.2} ± {:.2}, entropy {:.2} nats/token (0 when no group varied), {} groups kept of {}, rollout {:.1} s, update {:.1} s",
            m.step,
            m.reward_mean,
            m.reward_std,
            m.entropy.unwrap_or(0.0),
            m.groups_kept,
            m.groups_sampled,
            m.seconds_rollout,
            m.seconds_update
        );
    }
    Ok(())
}
