//! A curriculum as one resumable run: the `[[phase]]`s of a config, in order.
//!
//! R1-Searcher trains in stages (stage 1: learn to search; stage 2: learn to answer) and
//! DeepSeek-R1 puts a cold start (supervised fine-tuning on well-formed episodes) before RL.
//! Run by hand that is four or five commands whose outputs feed each other; a kill in the
//! middle leaves the user to work out where they were. Here a config lists the phases and
//! `sleuth train --config envs/curriculum.toml --out runs/NAME` runs them all:
//!
//! | kind | does | writes (under `runs/NAME/NN-name/`) |
//! |---|---|---|
//! | `collect` | cold-start episodes: scripted from real retrieval and gold support titles, or rejection-sampled from the current policy | `episodes.jsonl`, `stats.json` |
//! | `sft` | supervised fine-tuning on the latest `collect` phase's episodes | `checkpoint/` |
//! | `rl` | GRPO / Reinforce++ steps ([`crate::rl::Trainer`]) | `checkpoint/` |
//! | `eval` | greedy evaluation of the current policy on held-out sets | `eval-<set>.json` |
//!
//! Each phase starts from the weights the latest `sft`/`rl` phase before it ended with (the
//! config's model for the first), with a fresh optimizer; an `rl` phase's KL reference is its
//! starting policy. A phase overrides the base config with its own `train`, `rollout`,
//! `reward`, `prompt` and `data` tables (merged key by key), so for instance stage 2 can switch
//! the reward and raise the sampling temperature without repeating the rest.
//!
//! **One log, resumable.** Every step of every training phase is one line of
//! `runs/NAME/metrics.jsonl` carrying `"phase"` and a `"run_step"` that counts on across
//! phases. `curriculum.json` records the phases completed (written atomically after each).
//! With `--resume` a killed run skips completed phases, resumes the interrupted one from its
//! checkpoint (or restarts it when it had none, e.g. a `collect` or `eval` phase), and drops
//! the metrics lines past that checkpoint, so each step appears once. A completed phase's
//! checkpoint keeps its weights but not its optimizer moments
//! ([`checkpoint::drop_optimizer`]): 0.5 GB instead of 1.6 GB per phase for the 135M default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::config::{PhaseError, PhaseKind, PhaseSection, RunConfig};
use crate::env::Env;
use crate::eval::{
    compare, evaluate, format_p_value, read_outcomes, standard_error_points, EvalReport,
};
use crate::model::{Llama, LlamaConfig, Tokenizer};
use crate::qa::read_qa;
use crate::reward::AnswerRules;
use crate::rl::checkpoint::{self, CheckpointError};
use crate::rl::collect::CollectOptions;
use crate::rl::run::{line_step, run_steps, truncate_metrics, LoopOptions};
use crate::rl::sft::{read_examples, write_example, SftExample, SftTrainer};
use crate::rl::{Question, TrainError, Trainer};
use crate::search::Retriever;

