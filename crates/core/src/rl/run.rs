//! The run loop shared by `sleuth train`, `sleuth sft` and every training phase of a
//! curriculum: step, log, checkpoint, resume.
//!
//! A [`Steps`] value is anything that takes optimizer steps and can checkpoint itself (the RL
//! [`super::Trainer`], the [`super::sft::SftTrainer`]). [`run_steps`] drives it to a target
//! step count and owns everything around the steps, stated once here rather than in each
//! command: the `metrics.jsonl` line per step (written and flushed before the checkpoint, so a
//! kill between the two loses at most the step in flight), the checkpoint cadence (every
//! `checkpoint_every` steps, at the last step and when the run stops early), the progress line
//! on a terminal, and echoing JSON to stdout when stdout is not a terminal (or when asked).
//!
//! **Checkpoints off the critical path.** A checkpoint is copied out of the trainer between
//! steps and written by a writer thread while the next step runs; the loop waits for it
//! before the next checkpoint and before returning, so at most one is in flight and the last
//! one is on disk when the loop ends. The write itself is [`checkpoint`]'s atomic protocol,
//! so a kill during it leaves the previous checkpoint, as a kill during a blocking write
//! did; a failed write (a full disk) stops the run at the next checkpoint or at the end,
//! one step later than a blocking write would. The loop waits for the write before appending
//! the next step's metrics line, so `metrics.jsonl` is never more than one line past the
//! checkpoint on disk.
//!
//! **Resume.** [`truncate_metrics`] drops the lines a resumed run will write again (those past
//! the checkpoint's step), atomically, so a killed-and-resumed run's `metrics.jsonl` has each
//! step exactly once.

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use burn::tensor::backend::AutodiffBackend;

use super::checkpoint::{self, CheckpointError};
use super::metrics::StepMetrics;
use super::sft::{SftMetrics, SftTrainer};
use super::{TrainError, Trainer};

/// A checkpoint taken but not yet written (see [`Steps::checkpoint`]).
pub type PendingSave = Box<dyn FnOnce() -> Result<(), TrainError> + Send>;

/// The checkpoint write in flight: at most one, on its own thread, so that writing step `n`'s
/// checkpoint (about 5 s for the 135M default's 1.6 GB) overlaps step `n + 1` instead of
/// adding to it. Dropping it waits for the write (an error then is logged, not lost silently).
#[derive(Default)]
struct Writer {
    handle: Option<std::thread::JoinHandle<Result<(), TrainError>>>,
}

impl Writer {
    /// Waits for the write in flight, if any, and returns its result.
    fn wait(&mut self) -> Result<(), TrainError> {
        match self.handle.take() {
            None => Ok(()),
            Some(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        }
    }

    /// Waits for the previous write (so checkpoints land in order and one at a time), then
    /// starts `job`.
    fn start(&mut self, job: PendingSave) -> Result<(), TrainError> {
        self.wait()?;
        self.handle = Some(
            std::thread::Builder::new()
                .name("checkpoint".into())
                .spawn(job)
                .map_err(|source| {
                    TrainError::Checkpoint(CheckpointError::Io {
                        path: "checkpoint writer thread".into(),
                        source,
                    })
                })?,
        );
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("checkpoint write failed: {e}");
        }
    }
}

