//! Resumable checkpoints, written atomically.
//!
//! A checkpoint is a folder `checkpoint/` inside the run directory holding `model.mpk`
//! (burn's named MessagePack record, f32), `optimizer.mpk` (AdamW moments), `model_config.json`
//! (the architecture, so evaluation can rebuild the model without the original file),
//! `state.json` ([`TrainState`]: step, data position, seed), for a LoRA run `lora.json` (the
//! adapters' [`LoraConfig`], so a loader builds the adapted model before reading its
//! weights), and `checksums.json`, the CRC-32 of each of the others, written last.
//!
//! **A LoRA run's checkpoints hold the adapters, not the model.** Its base is frozen, so
//! writing it with every checkpoint (538 MB for the 135M default, against 20 MB of adapters)
//! only cost time and disk. Instead `checkpoint/adapter/` is a PEFT adapter folder (f32,
//! [`crate::model::hf::peft`]: what `peft` and vLLM load), and the base is written once per
//! process, beside the checkpoint, as `base-XXXXXXXX.mpk` (its CRC-32 in the name, so a
//! rewrite of the same base lands on the same file and a different base never overwrites one
//! a checkpoint still names). The checkpoint's `checksums.json` names its base as
//! `../base-XXXXXXXX.mpk`; loaders read that base, attach the adapters and number the
//! parameters canonically, which restores the trained model exactly (ids included, so the
//! AdamW moments find their parameters). Bases no checkpoint names are removed after each
//! swap.
//!
//! **What survives what** (tested by `tests/learning.rs`, `tests/curriculum.rs` and
//! `scripts/chaos`; see `docs/reliability.md`):
//! - *A kill at any moment.* The folder is written to `checkpoint.tmp/`; the previous one is
//!   renamed to `checkpoint.old/`, the new one into place, the old one removed. A kill while
//!   `checkpoint.tmp/` is written leaves `checkpoint/` untouched; a kill between the two
//!   renames leaves no `checkpoint/` but a complete `checkpoint.tmp/` (its `checksums.json`
//!   is written last), which [`recover`] moves into place when the run resumes.
//! - *A full disk or any failed write.* [`save`] returns the error naming the file, removes the
//!   partial `checkpoint.tmp/` (freeing what it took) and leaves `checkpoint/` as it was.
//! - *A torn or bit-flipped file.* Each loader checks its file against `checksums.json` and
//!   fails with [`CheckpointError::Corrupt`] naming it, instead of training on, serving or
//!   exporting damaged weights. (Checkpoints written before checksums existed load unchecked.)
//! - *Determinism.* Parameter ids are canonical ([`Llama::with_canonical_param_ids`]) and the
//!   optimizer moments are written sorted, so two runs of one seed write byte-identical
//!   `model.mpk` and `optimizer.mpk`.
//!
//! - *A finished curriculum phase* keeps its weights, architecture and progress but not its
//!   AdamW moments ([`drop_optimizer`]): the next phase starts a fresh optimizer, and two
//!   thirds of each checkpoint's bytes would otherwise sit unread.
//!
//! Not promised: durability across a power loss (files are not `fsync`ed; a kill -9 leaves the
//! page cache to the kernel, which writes it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{BurnRecord, FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::{Llama, LlamaConfig, LoraConfig};

/// The optimizer of every sleuth trainer: burn's AdamW over the policy's parameters (moments
/// keyed by parameter id), as [`save`] writes and [`load_optimizer`] restores it.
pub type Optim<B> = burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Llama<B>, B>;

/// Progress counters saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Passes over the training questions completed.
    pub epoch: usize,
    /// Index of the next question within the current epoch's order.
    pub position: usize,
    /// Seed of the run (question order and sampling derive from it and the step).
    pub seed: u64,
    /// Multiplier on the configured learning rate; the collapse guard halves it at each trip
    /// ([`super::guard`]). 1.0 in checkpoints written before the guard existed.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Collapse-guard trips so far.
    #[serde(default)]
    pub guard_trips: usize,
    /// Per training question (by index in the data): how often it was sampled and solved, and
    /// whether it was retired (`[train] retire_after`). Empty in checkpoints written before
    /// pass rates were tracked; grown on demand.
    #[serde(default)]
    pub pass: Vec<PassRecord>,
}

