//! `sleuth train` (one RL stage, or a curriculum config's `[[phase]]`s as one run) and
//! `sleuth sft`. Both drive the library run loop [`sleuth::rl::run::run_steps`], which owns
//! the metrics file, checkpoint cadence, resume truncation and the progress line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{load_model, load_policy, open_search};
use sleuth::atomic::write as write_atomic;
use sleuth::config::RunConfig;
use sleuth::model::backend::{self, Inference, Train};
use sleuth::model::fused::Precision;
use sleuth::rl::Question;
use sleuth::rl::{run, Trainer};
use sleuth::search::Retriever;

/// Flags of `sleuth train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Env config (envs/stage1.toml, envs/stage2.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long, conflicts_with = "init")]
    pub lora: Option<PathBuf>,
    /// Optimizer steps to reach (a resumed run continues up to this step count). Required
    /// for a single-phase config; a curriculum config (`[[phase]]`s) runs each phase's steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run directory: metrics.jsonl and checkpoint/ go here (a curriculum: one folder per
    /// phase, curriculum.json, and one metrics.jsonl for all phases).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the run directory's last checkpoint (a curriculum: skip completed
    /// phases and resume the interrupted one); starts fresh when there is none.
    #[arg(long)]
    pub resume: bool,
    /// Use at most this many training questions (the first N of the file).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Curriculum only: cap every sft/rl phase at this many steps (a short smoke run).
    #[arg(long)]
    pub phase_steps: Option<usize>,
    /// Curriculum only: cap every eval and collect phase at this many questions per set.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Print each metrics line to stdout even on a terminal (always printed when stdout is
    /// not a terminal; always appended to metrics.jsonl).
    #[arg(long)]
    pub json: bool,
    /// Start from the weights of this run's checkpoint (e.g. an `sleuth sft` run) instead of
    /// the config's model file; optimizer and progress start fresh.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Precision of the training forward and backward products: f32, or bf16 on AMX tiles
    /// where the CPU has them (overrides `[train] precision`; f32 where AMX is missing).
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// Flags of `sleuth sft`.
#[derive(Args)]
pub struct SftArgs {
    /// Env config naming the model ([model].path) and optimizer settings ([train]:
    /// learning_rate, micro_batch, grad_clip, warmup_steps, seed; questions_per_step = sequences per step).
    #[arg(long)]
    pub config: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Trajectories JSONL written by `sleuth collect`.
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: metrics.jsonl and checkpoint/ go here.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps to reach.
    #[arg(long)]
    pub steps: usize,
    /// Learning rate (overrides the config's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Stop once the policy entropy (nats per policy token) falls below this, so the cold
    /// start leaves sampling variance for RL (overrides `[train] sft_stop_entropy`; 0 = never).
    #[arg(long)]
    pub stop_entropy: Option<f64>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print each metrics line to stdout even on a terminal.
    #[arg(long)]
    pub json: bool,
    /// Precision of the training forward and backward products: f32, or bf16 on AMX tiles
    /// where the CPU has them (overrides `[train] precision`; f32 where AMX is missing).
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// `sleuth train`: one RL stage for `--steps` steps, or the curriculum when the config has
/// `[[phase]]`s; resumable with `--resume`.
pub fn run_train(a: TrainArgs) -> Result<()> {
    let mut cfg = RunConfig::load(&a.config)?;
    super::lora_flag(&mut cfg, a.lora.as_deref());
    if let Some(p) = a.precision {
        cfg.train.precision = p;
    }
    super::require_local(&cfg)?;
    let device = backend::device();
    if !cfg.phase.is_empty() {
        return run_curriculum(a, cfg, device);
    }
    let Some(steps) = a.steps else {
        bail!(
            "--steps is required: {} has no [[phase]]s (a curriculum config runs each phase's own steps)",
            a.config.display()
        );
    };
    let m = load_policy::<Train>(&cfg, a.init.as_deref(), &device)?;
    let env = super::env_for(&cfg, m.tokenizer)?;
    let mut data = cfg.data.read_train()?;
    if let Some(n) = a.limit {
        data.truncate(n);
    }
    let questions = data.into_iter().map(Question::from).collect();
    let mut trainer = Trainer::new(
        m.model,
        m.config,
        env,
        cfg.reward.rewards(),
        cfg.train.clone(),
        questions,
        device,
    )?;
    let restored = run::prepare_dir(&a.out, a.resume, |dir| {
        trainer.resume_from(dir)?;
        Ok(trainer.learner.state.step)
    })?;
    if restored {
        eprintln!(
            "resumed {} at step {}",
            a.out.display(),
            trainer.learner.state.step
        );
    } else if a.resume {
        eprintln!("no checkpoint in {}; starting fresh", a.out.display());
    }
    write_atomic(&a.out.join("config.toml"), toml::to_string(&cfg)?)?;
    eprintln!(
        "training {} ({} backend, {} products, {}, {}): {} questions × {} per step, ≤{} new tokens, algo {}",
        cfg.model.path.display(),
        backend::name(),
        trainer.learner.model.precision().as_str(),
        trainer.learner.trained_weights(),
        cfg.rollout.engine_desc(),
        cfg.train.questions_per_step,
        cfg.rollout.group_desc(),
        cfg.rollout.max_new_tokens,
        cfg.train.algo.as_str()
    );
    let opts = run::LoopOptions {
        steps,
        checkpoint_every: cfg.train.checkpoint_every,
        echo_json: a.json,
        ..Default::default()
    };
    run::run_steps(&mut trainer, &a.out, &a.out.join("metrics.jsonl"), &opts)?;
    Ok(())
}

/// `sleuth train` on a config with `[[phase]]`s: the whole curriculum as one run.
fn run_curriculum(
    a: TrainArgs,
    cfg: RunConfig,
    device: burn::tensor::Device<Inference>,
) -> Result<()> {
    if a.init.is_some() || a.limit.is_some() || a.steps.is_some() {
        bail!(
            "{} is a curriculum ([[phase]]s): --steps, --limit and --init do not apply; use --phase-steps / --eval-limit to shorten it",
            a.config.display()
        );
    }
    let m = load_policy::<Train>(&cfg, None, &device)?;
    let retriever: std::sync::Arc<dyn Retriever> = std::sync::Arc::from(open_search(&cfg)?);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_atomic(&a.out.join("config.toml"), toml::to_string(&cfg)?)?;
    let names: Vec<&str> = cfg.phase.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "curriculum {} ({} backend, {}): phases {}",
        a.config.display(),
        backend::name(),
        cfg.rollout.engine_desc(),
        names.join(" → ")
    );
    let t0 = std::time::Instant::now();
    let opts = sleuth::curriculum::CurriculumOptions {
        resume: a.resume,
        phase_steps: a.phase_steps,
        limit: a.eval_limit,
        echo_json: a.json,
        max_total_steps: None,
    };
    let evals = sleuth::curriculum::run_curriculum(
        &cfg,
        (m.model, m.config, m.tokenizer),
        retriever,
        &a.out,
        &opts,
        &device,
    )?;
    for line in sleuth::curriculum::before_after(&evals) {
        println!("{line}");
    }
    eprintln!(
        "curriculum finished in {:.0} s; metrics in {}",
        t0.elapsed().as_secs_f64(),
        a.out.join("metrics.jsonl").display()
    );
    Ok(())
}