/// Something that takes optimizer steps and checkpoints itself.
pub trait Steps {
    /// One step's figures (one `metrics.jsonl` line).
    type Metrics: Serialize;
    /// Optimizer steps completed so far (restored on resume).
    fn steps_done(&self) -> usize;
    /// Takes the next step.
    ///
    /// # Errors
    /// Whatever stops the run.
    fn step(&mut self) -> Result<Self::Metrics, TrainError>;
    /// Takes a checkpoint for `dir`: copies the state now and returns the write, which the
    /// loop runs on its writer thread while the next step runs.
    ///
    /// # Errors
    /// Whatever stops the copy; the returned write fails with [`TrainError::Checkpoint`]
    /// naming the file.
    fn checkpoint(&self, dir: &Path) -> Result<PendingSave, TrainError>;
    /// A short human summary of a step for the progress line, e.g. `reward 0.41 fmt 0.88`.
    fn summary(m: &Self::Metrics) -> String;
    /// The progress line's label when no curriculum phase names it.
    fn label(&self) -> &'static str {
        "train"
    }
    /// Told the run folder before the first step (the RL trainer writes a served engine's
    /// adapters there). Does nothing by default.
    fn begin(&mut self, dir: &Path) {
        let _ = dir;
    }
    /// Whether the run should stop after a step with these figures (e.g. SFT's entropy rule).
    fn stop_after(&self, m: &Self::Metrics) -> bool {
        let _ = m;
        false
    }
}

// The two step sources the loop drives. Implemented here, not beside each trainer, so the
// trainers never import the loop (the loop imports them).

impl<B: AutodiffBackend> Steps for Trainer<B> {
    type Metrics = StepMetrics;
    fn steps_done(&self) -> usize {
        self.learner.state.step
    }
    fn step(&mut self) -> Result<StepMetrics, TrainError> {
        Trainer::step(self)
    }
    fn begin(&mut self, dir: &Path) {
        self.set_run_dir(dir);
    }
    fn checkpoint(&self, dir: &Path) -> Result<PendingSave, TrainError> {
        let (snapshot, dir) = (self.learner.snapshot(), dir.to_path_buf());
        Ok(Box::new(move || {
            snapshot.write(&dir).map_err(TrainError::Checkpoint)
        }))
    }
    fn summary(m: &StepMetrics) -> String {
        format!(
            "reward {:+.2} fmt {:.2} search {:.2} groups {}/{} {:.0} tok/s",
            m.reward_mean,
            m.format_ok_rate,
            m.searches_mean,
            m.groups_kept,
            m.groups_sampled,
            m.tokens_per_s
        )
    }
}

impl<B: AutodiffBackend> Steps for SftTrainer<B> {
    type Metrics = SftMetrics;
    fn steps_done(&self) -> usize {
        self.learner.state.step
    }
    fn step(&mut self) -> Result<SftMetrics, TrainError> {
        Ok(SftTrainer::step(self))
    }
    fn checkpoint(&self, dir: &Path) -> Result<PendingSave, TrainError> {
        let (snapshot, dir) = (self.learner.snapshot(), dir.to_path_buf());
        Ok(Box::new(move || {
            snapshot.write(&dir).map_err(TrainError::Checkpoint)
        }))
    }
    fn summary(m: &SftMetrics) -> String {
        format!(
            "nll {:.3} entropy {:.3} {} tokens {:.1} s/step",
            m.loss, m.entropy, m.tokens, m.seconds
        )
    }
    fn label(&self) -> &'static str {
        "sft"
    }
    fn stop_after(&self, m: &SftMetrics) -> bool {
        self.should_stop(m)
    }
}

/// How [`run_steps`] runs. Defaults stated once, in `impl Default`.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Step count to reach (a resumed run continues up to it). Default 1.
    pub steps: usize,
    /// Checkpoint every this many steps (and at the last one). Default 1.
    pub checkpoint_every: usize,
    /// Curriculum phase name, written into every line as `"phase"`. Default none.
    pub phase: Option<String>,
    /// Added to the step number to give each line's `"run_step"` (a curriculum's steps count
    /// on across phases); `None` writes no `run_step`. Default none.
    pub run_step_offset: Option<usize>,
    /// Also print each JSON line to stdout even on a terminal (it always does when stdout is
    /// not a terminal). Default false.
    pub echo_json: bool,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            steps: 1,
            checkpoint_every: 1,
            phase: None,
            run_step_offset: None,
            echo_json: false,
        }
    }
}

/// How a [`run_steps`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopOutcome {
    /// Steps completed when the loop returned.
    pub steps_done: usize,
    /// Whether [`Steps::stop_after`] ended it before `steps`.
    pub stopped_early: bool,
}