/// One training question's record over a run (DAPO / DeepResearcher-style difficulty
/// tracking): groups drawn, samples drawn, samples solved (cover-EM correct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PassRecord {
    /// Groups (rollouts of G samples) drawn for the question.
    pub groups: usize,
    /// Samples drawn.
    pub samples: usize,
    /// Samples whose answer was cover-EM correct.
    pub solved: usize,
    /// Retired: always or never solved after `retire_after` groups; no longer drawn.
    pub retired: bool,
}

impl PassRecord {
    /// Solved share of the samples (0 when never sampled).
    pub fn pass_rate(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.solved as f64 / self.samples as f64
        }
    }
}

fn one() -> f64 {
    1.0
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            step: 0,
            epoch: 0,
            position: 0,
            seed: 0,
            lr_scale: 1.0,
            guard_trips: 0,
            pass: Vec::new(),
        }
    }
}

impl TrainState {
    /// The data order of `epoch` over `len` items: a shuffle seeded by (`seed`, `epoch`).
    pub fn order(&self, epoch: usize, len: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..len).collect();
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        idx.shuffle(&mut rng);
        idx
    }

    /// The next `n` item indices (of `len`), advancing `position` and `epoch`; a resumed run
    /// continues exactly where the saved one stopped.
    pub fn next_indices(&mut self, len: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if len == 0 {
            return out;
        }
        let mut order = self.order(self.epoch, len);
        while out.len() < n {
            if self.position >= order.len() {
                self.epoch += 1;
                self.position = 0;
                order = self.order(self.epoch, len);
            }
            out.push(order[self.position]);
            self.position += 1;
        }
        out
    }
}

/// Errors reading or writing checkpoints; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path at fault.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// burn could not (de)serialize a record.
    #[error("{path}: {message}")]
    Record {
        /// Path at fault.
        path: PathBuf,
        /// burn's error text.
        message: String,
    },
    /// A file's CRC-32 disagrees with the checkpoint's `checksums.json`: it was truncated,
    /// overwritten or bit-flipped after it was written.
    #[error("{path}: corrupt checkpoint file (CRC-32 {found:08x}, checksums.json says {expected:08x}); resume from an earlier copy or re-run the phase")]
    Corrupt {
        /// Path at fault.
        path: PathBuf,
        /// CRC-32 recorded when the checkpoint was written.
        expected: u32,
        /// CRC-32 of the file now.
        found: u32,
    },
    /// A path given as a checkpoint holds none.
    #[error("{path}: no checkpoint here ({why}); expected a training run folder holding checkpoint/ (runs/NAME), a curriculum phase folder (runs/NAME/04-sft-hotpot) or a curriculum run folder holding curriculum.json")]
    NotFound {
        /// Path given.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// A JSON file is malformed.
    #[error("{path}: {source}")]
    Json {
        /// Path at fault.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint folder of run directory `run`.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// The manifest written last into a checkpoint folder: file name → CRC-32.
const CHECKSUMS: &str = "checksums.json";
/// A LoRA checkpoint's adapter shape (module docs).
const LORA: &str = "lora.json";

/// Whether `run` holds a complete checkpoint.
pub fn exists(run: &Path) -> bool {
    dir(run).join("state.json").is_file()
}

/// The run folder whose checkpoint a reader (`eval --checkpoint`, `export`, `serve`, `chat`)
/// loads, from what a user passes: a training run or curriculum phase folder (holding
/// `checkpoint/`) as is; a curriculum run folder (holding `curriculum.json`) as its last phase
/// folder (`NN-name`, by number) that holds a checkpoint.
///
/// # Errors
/// [`CheckpointError::NotFound`] saying what the path holds instead: nothing, a file, or a
/// curriculum with no training phase checkpointed yet.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if exists(path) {
        return Ok(path.to_path_buf());
    }
    let not_found = |why: &str| CheckpointError::NotFound {
        path: path.to_path_buf(),
        why: why.into(),
    };
    if !path.exists() {
        return Err(not_found("the path does not exist"));
    }
    if !path.is_dir() {
        return Err(not_found("it is a file"));
    }
    if !path.join("curriculum.json").is_file() {
        return Err(not_found(
            "a folder with neither checkpoint/ nor curriculum.json",
        ));
    }
    let mut phases: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() > 3
                    && n.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                    && n.as_bytes()[2] == b'-'
            })
        })
        .collect();
    phases.sort();
    phases
        .into_iter()
        .rev()
        .find(|p| exists(p))
        .ok_or_else(|| not_found("a curriculum run with no training phase checkpointed yet"))
}