/// `sleuth sft`: supervised fine-tuning on `collect` output, loss on policy tokens only,
/// stopping early on the entropy rule.
pub fn run_sft(a: SftArgs) -> Result<()> {
    let mut cfg = RunConfig::load(&a.config)?;
    super::lora_flag(&mut cfg, a.lora.as_deref());
    super::require_local(&cfg)?;
    let device = backend::device();
    let m = load_model::<Train>(&cfg.model.path, cfg.model.lora.as_deref(), &device)?;
    let data = sleuth::rl::sft::read_examples(&a.data)?;
    if let Some(lr) = a.lr {
        cfg.train.learning_rate = lr;
    }
    if let Some(e) = a.stop_entropy {
        cfg.train.sft_stop_entropy = e;
    }
    if let Some(p) = a.precision {
        cfg.train.precision = p;
    }
    let mut sft =
        sleuth::rl::sft::SftTrainer::new(m.model, m.config, cfg.train.clone(), data, device)?;
    if run::prepare_dir(&a.out, a.resume, |dir| {
        sft.learner.resume_from(dir)?;
        Ok(sft.learner.state.step)
    })? {
        eprintln!(
            "resumed {} at step {}",
            a.out.display(),
            sft.learner.state.step
        );
    }
    eprintln!(
        "sft {}: {}",
        cfg.model.path.display(),
        sft.learner.trained_weights()
    );
    // The run names its base model (tokenizer, architecture) for `export`, with the
    // overrides above applied.
    write_atomic(&a.out.join("config.toml"), toml::to_string(&cfg)?)?;
    let opts = run::LoopOptions {
        steps: a.steps,
        checkpoint_every: cfg.train.checkpoint_every,
        echo_json: a.json,
        ..Default::default()
    };
    let out = run::run_steps(&mut sft, &a.out, &a.out.join("metrics.jsonl"), &opts)?;
    if out.stopped_early {
        eprintln!(
            "stopped at step {}: policy entropy fell below sft_stop_entropy {}",
            out.steps_done, sft.learner.cfg.sft_stop_entropy
        );
    }
    Ok(())
}