/// Errors of a curriculum run.
#[derive(Debug, thiserror::Error)]
pub enum CurriculumError {
    /// A phase's overrides do not make a valid config.
    #[error(transparent)]
    Phase(#[from] PhaseError),
    /// Training, checkpoint or rollout failure inside a phase.
    #[error("phase {phase:?}: {source}")]
    Train {
        /// Phase name.
        phase: String,
        /// Cause.
        source: Box<TrainError>,
    },
    /// Reading data or writing a phase's output failed.
    #[error("phase {phase:?}: {source}")]
    Other {
        /// Phase name.
        phase: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Options of [`run_curriculum`] that come from the command line.
#[derive(Debug, Clone, Default)]
pub struct CurriculumOptions {
    /// Continue a killed run (skip completed phases, resume the interrupted one).
    pub resume: bool,
    /// Cap every `sft` / `rl` phase's step count (a smoke run, e.g. in CI).
    pub phase_steps: Option<usize>,
    /// Cap every `eval` and `collect` phase's question count.
    pub limit: Option<usize>,
    /// Print each metrics line to stdout even on a terminal.
    pub echo_json: bool,
    /// Stop, as if interrupted, once the run has taken this many training steps in all
    /// (`run_step`, counting every sft/rl phase); the interrupted phase is not marked
    /// completed and `resume` continues it. For tests and interruption drills.
    pub max_total_steps: Option<usize>,
}

/// Progress of a curriculum, `runs/NAME/curriculum.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    /// Names of completed phases, in order.
    pub completed: Vec<String>,
    /// Steps each completed training phase took (SFT may stop early on entropy).
    pub steps: Vec<(String, usize)>,
}

/// What an eval phase measured, per set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseEval {
    /// Phase name.
    pub phase: String,
    /// (set file name, report).
    pub reports: Vec<(String, EvalReport)>,
    /// The phase's folder, `runs/NAME/NN-phase`, where each set's
    /// `eval-<set>.trajectories.jsonl` lies ([`before_after`] pairs them).
    #[serde(default)]
    pub dir: PathBuf,
}

/// Runs the phases of `cfg` into `out` (see the module docs), starting from `base` (the
/// config's model, loaded by the caller on the autodiff backend) and searching with
/// `retriever`. Returns the eval phases' reports in order.
///
/// # Errors
/// [`CurriculumError`] naming the phase that failed.
pub fn run_curriculum<B: AutodiffBackend>(
    cfg: &RunConfig,
    base: (Llama<B>, LlamaConfig, Tokenizer),
    retriever: Arc<dyn Retriever>,
    out: &Path,
    opts: &CurriculumOptions,
    device: &B::Device,
) -> Result<Vec<PhaseEval>, CurriculumError> {
    cfg.check_phases()?;
    let (base_model, arch, tokenizer) = base;
    std::fs::create_dir_all(out).map_err(|e| top(Box::new(e)))?;
    let state_path = out.join("curriculum.json");
    let state: CurriculumState = if state_path.exists() {
        if !opts.resume {
            return Err(top(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                out.display()
            )
            .into()));
        }
        let text = std::fs::read_to_string(&state_path).map_err(|e| top(Box::new(e)))?;
        serde_json::from_str(&text)
            .map_err(|e| top(format!("{}: {e}", state_path.display()).into()))?
    } else {
        CurriculumState::default()
    };
    let mut run = Run {
        opts,
        base_model,
        arch,
        device,
        state_path,
        metrics_path: out.join("metrics.jsonl"),
        state,
        weights: None,
        episodes: None,
        run_steps_before: 0,
        evals: Vec::new(),
    };
    run.save_state()?;
    let split = check_question_sets(cfg).map_err(top)?;
    crate::atomic::write(
        &out.join("data-split.json"),
        serde_json::to_string_pretty(&split).expect("split record"),
    )
    .map_err(|e| top(Box::new(e)))?;