/// Runs `s` until it has taken `opts.steps` steps (see the module docs): appends one JSON line
/// per step to `metrics` and checkpoints into `checkpoint_dir`.
///
/// # Errors
/// The step's [`TrainError`], or [`TrainError::Checkpoint`] when the metrics file cannot be
/// written (naming it).
pub fn run_steps<S: Steps>(
    s: &mut S,
    checkpoint_dir: &Path,
    metrics: &Path,
    opts: &LoopOptions,
) -> Result<LoopOutcome, TrainError> {
    let io = |source| {
        TrainError::Checkpoint(CheckpointError::Io {
            path: metrics.to_path_buf(),
            source,
        })
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(metrics)
        .map_err(io)?;
    s.begin(checkpoint_dir);
    let echo = opts.echo_json || !std::io::stdout().is_terminal();
    let bar = indicatif::ProgressBar::new(opts.steps as u64);
    bar.set_position(s.steps_done() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {bar:24} step {pos}/{len} {msg} [{elapsed_precise}]",
        )
        .expect("template"),
    );
    bar.set_prefix(opts.phase.clone().unwrap_or_else(|| s.label().into()));
    bar.set_message("(first step running)");
    // A step takes minutes on a CPU: tick once a second so the elapsed time moves.
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    let mut outcome = LoopOutcome {
        steps_done: s.steps_done(),
        stopped_early: false,
    };
    // The ETA is this run's mean step time × steps left (indicatif's own estimate, fed one
    // position change every few minutes, swings by hours).
    let (t0, first) = (std::time::Instant::now(), s.steps_done());
    let mut writer = Writer::default();
    while s.steps_done() < opts.steps {
        let m = s.step()?;
        // The previous checkpoint lands before this step's line, so metrics.jsonl stays at
        // most one line past the checkpoint on disk (what a resume truncates).
        writer.wait()?;
        let step = s.steps_done();
        let mut line = serde_json::to_value(&m).expect("metrics serialize");
        if let Value::Object(map) = &mut line {
            if let Some(p) = &opts.phase {
                map.insert("phase".into(), Value::String(p.clone()));
            }
            if let Some(off) = opts.run_step_offset {
                map.insert("run_step".into(), Value::from(off + step));
            }
        }
        let text = line.to_string();
        writeln!(file, "{text}").map_err(io)?;
        file.flush().map_err(io)?;
        if echo {
            bar.suspend(|| println!("{text}"));
        }
        bar.set_position(step as u64);
        let per_step = t0.elapsed().as_secs_f64() / (step - first).max(1) as f64;
        let left = opts.steps.saturating_sub(step) as f64 * per_step;
        bar.set_message(format!("{} · ETA {}", S::summary(&m), hms(left)));
        let stop = s.stop_after(&m);
        if step.is_multiple_of(opts.checkpoint_every.max(1)) || step == opts.steps || stop {
            writer.start(s.checkpoint(checkpoint_dir)?)?;
        }
        outcome.steps_done = step;
        if stop {
            outcome.stopped_early = true;
            break;
        }
    }
    // The run's last checkpoint is on disk before the caller (a resume, the next curriculum
    // phase, an export) reads it.
    writer.wait()?;
    // Leave the last line (the phase's final figures) on screen.
    bar.finish();
    Ok(outcome)
}