/// Repairs what a kill can leave in `run`, before a resume reads it (see the module docs):
/// with no `checkpoint/` but a complete `checkpoint.tmp/` (its manifest present: killed
/// between the two renames), the newer folder is moved into place, failing that a
/// `checkpoint.old/`; then a partial `checkpoint.tmp/` or a stale `checkpoint.old/` is removed.
/// Only the process that owns the run calls it (a resume); readers such as `eval` never do,
/// so they cannot race a trainer's swap. Returns [`exists`] afterwards.
///
/// # Errors
/// [`CheckpointError::Io`] naming the folder that could not be moved or removed.
pub fn recover(run: &Path) -> Result<bool, CheckpointError> {
    let final_dir = dir(run);
    let tmp = run.join("checkpoint.tmp");
    let old = run.join("checkpoint.old");
    if !final_dir.exists() {
        if tmp.join(CHECKSUMS).is_file() {
            std::fs::rename(&tmp, &final_dir).map_err(io(&tmp))?;
        } else if old.join("state.json").is_file() {
            std::fs::rename(&old, &final_dir).map_err(io(&old))?;
        }
    }
    if final_dir.exists() {
        for stale in [&tmp, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(io(stale))?;
            }
        }
    }
    Ok(exists(run))
}

/// burn's recorder reports a failed write without its OS error; when the file system holding
/// `dir` is (nearly) full, says so: `"; the file system holds 0 bytes free: disk full"`.
fn space_note(dir: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return String::new();
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer statvfs fills on success.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return String::new();
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < 64 << 20 {
        format!("; the file system holds {free} bytes free: disk full")
    } else {
        String::new()
    }
}

/// CRC-32 of a file's bytes.
///
/// Streams the file through one 1 MiB buffer: reading a 1 GB optimizer file whole cost a
/// second of page faults alone.
fn crc_of(path: &Path) -> Result<u32, CheckpointError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
}

/// Checks `file` of the checkpoint in `run` against its `checksums.json` (a checkpoint
/// without one, written before checksums existed, passes unchecked).
///
/// # Errors
/// [`CheckpointError::Corrupt`] on a mismatch; [`CheckpointError::Io`] /
/// [`CheckpointError::Json`] when the file or the manifest cannot be read.
pub fn verify(run: &Path, file: &str) -> Result<(), CheckpointError> {
    let manifest = dir(run).join(CHECKSUMS);
    if !manifest.exists() {
        return Ok(());
    }
    let sums = read_manifest(&manifest)?;
    let path = dir(run).join(file);
    let Some(&expected) = sums.get(file) else {
        return Err(CheckpointError::Json {
            path: manifest,
            source: serde::de::Error::custom(format!("no checksum for {file}")),
        });
    };
    let found = crc_of(&path)?;
    if found != expected {
        return Err(CheckpointError::Corrupt {
            path,
            expected,
            found,
        });
    }
    Ok(())
}

/// Writes model, optimizer, config and state to `run/checkpoint/` atomically.
///
/// # Errors
/// [`CheckpointError`] naming the file that failed.
pub fn save<B: AutodiffBackend>(
    run: &Path,
    model: &Llama<B>,
    optim: &Optim<B>,
    config: &LlamaConfig,
    state: &TrainState,
) -> Result<(), CheckpointError> {
    Snapshot::of(model, optim, config, state, true).write(run)
}

/// The policy's record with f32 weights, as burn serializes it.
type ModelItem<B> = <<Llama<B> as Module<B>>::Record as Record<B>>::Item<FullPrecisionSettings>;
/// AdamW's moments keyed by parameter id, as burn serializes them.
type OptimItem<B> =
    <<Optim<B> as Optimizer<Llama<B>, B>>::Record as Record<B>>::Item<FullPrecisionSettings>;

/// A checkpoint's contents copied out of a trainer: weights and AdamW moments as host records
/// (`4 · params` bytes each for the weights and for each moment: 1.6 GB for the 135M
/// default), the architecture and the progress counters. [`Snapshot::write`] writes it as
/// [`save`] does, on any thread, so the run loop can write step `n`'s checkpoint while step
/// `n + 1` runs (`super::run`).
pub struct Snapshot<B: AutodiffBackend> {
    weights: Weights<B>,
    moments: OptimItem<B>,
    config: LlamaConfig,
    lora: Option<LoraConfig>,
    state: TrainState,
}