    for (i, p) in cfg.phase.iter().enumerate() {
        let phase_cfg = cfg.phase_config(p)?;
        let phase = Phase {
            // The environment of this phase: one tokenizer and one open index for all
            // phases, the phase's own prompt and rollout settings.
            env: Env {
                tokenizer: tokenizer.clone(),
                retriever: retriever.clone(),
                prompt: phase_cfg.prompt.clone(),
                rollout: phase_cfg.rollout.clone(),
            },
            dir: out.join(format!("{:02}-{}", i + 1, p.name)),
            done: run.state.completed.contains(&p.name),
            steps: opts.phase_steps.map_or(p.steps, |cap| p.steps.min(cap)),
            limit: match (p.limit, opts.limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            p,
            cfg: phase_cfg,
        };
        match p.kind {
            PhaseKind::Collect => run.collect(&phase)?,
            PhaseKind::Sft | PhaseKind::Rl => {
                if run.train(&phase)? == Flow::Interrupted {
                    return Ok(run.evals);
                }
            }
            PhaseKind::Eval => run.eval(&phase)?,
        }
    }
    Ok(run.evals)
}

/// The error of the run as a whole (before any phase).
fn top(source: Box<dyn std::error::Error + Send + Sync>) -> CurriculumError {
    CurriculumError::Other {
        phase: "(run)".into(),
        source,
    }
}

/// What a curriculum carries from phase to phase.
struct Run<'a, B: AutodiffBackend> {
    opts: &'a CurriculumOptions,
    /// The config's model, where a phase starts when no sft/rl phase ran before it.
    base_model: Llama<B>,
    arch: LlamaConfig,
    device: &'a B::Device,
    state_path: PathBuf,
    metrics_path: PathBuf,
    state: CurriculumState,
    /// Checkpoint folder of the latest sft/rl phase.
    weights: Option<PathBuf>,
    /// The latest collect phase's episodes.
    episodes: Option<PathBuf>,
    /// Optimizer steps of the phases before this one (the metrics' `run_step` offset).
    run_steps_before: usize,
    evals: Vec<PhaseEval>,
}

/// One phase as the run sees it.
struct Phase<'a> {
    p: &'a PhaseSection,
    /// The run's config with the phase's overrides merged in.
    cfg: RunConfig,
    env: Env,
    /// `NN-name` in the run folder.
    dir: PathBuf,
    /// Recorded as completed in `curriculum.json`.
    done: bool,
    /// Optimizer steps (`--phase-steps` applied).
    steps: usize,
    /// Questions per set (`--eval-limit` applied).
    limit: Option<usize>,
}

impl Phase<'_> {
    fn err(&self, source: Box<dyn std::error::Error + Send + Sync>) -> CurriculumError {
        CurriculumError::Other {
            phase: self.p.name.clone(),
            source,
        }
    }

    fn train_err(&self, source: TrainError) -> CurriculumError {
        CurriculumError::Train {
            phase: self.p.name.clone(),
            source: Box::new(source),
        }
    }
}

/// Whether the run goes on after a training phase.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Next,
    /// `max_total_steps` ran out inside the phase.
    Interrupted,
}