/// `h:mm:ss` (or `m:ss` under an hour) of a duration in seconds.
fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Keeps only the metrics lines `keep` accepts (e.g. steps up to a checkpoint's), rewriting
/// the file atomically ([`crate::atomic::write`]). A missing file is fine; a line that
/// is not JSON (a torn last line after a kill) is dropped.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file.
pub fn truncate_metrics(path: &Path, keep: impl Fn(&Value) -> bool) -> Result<(), CheckpointError> {
    if !path.exists() {
        return Ok(());
    }
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .is_some_and(|v| keep(&v))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::atomic::write(path, kept).map_err(io)
}

/// The `"step"` of a metrics line (0 when absent).
pub fn line_step(v: &Value) -> usize {
    v.get("step").and_then(Value::as_u64).unwrap_or(0) as usize
}

/// Prepares `dir` for a run: with `resume` and a checkpoint there, calls `restore` and
/// truncates `dir/metrics.jsonl` to the restored step; without `resume`, refuses a directory
/// that already holds a run. Returns whether a checkpoint was restored.
///
/// # Errors
/// [`TrainError::AlreadyExists`] for a finished or started run without `resume`; `restore`'s
/// error; [`TrainError::Checkpoint`] when the metrics file cannot be rewritten.
pub fn prepare_dir(
    dir: &Path,
    resume: bool,
    restore: impl FnOnce(&Path) -> Result<usize, TrainError>,
) -> Result<bool, TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        TrainError::Checkpoint(CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })?;
    let metrics = dir.join("metrics.jsonl");
    let found = if resume {
        checkpoint::recover(dir).map_err(TrainError::Checkpoint)?
    } else {
        checkpoint::exists(dir)
    };
    if found {
        if !resume {
            return Err(TrainError::AlreadyExists(dir.to_path_buf()));
        }
        let step = restore(dir)?;
        truncate_metrics(&metrics, |v| line_step(v) <= step)?;
        return Ok(true);
    }
    // No checkpoint: whatever lines exist describe steps that will be run again.
    truncate_metrics(&metrics, |_| false)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_formats_minutes_and_hours() {
        assert_eq!(hms(0.0), "0:00");
        assert_eq!(hms(59.6), "1:00");
        assert_eq!(hms(754.0), "12:34");
        assert_eq!(hms(3600.0 * 5.0 + 61.0), "5:01:01");
    }

    /// Counts steps; checkpoints are a file holding the step count.
    struct Counter {
        done: usize,
        stop_at: Option<usize>,
    }

    impl Steps for Counter {
        type Metrics = Value;
        fn steps_done(&self) -> usize {
            self.done
        }
        fn step(&mut self) -> Result<Value, TrainError> {
            self.done += 1;
            Ok(serde_json::json!({"step": self.done, "x": self.done * 10}))
        }
        fn checkpoint(&self, dir: &Path) -> Result<PendingSave, TrainError> {
            let (path, done) = (dir.join("count"), self.done);
            Ok(Box::new(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                std::fs::write(&path, done.to_string())
                    .map_err(|source| TrainError::Checkpoint(CheckpointError::Io { path, source }))
            }))
        }
        fn summary(m: &Value) -> String {
            m.to_string()
        }
        fn stop_after(&self, _m: &Value) -> bool {
            self.stop_at == Some(self.done)
        }
    }

    #[test]
    fn loop_writes_one_line_per_step_with_phase_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut c = Counter {
            done: 0,
            stop_at: Some(3),
        };
        let opts = LoopOptions {
            steps: 5,
            phase: Some("stage1".into()),
            run_step_offset: Some(100),
            ..Default::default()
        };
        let out = run_steps(&mut c, dir.path(), &metrics, &opts).unwrap();
        assert_eq!(
            out,
            LoopOutcome {
                steps_done: 3,
                stopped_early: true
            }
        );
        let lines: Vec<Value> = std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["phase"], "stage1");
        assert_eq!(lines[2]["run_step"], 103);
        assert_eq!(lines[2]["x"], 30);
        // The last checkpoint (written on the writer thread) is on disk when the loop returns.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("count")).unwrap(),
            "3"
        );
    }

    #[test]
    fn truncation_keeps_accepted_lines_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"st").unwrap();
        truncate_metrics(&p, |v| line_step(v) <= 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
        assert!(!crate::atomic::temp_path(&p).exists());
        truncate_metrics(&dir.path().join("missing.jsonl"), |_| true).unwrap();
    }
}