/// What a [`Snapshot`] holds of the policy (module docs).
enum Weights<B: AutodiffBackend> {
    /// A full fine-tune: every weight.
    Full(ModelItem<B>),
    /// A LoRA run: the adapters (PEFT names and layout, f32), and the frozen base's record
    /// when it is to be written with this checkpoint (a process's first).
    Adapters {
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        base: Option<ModelItem<B>>,
    },
}

/// The folder of a LoRA checkpoint's adapters, inside `checkpoint/`.
const ADAPTER: &str = "adapter";
/// The prefix of a LoRA run's base file (module docs), as the manifest names it.
const BASE_PREFIX: &str = "../base-";

/// The manifest keys of a LoRA checkpoint's adapter files (PEFT's two, under [`ADAPTER`]).
fn adapter_files() -> [String; 2] {
    use crate::model::hf::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    [ADAPTER_WEIGHTS, ADAPTER_CONFIG].map(|file| format!("{ADAPTER}/{file}"))
}

impl<B: AutodiffBackend> Snapshot<B> {
    /// Copies the trainer's state (about 0.3 s for the 135M default on this project's CPU).
    /// For a LoRA model only the adapters are copied, plus the frozen base when `with_base`
    /// (a process's first checkpoint of a run; later ones name the base the run's current
    /// checkpoint names).
    pub fn of(
        model: &Llama<B>,
        optim: &Optim<B>,
        config: &LlamaConfig,
        state: &TrainState,
        with_base: bool,
    ) -> Self {
        let record = |m: Llama<B>| m.into_record().into_item::<FullPrecisionSettings>();
        let weights = match model.lora_config() {
            None => Weights::Full(record(model.clone())),
            Some(_) => Weights::Adapters {
                tensors: crate::model::hf::peft::adapter_tensors(model),
                base: with_base.then(|| record(model.clone().strip_lora())),
            },
        };
        Self {
            weights,
            moments: optim.to_record().into_item::<FullPrecisionSettings>(),
            config: config.clone(),
            lora: model.lora_config(),
            state: state.clone(),
        }
    }

    /// The step this checkpoint was taken after.
    pub fn step(&self) -> usize {
        self.state.step
    }