impl<B: AutodiffBackend> Run<'_, B> {
    fn save_state(&self) -> Result<(), CurriculumError> {
        crate::atomic::write(
            &self.state_path,
            serde_json::to_string_pretty(&self.state).expect("state"),
        )
        .map_err(|e| top(Box::new(e)))
    }

    fn complete(&mut self, name: &str) -> Result<(), CurriculumError> {
        self.state.completed.push(name.to_string());
        self.save_state()
    }

    /// The policy the phase starts from: the latest sft/rl phase's weights, or the base model.
    fn policy(&self, ph: &Phase) -> Result<Llama<B>, CurriculumError> {
        policy_at(self.weights.as_deref(), &self.base_model, self.device)
            .map_err(|e| ph.train_err(e.into()))
    }

    /// A collect phase: scripted or rejection-sampled episodes into `episodes.jsonl`.
    fn collect(&mut self, ph: &Phase) -> Result<(), CurriculumError> {
        let (p, dir) = (ph.p, &ph.dir);
        let file = dir.join("episodes.jsonl");
        if !ph.done {
            std::fs::create_dir_all(dir).map_err(|e| ph.err(Box::new(e)))?;
            eprintln!("[{}] collecting cold-start episodes", p.name);
            // Scripted episodes need only the tokenizer; sampling needs the policy.
            let model = if p.scripted {
                None
            } else {
                Some(self.policy(ph)?)
            };
            let stats = collect_phase(&ph.cfg, p, ph.limit, model.as_ref(), &ph.env, &file)
                .map_err(|e| ph.err(e))?;
            eprintln!("[{}] {stats}", p.name);
            std::fs::write(dir.join("stats.json"), &stats).map_err(|e| ph.err(Box::new(e)))?;
            self.complete(&p.name)?;
        }
        self.episodes = Some(file);
        Ok(())
    }

    /// An sft or rl phase: resumes inside the phase from its checkpoint, runs its steps, and
    /// hands its weights to the next phase (their optimizer moments dropped).
    fn train(&mut self, ph: &Phase) -> Result<Flow, CurriculumError> {
        let (p, dir, steps) = (ph.p, &ph.dir, ph.steps);
        let terr = |e| ph.train_err(e);
        if ph.done {
            self.run_steps_before += self
                .state
                .steps
                .iter()
                .find(|(n, _)| n == &p.name)
                .map_or(0, |(_, s)| *s);
            if checkpoint::exists(dir) {
                // A run from before finished phases dropped their moments.
                checkpoint::drop_optimizer(dir).map_err(|e| terr(e.into()))?;
                self.weights = Some(dir.clone());
            }
            return Ok(Flow::Next);
        }
        std::fs::create_dir_all(dir).map_err(|e| ph.err(Box::new(e)))?;
        let start = self.policy(ph)?;
        let budget = self
            .opts
            .max_total_steps
            .map_or(usize::MAX, |m| m.saturating_sub(self.run_steps_before));
        let interrupted = budget < steps;
        let loop_opts = LoopOptions {
            steps: steps.min(budget),
            checkpoint_every: ph.cfg.train.checkpoint_every,
            phase: Some(p.name.clone()),
            run_step_offset: Some(self.run_steps_before),
            echo_json: self.opts.echo_json,
        };
        let resumed = self.opts.resume && checkpoint::recover(dir).map_err(|e| terr(e.into()))?;
        let metrics_path = &self.metrics_path;
        let outcome = if p.kind == PhaseKind::Sft {
            let data_path = self
                .episodes
                .clone()
                .ok_or_else(|| ph.err("an sft phase needs a collect phase before it".into()))?;
            let data = read_examples(&data_path).map_err(|e| ph.err(Box::new(e)))?;
            let episodes_read = data.len();
            let mut sft = SftTrainer::new(
                start,
                self.arch.clone(),
                ph.cfg.train.clone(),
                data,
                self.device.clone(),
            )
            .map_err(terr)?;
            if resumed {
                sft.learner.resume_from(dir).map_err(terr)?;
            }
            truncate_phase_lines(metrics_path, &self.state, &p.name, sft.learner.state.step)
                .map_err(|e| terr(e.into()))?;
            eprintln!(
                "[{}] SFT from step {} to {steps} ({} episodes)",
                p.name, sft.learner.state.step, episodes_read
            );
            run_steps(&mut sft, dir, metrics_path, &loop_opts).map_err(terr)?
        } else {
            let mut data = ph.cfg.data.read_train().map_err(|e| ph.err(Box::new(e)))?;
            if let Some(n) = ph.limit {
                data.truncate(n);
            }
            let questions: Vec<Question> = data.into_iter().map(Question::from).collect();
            let mut trainer = Trainer::new(
                start,
                self.arch.clone(),
                ph.env.clone(),
                ph.cfg.reward.rewards(),
                ph.cfg.train.clone(),
                questions,
                self.device.clone(),
            )
            .map_err(terr)?;
            if resumed {
                trainer.resume_from(dir).map_err(terr)?;
            }
            truncate_phase_lines(
                metrics_path,
                &self.state,
                &p.name,
                trainer.learner.state.step,
            )
            .map_err(|e| terr(e.into()))?;
            eprintln!(
                "[{}] RL ({}, reward {}) from step {} to {steps}: {} questions × {}, T={}",
                p.name,
                ph.cfg.train.algo.as_str(),
                ph.cfg.reward.kind.as_str(),
                trainer.learner.state.step,
                ph.cfg.train.questions_per_step,
                ph.cfg.rollout.group_desc(),
                ph.cfg.rollout.temperature,
            );
            run_steps(&mut trainer, dir, metrics_path, &loop_opts).map_err(terr)?
        };
        if interrupted && !outcome.stopped_early {
            eprintln!(
                "[{}] interrupted at step {} (max_total_steps)",
                p.name, outcome.steps_done
            );
            return Ok(Flow::Interrupted);
        }
        self.run_steps_before += outcome.steps_done;
        self.state.steps.push((p.name.clone(), outcome.steps_done));
        self.complete(&p.name)?;
        if checkpoint::exists(dir) {
            // Completed: no phase resumes it, the next starts a fresh optimizer.
            let freed = checkpoint::drop_optimizer(dir).map_err(|e| terr(e.into()))?;
            if freed > 0 {
                eprintln!(
                    "[{}] done; kept the weights, dropped the optimizer moments ({:.1} GB)",
                    p.name,
                    freed as f64 / 1e9
                );
            }
            self.weights = Some(dir.clone());
        } // else a zero-step phase: the weights pass on unchanged.
        Ok(Flow::Next)
    }

    /// An eval phase: each set greedy, its report and trajectories written atomically; a set
    /// finished before a kill is kept on resume.
    fn eval(&mut self, ph: &Phase) -> Result<(), CurriculumError> {
        let (p, dir) = (ph.p, &ph.dir);
        let perr = |e: Box<dyn std::error::Error + Send + Sync>| ph.err(e);
        let mut reports = Vec::new();
        let mut model: Option<Llama<B>> = None; // loaded once, when a set needs it
        for set in &eval_sets(p, &ph.cfg) {
            let name = set
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "eval".into());
            let report_path = dir.join(format!("eval-{name}.json"));
            let mut examples = read_qa(set).map_err(|e| perr(Box::new(e)))?;
            if let Some(n) = ph.limit {
                examples.truncate(n);
            }
            // A set finished before a kill is kept on resume (its report is written
            // atomically after its trajectories), when it covered the same questions.
            let saved = if (ph.done || self.opts.resume) && report_path.exists() {
                let text = std::fs::read_to_string(&report_path).map_err(|e| perr(Box::new(e)))?;
                let r: EvalReport = serde_json::from_str(&text).map_err(|e| perr(Box::new(e)))?;
                (ph.done || r.n == examples.len()).then_some(r)
            } else {
                None
            };
            let report: EvalReport = if let Some(r) = saved {
                if !ph.done {
                    eprintln!("[{}] {name}: kept from before the resume", p.name);
                }
                r
            } else {
                std::fs::create_dir_all(dir).map_err(|e| perr(Box::new(e)))?;
                if model.is_none() {
                    model = Some(self.policy(ph)?);
                }
                let policy = model.as_ref().expect("loaded above").valid();
                let greedy_env = Env {
                    rollout: crate::env::RolloutConfig {
                        temperature: 0.0,
                        ..ph.cfg.rollout.clone()
                    },
                    ..ph.env.clone()
                };
                eprintln!(
                    "[{}] evaluating on {} questions of {}",
                    p.name,
                    examples.len(),
                    set.display()
                );
                let bar = crate::progress::bar(examples.len(), &format!("[{}] {name}", p.name));
                let mut tally = crate::eval::EvalTally::default();
                let engine = crate::model::Engine::new(&policy, greedy_env.rollout.weights);
                let (report, records) =
                    evaluate(&engine, &greedy_env, 0, &examples, p.batch, |rec| {
                        tally.add(rec);
                        bar.set_message(tally.line());
                        bar.inc(1);
                    })
                    .map_err(|e| perr(Box::new(e)))?;
                bar.finish_and_clear();
                let traj: String = records
                    .iter()
                    .map(|r| serde_json::to_string(r).expect("record") + "\n")
                    .collect();
                crate::atomic::write(&dir.join(format!("eval-{name}.trajectories.jsonl")), &traj)
                    .map_err(|e| perr(Box::new(e)))?;
                crate::atomic::write(
                    &report_path,
                    serde_json::to_string_pretty(&report).expect("report"),
                )
                .map_err(|e| perr(Box::new(e)))?;
                report
            };
            eprintln!("[{}] {name}: {}", p.name, eval_line(&report));
            reports.push((name, report));
        }
        if !ph.done {
            self.complete(&p.name)?;
        }
        self.evals.push(PhaseEval {
            phase: p.name.clone(),
            reports,
            dir: dir.clone(),
        });
        Ok(())
    }
}

