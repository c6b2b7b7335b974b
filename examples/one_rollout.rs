//! Run the search agent on one question and read its trajectory.
//!
//! `cargo run --release --example one_rollout [-- "QUESTION"]`
//!
//! Needs `bash scripts/setup` (the default SmolLM2-135M-Instruct policy in `models/` and the
//! BM25 index in `index/wiki`). The env config `envs/stage1.toml` supplies the prompt (with
//! one worked demonstration episode, without which the untrained 135M model never writes a
//! query), the rollout settings and the search backend.
//!
//! The rollout loop (DESIGN §2): all G samples decode in lock-step; a row that closes
//! `<|end_of_query|>` pauses, its query is searched, and the top-k passages are inserted as a
//! `<|begin_of_documents|> … <|end_of_documents|>` block whose tokens carry loss mask 0; the
//! row then resumes. At most `max_searches` searches per episode.

use std::path::Path;

use sleuth::config::RunConfig;
use sleuth::env::{rollout, Env};
use sleuth::model::backend::{self, Inference};
use sleuth::model::{load_gguf, Sampler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Which stadium do the Kansas City Chiefs play in?".into());
    let mut cfg = RunConfig::load(Path::new("envs/stage1.toml"))?;
    cfg.rollout.samples_per_question = 2;
    cfg.rollout.max_new_tokens = 160;

    let device = backend::device();
    let policy = load_gguf::<Inference>(&cfg.model.path, &device)?;
    // The environment the policy acts in: its tokenizer, what its queries search, the prompt
    // template and the rollout settings.
    let env = Env {
        tokenizer: policy.tokenizer.clone(),
        retriever: cfg.search.open()?.into(),
        prompt: cfg.prompt.clone(),
        rollout: cfg.rollout.clone(),
    };
    let mut sampler = Sampler::new(cfg.rollout.sampling(0));
    let (episodes, stats) = rollout(
        &policy.model,
        &env,
        std::slice::from_ref(&question),
        &mut sampler,
    )?;

    let reward = cfg.reward.kind.build();
    for (i, ep) in episodes.iter().enumerate() {
        let r = reward.score(&ep.solution, &[]);
        println!(
            "=== sample {i}: {:?}, {} searches ===",
            ep.end,
            ep.searches.len()
        );
        println!("{}", ep.solution);
        for s in &ep.searches {
            println!("  [search] {:?} -> {:?}", s.query, s.titles);
        }
        println!(
            "  [format ok: {}] [prediction: {:?}] [{} policy tokens of {} in the sequence]",
            r.format_ok,
            r.prediction,
            ep.policy_tokens(),
            ep.tokens.len()
        );
    }
    println!(
        "\nrollout {:.1} s (generate {:.1} s, search {:.3} s), {} tokens sampled",
        stats.seconds_total, stats.seconds_generate, stats.seconds_search, stats.sampled_tokens
    );
    Ok(())
}