    /// Writes the checkpoint into `run/checkpoint/`, atomically (module docs): the folder is
    /// written as `checkpoint.tmp/`, then swapped in by two renames.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the file that could not be written; `checkpoint/` is then
    /// left as it was and the partial `checkpoint.tmp/` removed.
    pub fn write(self, run: &Path) -> Result<(), CheckpointError> {
        let _span = tracing::debug_span!("checkpoint", step = self.state.step).entered();
        let tmp = run.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        let written = self.write_folder(&tmp, run);
        if written.is_err() {
            // A full disk: give back what the partial copy took; `checkpoint/` is untouched.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written?;
        let final_dir = dir(run);
        let old = run.join("checkpoint.old");
        if final_dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&tmp))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        remove_unnamed_bases(run)
    }

    /// Writes the files of a checkpoint into the folder `tmp`, `checksums.json` last; a LoRA
    /// run's base, when the snapshot carries it, into `run` (module docs).
    fn write_folder(self, tmp: &Path, run: &Path) -> Result<(), CheckpointError> {
        type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;
        std::fs::create_dir_all(tmp).map_err(io(tmp))?;
        let rec = recorder();
        let record_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: burn::record::RecorderError| CheckpointError::Record {
                message: format!("{e}{}", space_note(tmp)),
                path,
            }
        };
        let mut sums = BTreeMap::new();
        match self.weights {
            Weights::Full(model) => {
                let model_path = tmp.join("model");
                let item = BurnRecord::<_, B>::new::<Rec>(model);
                Recorder::<B>::save_item(&rec, item, model_path.clone())
                    .map_err(record_err(&model_path))?;
                sums.insert("model.mpk".to_string(), crc_of(&tmp.join("model.mpk"))?);
            }
            Weights::Adapters { tensors, base } => {
                let (name, crc) = match base {
                    Some(base) => write_base::<B>(run, base)?,
                    None => current_base(run)?,
                };
                sums.insert(name, crc);
                let cfg = self.lora.clone().ok_or_else(|| CheckpointError::Record {
                    path: tmp.join(ADAPTER),
                    message: "adapters without a LoRA shape".into(),
                })?;
                let out = tmp.join(ADAPTER);
                crate::model::hf::peft::write_adapter_tensors(
                    &cfg,
                    tensors,
                    "the run's base (checkpoint/checksums.json names it)",
                    &out,
                    crate::model::hf::export::ExportDtype::F32,
                )
                .map_err(|e| CheckpointError::Record {
                    message: format!("{e}{}", space_note(tmp)),
                    path: out.clone(),
                })?;
                for key in adapter_files() {
                    let crc = crc_of(&tmp.join(&key))?;
                    sums.insert(key, crc);
                }
            }
        }
        let optim_path = tmp.join("optimizer");
        // burn keeps the moments in a hash map, whose iteration order (and so the file's byte
        // order) differs between processes; written sorted by parameter id, equal states give
        // equal files.
        let moments: BTreeMap<String, _> = self.moments.into_iter().collect();
        let item = BurnRecord::<_, B>::new::<Rec>(moments);
        Recorder::<B>::save_item(&rec, item, optim_path.clone())
            .map_err(record_err(&optim_path))?;
        let cfg_path = tmp.join("model_config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&self.config).expect("config serializes"),
        )
        .map_err(io(&cfg_path))?;
        let state_path = tmp.join("state.json");
        std::fs::write(
            &state_path,
            serde_json::to_vec_pretty(&self.state).expect("state serializes"),
        )
        .map_err(io(&state_path))?;
        let mut files = vec!["optimizer.mpk", "model_config.json", "state.json"];
        if let Some(lora) = &self.lora {
            let lora_path = tmp.join(LORA);
            std::fs::write(
                &lora_path,
                serde_json::to_vec_pretty(lora).expect("lora config serializes"),
            )
            .map_err(io(&lora_path))?;
            files.push(LORA);
        }
        for file in files {
            sums.insert(file.to_string(), crc_of(&tmp.join(file))?);
        }
        let sums_path = tmp.join(CHECKSUMS);
        std::fs::write(
            &sums_path,
            serde_json::to_vec_pretty(&sums).expect("checksums serialize"),
        )
        .map_err(io(&sums_path))
    }
}

/// Writes a LoRA run's frozen base into `run` as `base-XXXXXXXX.mpk` (its CRC-32; written as
/// `base-tmp.mpk`, then renamed) and returns its manifest key and CRC.
fn write_base<B: AutodiffBackend>(
    run: &Path,
    base: ModelItem<B>,
) -> Result<(String, u32), CheckpointError> {
    type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;
    // burn's recorder replaces the path's extension with `.mpk`: no dot in the stem.
    let tmp = run.join("base-tmp");
    let tmp_file = run.join("base-tmp.mpk");
    let item = BurnRecord::<_, B>::new::<Rec>(base);
    if let Err(e) = Recorder::<B>::save_item(&recorder(), item, tmp.clone()) {
        let _ = std::fs::remove_file(&tmp_file);
        return Err(CheckpointError::Record {
            message: format!("{e}{}", space_note(run)),
            path: tmp_file,
        });
    }
    let crc = crc_of(&tmp_file)?;
    let name = format!("{BASE_PREFIX}{crc:08x}.mpk");
    let path = run.join(format!("base-{crc:08x}.mpk"));
    std::fs::rename(&tmp_file, &path).map_err(io(&tmp_file))?;
    Ok((name, crc))
}

/// The base (manifest key, CRC-32) the current checkpoint of `run` names: what a LoRA
/// checkpoint written without its base carries over, and what a loader reads.
///
/// # Errors
/// [`CheckpointError::Record`] when the run has no adapter checkpoint naming a base.
fn current_base(run: &Path) -> Result<(String, u32), CheckpointError> {
    let manifest = dir(run).join(CHECKSUMS);
    let sums = read_manifest(&manifest).unwrap_or_default();
    sums.into_iter()
        .find(|(k, _)| k.starts_with(BASE_PREFIX))
        .ok_or_else(|| CheckpointError::Record {
            path: manifest,
            message: "names no base file (../base-XXXXXXXX.mpk): a LoRA checkpoint holds its \
                      adapters and names the frozen base written beside it; a process's first \
                      checkpoint writes that base (Snapshot::of with_base)"
                .into(),
        })
}