/// `cover-EM 20.0 ± 4.0 EM 18.0 F1 24.8 format-valid 96.0% searches 1.00 ≥2 searches 12.0%
/// (n=100, 61 s)`; ± is one standard error ([`standard_error_points`]).
pub fn eval_line(r: &EvalReport) -> String {
    format!(
        "cover-EM {:.1} ± {:.1} EM {:.1} F1 {:.1} format-valid {:.1}% searches {:.2} ≥2 searches {:.1}% (n={}, {:.0} s)",
        r.cover_em, standard_error_points(r.cover_em, r.n), r.em, r.f1, r.format_ok_rate,
        r.searches_mean, r.multi_search_rate, r.n, r.seconds
    )
}

/// The before/after lines: for each set, the first eval phase against the last, e.g.
/// `hotpotqa_500: eval-a cover-EM 15.0 ± 3.6 → eval-b 12.0 ± 3.2 (n=100; gained 7, lost 10,
/// McNemar p = 0.63); F1 …; format-valid …; searches …; ≥2 searches …`: each cover-EM ± one
/// standard error, and the questions gained and lost between the two, paired question by
/// question, with McNemar's exact p ([`crate::eval::compare()`]).
///
/// The pairing reads the `eval-<set>.trajectories.jsonl` each eval phase writes beside its
/// report, rather than a per-question list stored in [`EvalReport`]: the trajectories already
/// hold every question's outcome with the idx and question text that pairing needs (a bare
/// list of booleans could only pair by position, wrong once two phases evaluate different
/// `limit`s), the report stays an aggregate, and runs made before this change compare too.
/// When a file is missing or the sets do not pair, the line says so and keeps the rest.
pub fn before_after(evals: &[PhaseEval]) -> Vec<String> {
    let (Some(first), Some(last)) = (evals.first(), evals.last()) else {
        return Vec::new();
    };
    if evals.len() < 2 {
        return Vec::new();
    }
    first
        .reports
        .iter()
        .filter_map(|(set, before)| {
            let after = &last.reports.iter().find(|(s, _)| s == set)?.1;
            Some(format!(
                "{set}: {} cover-EM {:.1} ± {:.1} → {} {:.1} ± {:.1} ({}); F1 {:.1} → {:.1}; format-valid {:.1}% → {:.1}%; searches {:.2} → {:.2}; ≥2 searches {:.1}% → {:.1}%",
                first.phase, before.cover_em, standard_error_points(before.cover_em, before.n),
                last.phase, after.cover_em, standard_error_points(after.cover_em, after.n),
                paired_cover_em(first, last, set), before.f1, after.f1,
                before.format_ok_rate, after.format_ok_rate, before.searches_mean,
                after.searches_mean, before.multi_search_rate, after.multi_search_rate
            ))
        })
        .collect()
}

