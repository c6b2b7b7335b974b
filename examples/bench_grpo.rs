//! One GRPO step without search, timed: sleuth's half of issue 12's benchmark 4c (the other
//! half is `scripts/reference/trl_grpo_step.py`, TRL's `GRPOTrainer`; `scripts/bench-grpo`
//! runs both and prints the ratio).
//!
//! `cargo run --release --example bench_grpo -- [--new-tokens 128] [--g 8] [--steps 2] …`
//! (`--help` lists the flags).
//!
//! What one step is: the default model (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, dequantized
//! to a trainable f32 `Llama<Train>` as `sleuth train` loads it) rolls out G samples of each
//! of 2 fixed questions through the default prompt template, decoding from the quantized engine
//! `sleuth train` uses by default (`[rollout] weights`, re-quantized at the start of every
//! step); each sample writes exactly `--new-tokens` tokens (`[rollout] fixed_length`: no
//! end-of-sequence or stop string ends it, so no search runs either); a toy reward (+1 for an
//! even number of characters, −1 otherwise) gives every group reward variance; then GRPO
//! advantages and one AdamW step over micro-batches as `sleuth train`'s defaults cut them.
//! No reference model (TRL's `beta = 0` loads none; `--track-kl` adds sleuth's default KL
//! logging, one reference forward per micro-batch).
//!
//! Timed: `--warmup` steps (default 1) run first and are not counted, then `--steps` steps
//! (default 2). Printed: one JSON line with the mean seconds of a timed step (`step_s`, wall
//! clock around [`Trainer::step`]), its rollout part (`rollout_s`: re-quantization, generation
//! and reward) and its update part (`update_s`: forward, backward and optimizer over the
//! micro-batches), the tokens generated per step, the process's peak RSS (`VmHWM`) and the
//! worker threads (rayon's pool, which `RAYON_NUM_THREADS` sets).
//!
//! `--prompts-out FILE` also writes the rendered prompts (text and token ids) as JSON, so the
//! TRL script can feed the same text.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use sleuth::env::{PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::{self, DecodeWeights};
use sleuth::reward::{RewardBreakdown, RewardFn};
use sleuth::rl::metrics::rss_peak_mib;
use sleuth::rl::Question;
use sleuth::rl::{Algo, StepMetrics, TrainConfig, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

/// The two fixed questions of the benchmark (the TRL script reads them from `--prompts-out`).
const QUESTIONS: [&str; 2] = [
    "Who wrote the novel Nineteen Eighty-Four?",
    "What is the capital city of Australia?",
];

/// Flags.
#[derive(Parser)]
#[command(about = "Time one GRPO step without search (issue 12, benchmark 4c).")]
struct Args {
    /// Model file (GGUF or Hugging Face directory).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Samples per question (G).
    #[arg(long, default_value_t = 8)]
    g: usize,
    /// Tokens every sample generates.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// AdamW learning rate (sleuth's default).
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    lr: f64,
    /// Weights rollouts decode from: q8_0 (sleuth train's default), q4_1, or f32.
    #[arg(long, default_value_t = DecodeWeights::default().name().to_string())]
    weights: String,
    /// Keep a frozen reference model and log KL, as `[train] track_kl = true` does.
    #[arg(long)]
    track_kl: bool,
    /// Sequences per forward/backward pass (`[train] micro_batch`). With G = 8 and the default
    /// shared prompt, 8 puts a whole group in one pass, so its prompt runs once.
    #[arg(long, default_value_t = TrainConfig::default().micro_batch)]
    micro_batch: usize,
    /// Run every sequence's prompt in the update (`[train] share_prompt = false`): the
    /// before/after switch for the shared-prompt forward.
    #[arg(long)]
    no_share_prompt: bool,
    /// Write the rendered prompts (`[{"question", "text", "ids"}]`) to this JSON file.
    #[arg(long)]
    prompts_out: Option<PathBuf>,
}

/// +1 for a solution with an even number of characters, −1 otherwise: an arbitrary rule that
/// splits samples about evenly, so every group has reward variance and trains.
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

/// Returns no passages (no sample searches anyway: stop strings end nothing here).
struct NoHits;
impl Retriever for NoHits {
    fn search(&self, _query: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(Vec::new())
    }
}

/// One step's figures.
struct Timed {
    step_s: f64,
    metrics: StepMetrics,
}

impl Timed {
    fn rollout_s(&self) -> f64 {
        let m = &self.metrics;
        m.seconds_quantize + m.seconds_rollout + m.seconds_reward
    }
    fn generated(&self) -> f64 {
        self.metrics.response_tokens_mean * self.metrics.episodes as f64
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // As the `sleuth` binary does.
    backend::retain_freed_memory();
    let device = backend::device();
    let loaded = model::load::<Train>(&args.model, &device)?;
    let prompt = PromptConfig::default();

    let prompts: Vec<serde_json::Value> = QUESTIONS
        .iter()
        .map(|q| {
            Ok(json!({
                "question": q,
                "text": prompt.render_for(&loaded.tokenizer, q)?,
                "ids": prompt.encode(&loaded.tokenizer, q)?,
            }))
        })
        .collect::<Result<_, sleuth::env::prompt::PromptError>>()?;
    if let Some(path) = &args.prompts_out {
        std::fs::write(path, serde_json::to_string(&prompts)?)?;
    }
    let prompt_tokens: Vec<usize> = prompts
        .iter()
        .map(|p| p["ids"].as_array().map_or(0, Vec::len))
        .collect();
    if args.warmup + args.steps == 0 {
        return Ok(());
    }

    let rollout = RolloutConfig {
        samples_per_question: args.g,
        max_new_tokens: args.new_tokens,
        max_searches: 0,
        fixed_length: true,
        weights: args.weights.parse()?,
        ..Default::default()
    };
    let train = TrainConfig {
        algo: Algo::Grpo,
        questions_per_step: QUESTIONS.len(),
        learning_rate: args.lr,
        track_kl: args.track_kl,
        micro_batch: args.micro_batch,
        share_prompt: !args.no_share_prompt,
        ..Default::default()
    };
    let questions = QUESTIONS
        .iter()
        .map(|q| Question {
            question: q.to_string(),
            ..Default::default()
        })
        .collect();
    let mut trainer = Trainer::new(
        loaded.model,
        loaded.config,
        sleuth::env::Env {
            tokenizer: loaded.tokenizer,
            retriever: std::sync::Arc::new(NoHits),
            prompt,
            rollout: rollout.clone(),
        },
        sleuth::reward::Rewards {
            rule: Box::new(EvenLength),
            step: Default::default(),
        },
        train.clone(),
        questions,
        device,
    )?;

    let mut timed = Vec::new();
    for i in 0..args.warmup + args.steps {
        let t0 = Instant::now();
        let metrics = trainer.step()?;
        let step = Timed {
            step_s: t0.elapsed().as_secs_f64(),
            metrics,
        };
        eprintln!(
            "step {} ({}): {:.2} s = rollout {:.2} s (quantize {:.2}) + update {:.2} s; {:.0} tokens generated, reward std {:.2}",
            i + 1,
            if i < args.warmup { "warm-up" } else { "timed" },
            step.step_s,
            step.rollout_s(),
            step.metrics.seconds_quantize,
            step.metrics.seconds_update,
            step.generated(),
            step.metrics.reward_std,
        );
        if i >= args.warmup {
            timed.push(step);
        }
    }

    let step_s = mean(timed.iter().map(|t| t.step_s));
    let generated = mean(timed.iter().map(Timed::generated));
    let samples = (QUESTIONS.len() * args.g) as f64;
    let line = json!({
        "system": "sleuth",
        "step_s": step_s,
        "rollout_s": mean(timed.iter().map(Timed::rollout_s)),
        "update_s": mean(timed.iter().map(|t| t.metrics.seconds_update)),
        "quantize_s": mean(timed.iter().map(|t| t.metrics.seconds_quantize)),
        "generated_tokens_per_step": generated,
        "tokens_per_sample_mean": generated / samples,
        "step_s_per_1k_generated_tokens": step_s / generated.max(1.0) * 1000.0,
        "peak_rss_mib": rss_peak_mib(),
        "threads": rayon::current_num_threads(),
        "steps_timed": timed.len(),
        "step_s_each": timed.iter().map(|t| t.step_s).collect::<Vec<_>>(),
        "prompts": QUESTIONS.len(),
        "g": args.g,
        "max_new_tokens": args.new_tokens,
        "prompt_tokens": prompt_tokens,
        "micro_batch": train.micro_batch,
        "micro_batch_tokens": train.micro_batch_tokens,
        "share_prompt": train.share_prompt,
        "lr": train.learning_rate,
        "track_kl": train.track_kl,
        "rollout_weights": rollout.weights.name(),
        "backend": backend::name(),
    });
    println!("{line}");
    Ok(())
}