/// A checkpoint's `checksums.json`: file name → CRC-32.
///
/// # Errors
/// [`CheckpointError::Io`] / [`CheckpointError::Json`] naming the file.
fn read_manifest(path: &Path) -> Result<BTreeMap<String, u32>, CheckpointError> {
    let text = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&text).map_err(|source| CheckpointError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the `base-*.mpk` files of `run` that its checkpoint does not name (an earlier
/// process's base, or one a kill left unreferenced, or a partial `base-tmp.mpk`).
fn remove_unnamed_bases(run: &Path) -> Result<(), CheckpointError> {
    let named: Vec<String> = read_manifest(&dir(run).join(CHECKSUMS))
        .map(|m| {
            m.into_keys()
                .filter_map(|k| k.strip_prefix("../").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(run) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_base = name.starts_with("base-") && name.ends_with(".mpk");
        if is_base && !named.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

/// Whether `run`'s checkpoint holds adapters and names a base instead of holding the model
/// (a LoRA run's; module docs).
pub fn is_adapter_only(run: &Path) -> bool {
    dir(run).join(ADAPTER).is_dir()
}

/// Reads the architecture saved with a checkpoint.
///
/// # Errors
/// [`CheckpointError`] naming the file.
pub fn load_config(run: &Path) -> Result<LlamaConfig, CheckpointError> {
    verify(run, "model_config.json")?;
    let path = dir(run).join("model_config.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

/// Reads the saved progress counters.
///
/// # Errors
/// [`CheckpointError`] naming the file.
pub fn load_state(run: &Path) -> Result<TrainState, CheckpointError> {
    verify(run, "state.json")?;
    let path = dir(run).join("state.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

/// The adapters' shape saved with a LoRA checkpoint (`lora.json`); `None` for a checkpoint
/// of a full fine-tune.
///
/// # Errors
/// [`CheckpointError`] naming the file when it is corrupt or malformed.
pub fn load_lora(run: &Path) -> Result<Option<LoraConfig>, CheckpointError> {
    let path = dir(run).join(LORA);
    if !path.exists() {
        return Ok(None);
    }
    verify(run, LORA)?;
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CheckpointError::Json { path, source })
}

/// Loads the saved weights into `model` (which must have the saved architecture). A LoRA
/// checkpoint's adapters are attached first where `model` lacks them or has others
/// ([`Llama::with_lora`], base frozen), and a full fine-tune's checkpoint loaded into an
/// adapted model replaces its adapters' folded weights: what the file holds is what loads.
///
/// # Errors
/// [`CheckpointError::Corrupt`] when the file disagrees with `checksums.json`;
/// [`CheckpointError::Record`] when it is missing or does not match the model.
pub fn load_model<B: burn::tensor::backend::Backend>(
    run: &Path,
    model: Llama<B>,
    device: &B::Device,
) -> Result<Llama<B>, CheckpointError> {
    if is_adapter_only(run) {
        return load_adapters(run, model, device);
    }
    let saved = load_lora(run)?;
    let model = match (&saved, model.lora_config()) {
        (saved, have) if *saved == have => model,
        (Some(l), _) => model.merge_lora().with_lora(l, 0),
        (None, _) => model.merge_lora(),
    };
    verify(run, "model.mpk")?;
    let path = dir(run).join("model");
    model
        .load_file(path.clone(), &recorder(), device)
        .map_err(|e| CheckpointError::Record {
            path,
            message: e.to_string(),
        })
}

/// [`load_model`] for a LoRA checkpoint: the base it names (CRC-checked) into `model`'s
/// layers with their adapters removed, then the checkpoint's adapters attached
/// ([`crate::model::hf::peft::apply_adapter`]) and the parameters numbered canonically.
fn load_adapters<B: burn::tensor::backend::Backend>(
    run: &Path,
    model: Llama<B>,
    device: &B::Device,
) -> Result<Llama<B>, CheckpointError> {
    let (key, _) = current_base(run)?;
    verify(run, &key)?;
    let base_path = dir(run).join(&key);
    let base = model
        .strip_lora()
        .load_file(base_path.with_extension(""), &recorder(), device)
        .map_err(|e| CheckpointError::Record {
            path: base_path.clone(),
            message: e.to_string(),
        })?;
    for key in adapter_files() {
        verify(run, &key)?;
    }
    let adapter = dir(run).join(ADAPTER);
    let model = crate::model::hf::peft::apply_adapter(base, &adapter).map_err(|e| {
        CheckpointError::Record {
            path: adapter,
            message: e.to_string(),
        }
    })?;
    Ok(model.with_canonical_param_ids())
}

/// A model of the architecture saved with the checkpoint, holding its weights: `(model,
/// architecture)`. What every command that starts from a run directory (`--checkpoint`,
/// `serve`, `export`) loads; `run` may also be a curriculum's run folder ([`resolve`]).
///
/// # Errors
/// [`resolve`]'s, [`load_config`]'s and [`load_model`]'s.
pub fn load_saved<B: burn::tensor::backend::Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(Llama<B>, LlamaConfig), CheckpointError> {
    let run = &resolve(run)?;
    let arch = load_config(run)?;
    let model = load_model(run, Llama::<B>::random(&arch, device), device)?;
    Ok((model, arch))
}

/// Removes the AdamW moments from the checkpoint in `run`, keeping its weights, architecture
/// and progress: what a finished curriculum phase keeps (the next phase starts with a fresh
/// optimizer, so the moments, `8 · params` bytes, 1.1 GB for the 135M default, are never read
/// again). `checksums.json` is rewritten without the file first (atomically), then the file
/// is removed, so a kill between the two leaves a loadable checkpoint. Returns the bytes
/// freed, 0 when the moments were already gone.
///
/// # Errors
/// [`CheckpointError::Io`] / [`CheckpointError::Json`] naming the file that could not be read,
/// written or removed.
pub fn drop_optimizer(run: &Path) -> Result<u64, CheckpointError> {
    let folder = dir(run);
    let file = folder.join("optimizer.mpk");
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(0);
    };
    let manifest = folder.join(CHECKSUMS);
    if manifest.exists() {
        let mut sums = read_manifest(&manifest)?;
        sums.remove("optimizer.mpk");
        let tmp = folder.join("checksums.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&sums).expect("checksums serialize"),
        )
        .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &manifest).map_err(io(&manifest))?;
    }
    std::fs::remove_file(&file).map_err(io(&file))?;
    Ok(meta.len())
}

/// Loads the saved optimizer state into `optim`.
///
/// # Errors
/// [`CheckpointError::Corrupt`] when the file disagrees with `checksums.json`;
/// [`CheckpointError::Record`] when it is missing or does not match the model.
pub fn load_optimizer<B, O>(run: &Path, optim: O, device: &B::Device) -> Result<O, CheckpointError>
where
    B: AutodiffBackend,
    O: Optimizer<Llama<B>, B>,
{
    let path = dir(run).join("optimizer");
    if !dir(run).join("optimizer.mpk").exists() {
        return Err(CheckpointError::Record {
            path: dir(run).join("optimizer.mpk"),
            message: "missing: this checkpoint holds weights only (a finished curriculum \
                      phase drops its AdamW moments, see `drop_optimizer`), so training cannot \
                      resume from it; start a new phase from its weights instead"
                .into(),
        });
    }
    verify(run, "optimizer.mpk")?;
    let record = Recorder::<B>::load(&recorder(), path.clone(), device).map_err(|e| {
        CheckpointError::Record {
            path,
            message: e.to_string(),
        }
    })?;
    Ok(optim.load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::{self, Train};
    use burn::optim::AdamWConfig;

    fn saved(run: &Path, step: usize) -> Llama<Train> {
        let device = backend::device();
        let cfg = LlamaConfig::tiny(64);
        let model = Llama::<Train>::random(&cfg, &device).with_canonical_param_ids();
        let optim: Optim<Train> = AdamWConfig::new().init();
        let state = TrainState {
            step,
            ..Default::default()
        };
        save(run, &model, &optim, &cfg, &state).unwrap();
        model
    }

    #[test]
    fn a_finished_phase_keeps_loadable_weights_without_its_moments() {
        let run = tempfile::tempdir().unwrap();
        let model = saved(run.path(), 3);
        let freed = drop_optimizer(run.path()).unwrap();
        assert!(freed > 0);
        assert!(!dir(run.path()).join("optimizer.mpk").exists());
        assert_eq!(
            drop_optimizer(run.path()).unwrap(),
            0,
            "a second drop is a no-op"
        );
        // The weights still load and still verify against the rewritten manifest.
        let device = backend::device();
        let (loaded, _) = load_saved::<Train>(run.path(), &device).unwrap();
        let a = model.embed_tokens.val().into_data();
        let b = loaded.embed_tokens.val().into_data();
        assert_eq!(a, b);
        assert_eq!(load_state(run.path()).unwrap().step, 3);
        // Resuming training from it is refused with the reason, not a checksum puzzle.
        let optim: Optim<Train> = AdamWConfig::new().init();
        let err = load_optimizer(run.path(), optim, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("optimizer.mpk") && err.contains("weights only"),
            "{err}"
        );
    }

    #[test]
    fn a_curriculum_folder_resolves_to_its_last_checkpointed_phase() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path();
        std::fs::write(run.join("curriculum.json"), "{}").unwrap();
        let err = resolve(run).unwrap_err().to_string();
        assert!(err.contains("no training phase checkpointed yet"), "{err}");
        for (name, step) in [("02-sft", 2), ("04-stage1", 4)] {
            std::fs::create_dir(run.join(name)).unwrap();
            saved(&run.join(name), step);
        }
        // A later phase without a checkpoint (an eval) and a stray folder are passed over.
        std::fs::create_dir(run.join("05-eval")).unwrap();
        std::fs::create_dir(run.join("notes")).unwrap();
        assert_eq!(resolve(run).unwrap(), run.join("04-stage1"));
        assert_eq!(resolve(&run.join("02-sft")).unwrap(), run.join("02-sft"));
        let device = backend::device();
        assert!(load_saved::<Train>(run, &device).is_ok());
        // One sentence naming the path and what was expected, the cause not repeated.
        let err = resolve(&run.join("05-eval")).unwrap_err().to_string();
        assert!(
            err.contains("05-eval") && err.contains("expected a training run folder"),
            "{err}"
        );
        let err = resolve(&run.join("missing")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_flipped_bit_or_a_truncation_names_the_file() {
        let run = tempfile::tempdir().unwrap();
        saved(run.path(), 1);
        let device = backend::device();
        assert!(load_saved::<Train>(run.path(), &device).is_ok());
        let weights = dir(run.path()).join("model.mpk");
        let mut bytes = std::fs::read(&weights).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10; // inside a tensor's bytes: msgpack alone would load it
        std::fs::write(&weights, &bytes).unwrap();
        let err = load_saved::<Train>(run.path(), &device).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("model.mpk"), "{err}");

        let state = dir(run.path()).join("state.json");
        let text = std::fs::read_to_string(&state).unwrap();
        std::fs::write(&state, &text[..text.len() / 2]).unwrap();
        let err = load_state(run.path()).unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[test]
    fn a_kill_between_the_two_renames_keeps_the_newest_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        saved(run.path(), 1);
        saved(run.path(), 2);
        // The state after `rename(checkpoint, checkpoint.old)`, before `rename(tmp, checkpoint)`.
        std::fs::rename(dir(run.path()), run.path().join("checkpoint.tmp")).unwrap();
        saved_copy(run.path(), 1, "checkpoint.old");
        assert!(!exists(run.path()));
        assert!(recover(run.path()).unwrap());
        assert_eq!(load_state(run.path()).unwrap().step, 2);
        assert!(!run.path().join("checkpoint.old").exists());
        assert!(!run.path().join("checkpoint.tmp").exists());

        // Killed while the tmp folder was written (no manifest yet): the old one comes back.
        std::fs::create_dir(run.path().join("checkpoint.tmp")).unwrap();
        std::fs::rename(dir(run.path()), run.path().join("checkpoint.old")).unwrap();
        assert!(recover(run.path()).unwrap());
        assert_eq!(load_state(run.path()).unwrap().step, 2);
        assert!(
            !run.path().join("checkpoint.tmp").exists(),
            "partial copy removed"
        );
    }

    /// A complete checkpoint of `step` in `run/name` (written through `save` elsewhere).
    fn saved_copy(run: &Path, step: usize, name: &str) {
        let other = tempfile::tempdir().unwrap();
        saved(other.path(), step);
        std::fs::rename(dir(other.path()), run.join(name)).unwrap();
    }
}