/// What one phase trains or evaluates on, as recorded in `runs/NAME/data-split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseQuestions {
    /// Phase name.
    pub phase: String,
    /// Phase kind.
    pub kind: PhaseKind,
    /// The files read (`[data] train` for collect / rl, the sets for eval).
    pub files: Vec<PathBuf>,
    /// `[data] part`, when the phase reads one part of `[data.split]`.
    pub part: Option<String>,
    /// Questions selected (before any `limit`).
    pub questions: usize,
}

/// The record of which questions each phase uses, `runs/NAME/data-split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The base config's `[data.split]`.
    pub split: crate::qa::QaSplit,
    /// One entry per collect, rl and eval phase, in order.
    pub phases: Vec<PhaseQuestions>,
}

/// Reads the questions of every collect, rl and eval phase and refuses a curriculum that would
/// train twice on one question or train on an evaluation question:
/// - no question of a `collect` phase (cold-start episodes, scripted or rejection-sampled) is
///   a question of an `rl` phase, so RL's gains on its training questions are not recall of
///   answers the cold start memorised (docs/learning.md round 4 trained both on the same 100);
/// - no training question (collect or rl) is a question of an `eval` phase's sets.
///
/// Questions match by [`crate::qa::question_key`] (case and punctuation ignored), over the
/// whole files (`limit` is not applied). Returns the record written to `data-split.json`.
///
/// # Errors
/// A sentence naming the two phases and one shared question; a file that cannot be read.
pub fn check_question_sets(
    cfg: &RunConfig,
) -> Result<SplitRecord, Box<dyn std::error::Error + Send + Sync>> {
    use std::collections::HashMap;
    let mut phases = Vec::new();
    // question key → (phase name, kind) of the first training phase that uses it.
    let mut collect_keys: HashMap<String, String> = HashMap::new();
    let mut rl_keys: HashMap<String, String> = HashMap::new();
    let mut eval_keys: HashMap<String, String> = HashMap::new();
    for p in &cfg.phase {
        let pc = cfg.phase_config(p)?;
        let (files, questions) = match p.kind {
            PhaseKind::Collect | PhaseKind::Rl => (pc.data.train.clone(), pc.data.read_train()?),
            PhaseKind::Eval => {
                let sets = eval_sets(p, &pc);
                let mut qs = Vec::new();
                for set in &sets {
                    qs.extend(read_qa(set)?);
                }
                (sets, qs)
            }
            PhaseKind::Sft => continue,
        };
        let target = match p.kind {
            PhaseKind::Collect => &mut collect_keys,
            PhaseKind::Rl => &mut rl_keys,
            _ => &mut eval_keys,
        };
        for q in &questions {
            target
                .entry(crate::qa::question_key(&q.question))
                .or_insert_with(|| p.name.clone());
        }
        phases.push(PhaseQuestions {
            phase: p.name.clone(),
            kind: p.kind,
            files,
            part: (p.kind != PhaseKind::Eval)
                .then(|| pc.data.part.clone())
                .flatten(),
            questions: questions.len(),
        });
    }
    let clash = |a: &HashMap<String, String>, b: &HashMap<String, String>, what: &str| {
        let mut shared: Vec<(&String, &String, &String)> = a
            .iter()
            .filter_map(|(k, pa)| b.get(k).map(|pb| (k, pa, pb)))
            .collect();
        shared.sort();
        match shared.first() {
            None => Ok(()),
            Some((k, pa, pb)) => Err(format!(
                "phases {pa:?} and {pb:?} share {} question(s) ({what}), e.g. {k:?}: give them \
                 different parts of [data.split] (`data = {{ part = \"…\" }}`) or other files",
                shared.len()
            )),
        }
    };
    clash(
        &collect_keys,
        &rl_keys,
        "a cold-start question must not be an RL question",
    )?;
    clash(
        &collect_keys,
        &eval_keys,
        "never train on an evaluation question",
    )?;
    clash(
        &rl_keys,
        &eval_keys,
        "never train on an evaluation question",
    )?;
    Ok(SplitRecord {
        split: cfg.data.split.clone(),
        phases,
    })
}

