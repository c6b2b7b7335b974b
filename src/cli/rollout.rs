//! `sleuth rollout`: the search agent on one question, trajectories printed readably (or
//! as JSON lines) with each search, the prediction and the rollout's timing.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::load_policy;
use sleuth::config::RunConfig;
use sleuth::env::rollout;
use sleuth::model::backend::{self, Inference};
use sleuth::model::{Engine, Sampler};

/// Flags of `sleuth rollout`.
#[derive(Args)]
pub struct RolloutArgs {
    /// Env config (model, search, prompt, rollout settings).
    #[arg(long)]
    pub config: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long, conflicts_with = "checkpoint")]
    pub lora: Option<PathBuf>,
    /// The question to answer.
    #[arg(long)]
    pub question: String,
    /// Samples to draw (default: the config's samples_per_question).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Sampling temperature (default: the config's).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Load policy weights from this run's checkpoint.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Print each trajectory as one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sleuth rollout`: samples trajectories for one question and prints them.
pub fn run_rollout(a: RolloutArgs) -> Result<()> {
    let mut cfg = RunConfig::load(&a.config)?;
    super::lora_flag(&mut cfg, a.lora.as_deref());
    if let Some(s) = a.samples {
        cfg.rollout.samples_per_question = s;
    }
    if let Some(t) = a.temperature {
        cfg.rollout.temperature = t;
    }
    let device = backend::device();
    let m = load_policy::<Inference>(&cfg, a.checkpoint.as_deref(), &device)?;
    let env = super::env_for(&cfg, m.tokenizer.clone())?;
    let mut sampler = Sampler::new(cfg.rollout.sampling(a.seed));
    let engine = Engine::new(&m.model, cfg.rollout.weights);
    let (episodes, stats) = rollout(
        &engine,
        &env,
        std::slice::from_ref(&a.question),
        &mut sampler,
    )?;
    let reward = cfg.reward.build();
    for (i, ep) in episodes.iter().enumerate() {
        let r = reward.score(&ep.solution, &[]);
        if a.json {
            println!(
                "{}",
                serde_json::json!({"sample": i, "episode": ep, "format_ok": r.format_ok, "prediction": r.prediction})
            );
            continue;
        }
        println!(
            "=== sample {i}: {:?}, {} searches, {} policy tokens / {} total, format_ok={} ===",
            ep.end,
            ep.searches.len(),
            ep.policy_tokens(),
            ep.tokens.len(),
            r.format_ok
        );
        println!("Assistant: <think>{}", ep.solution);
        for s in &ep.searches {
            println!(
                "  [search] {:?} -> {} passages{}",
                s.query,
                s.documents.len(),
                s.error
                    .as_ref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
        }
        println!("  [prediction] {:?}", r.prediction);
    }
    eprintln!(
        "[rollout {:.1}s: generate {:.1}s, search {:.2}s; {} tokens sampled, {:.1} tok/s]",
        stats.seconds_total,
        stats.seconds_generate,
        stats.seconds_search,
        stats.sampled_tokens,
        stats.sampled_tokens as f64 / stats.seconds_generate.max(1e-9)
    );
    Ok(())
}