/// `n=100; gained 7, lost 10, McNemar p = 0.63` for cover-EM between two eval phases' `set`,
/// or `no paired test: <why>`.
fn paired_cover_em(first: &PhaseEval, last: &PhaseEval, set: &str) -> String {
    let read = |p: &PhaseEval| {
        let file = p.dir.join(format!("eval-{set}.trajectories.jsonl"));
        read_outcomes(&file, AnswerRules::default()).map_err(|e| e.to_string())
    };
    let compared = read(first).and_then(|a| {
        let b = read(last)?;
        compare(&a, &b).map_err(|e| e.to_string())
    });
    match compared {
        Ok(c) => {
            let unpaired = if c.only_a + c.only_b > 0 {
                format!(
                    ", {} only in {}, {} only in {}",
                    c.only_a, first.phase, c.only_b, last.phase
                )
            } else {
                String::new()
            };
            format!(
                "n={}{unpaired}; gained {}, lost {}, McNemar p = {}",
                c.n,
                c.cover_em.gained,
                c.cover_em.lost,
                format_p_value(c.cover_em.p_value)
            )
        }
        Err(e) => format!("no paired test: {e}"),
    }
}

/// The QA files an eval phase evaluates: its `sets`, or its config's `[data] eval` when it
/// names none.
fn eval_sets(p: &PhaseSection, phase_cfg: &RunConfig) -> Vec<PathBuf> {
    if p.sets.is_empty() {
        vec![phase_cfg.data.eval.clone()]
    } else {
        p.sets.clone()
    }
}

/// Drops the run's metrics lines that a resumed phase `phase` will write again: its lines past
/// `step`, and any line of a phase not yet completed.
fn truncate_phase_lines(
    path: &Path,
    state: &CurriculumState,
    phase: &str,
    step: usize,
) -> Result<(), CheckpointError> {
    truncate_metrics(path, |v| match v.get("phase").and_then(|p| p.as_str()) {
        Some(p) if state.completed.iter().any(|c| c == p) => true,
        Some(p) if p == phase => line_step(v) <= step,
        _ => false,
    })
}

/// The policy a phase starts from: the weights of the checkpoint in `weights` (the latest
/// sft/rl phase), or the config's model when no such phase ran yet.
fn policy_at<B: AutodiffBackend>(
    weights: Option<&Path>,
    base: &Llama<B>,
    device: &B::Device,
) -> Result<Llama<B>, CheckpointError> {
    match weights {
        Some(w) => checkpoint::load_model(w, base.clone(), device),
        None => Ok(base.clone()),
    }
}

/// Runs a collect phase into `file` (atomically); returns the stats as JSON text.
fn collect_phase<B: AutodiffBackend>(
    cfg: &RunConfig,
    p: &PhaseSection,
    limit: Option<usize>,
    model: Option<&Llama<B>>,
    env: &Env,
    file: &Path,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut data = cfg.data.read_train()?;
    if let Some(n) = limit {
        data.truncate(n);
    }
    let questions: Vec<Question> = data.into_iter().map(Question::from).collect();
    let mut kept: Vec<SftExample> = Vec::new();
    let stats = if p.scripted {
        serde_json::to_string(&crate::rl::collect::scripted(
            env,
            &Default::default(),
            &questions,
            p.min_searches,
            cfg.train.seed,
            |ex: &SftExample| kept.push(ex.clone()),
        )?)?
    } else {
        let model = model.expect("a sampling collect phase is given the policy");
        let policy = model.valid();
        let engine = crate::model::Engine::new(&policy, cfg.rollout.weights);
        let opts = CollectOptions {
            batch: p.batch,
            require_correct: true,
            min_searches: p.min_searches,
            seed: cfg.train.seed,
        };
        serde_json::to_string(&crate::rl::collect::collect(
            &engine,
            env,
            &questions,
            &opts,
            |ex: &SftExample| kept.push(ex.clone()),
        )?)?
    };
    crate::atomic::write_with(file, |w| {
        kept.iter().try_for_each(|ex| write_example(w, ex))
    })?;
    Ok(stats)
}
