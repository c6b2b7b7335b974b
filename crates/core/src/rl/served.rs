//! A served rollout engine (`[rollout] engine = "openai"`): RL samples its episodes from an
//! OpenAI-compatible completions server (vLLM) and, after each update, pushes the policy's
//! LoRA adapter to it, so the next step samples with the weights just trained.
//!
//! This is how verl, SkyRL, OpenRLHF and slime scale rollouts past the trainer's machine:
//! the engine decodes, the trainer scores and updates, and the new weights travel to the
//! engine between steps. sleuth sends only the adapter (a few MB for the 135M default at rank
//! 8, against 540 MB of full weights), through vLLM's runtime LoRA API, so the engine must
//! serve the trainer's base model (export it with `sleuth export`) with `--enable-lora`.
//!
//! **Versions.** The adapter holding the weights after optimizer step `n` is loaded as
//! `sleuth-step-n` (a fresh run pushes `sleuth-step-0`, the untrained adapter, before its first
//! rollout; a resumed run pushes its checkpoint's). Each step's episodes record the name that
//! sampled them ([`crate::env::Episode::sampled_by`]), so step `n + 1`'s episodes name
//! `sleuth-step-n`. When the collapse guard restores older weights the step count stays and
//! the weights change, so the name gains the restore count (`sleuth-step-n-r1`). A sync loads
//! the new name, then unloads the previous one and deletes its folder; the newest adapter's
//! folder stays (under the run folder's `adapters/`, the path the server reads, so a server
//! on another machine needs that folder on a shared file system).
//!
//! **Corrections.** The engine's log-probs of the sampled ids come back with them; the update
//! weights each token by `min(π_train / π_engine, tis_cap)` (TIS, on by default) and logs the
//! gap as `logprob_mismatch`, per step, as for quantized local rollouts.
//!
//! **Not here (yet).** Full-weight sync (no `[train] lora`) is refused: vLLM has no stable
//! API to load new full weights into a running server. One-step-off pipelining (step `n + 1`'s
//! rollouts during step `n`'s update) is not built: every step samples with the newest weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;

use super::TrainError;
use crate::env::remote::{RemoteOptions, RemotePolicy};
use crate::model::hf::export::ExportDtype;
use crate::model::hf::peft;
use crate::model::Llama;

/// The adapter loaded on the server now.
#[derive(Debug, Clone, PartialEq)]
struct Loaded {
    name: String,
    dir: PathBuf,
}

/// The server and the adapter it holds (module docs).
#[derive(Debug)]
pub struct ServedEngine {
    policy: RemotePolicy,
    /// Where adapter folders are written: `<run>/adapters` once the run folder is known, else
    /// a folder under the system's temporary directory.
    adapter_root: PathBuf,
    loaded: Option<Loaded>,
}

impl ServedEngine {
    /// A client for `opts`; nothing is sent until the first [`ServedEngine::sync`].
    ///
    /// # Errors
    /// [`TrainError::Engine`] for options [`RemotePolicy::new`] refuses.
    pub fn new(opts: &RemoteOptions) -> Result<Self, TrainError> {
        let policy = RemotePolicy::new(opts).map_err(|e| TrainError::Engine {
            reason: e.to_string(),
        })?;
        Ok(Self {
            policy,
            adapter_root: std::env::temp_dir()
                .join(format!("sleuth-adapters-{}", std::process::id())),
            loaded: None,
        })
    }

    /// Writes adapters under `dir/adapters` from now on (the run folder; [`super::run`] tells
    /// the trainer before its first step).
    pub fn set_run_dir(&mut self, dir: &Path) {
        self.adapter_root = dir.join("adapters");
    }

    /// The server.
    pub fn policy(&self) -> &RemotePolicy {
        &self.policy
    }

    /// Makes the server sample with `model`'s adapters, which hold the weights after step
    /// `step` (restored `restores` times by the collapse guard at that step count): writes
    /// them as a PEFT folder and loads it under a new name unless that name is loaded already;
    /// then unloads the previous name and removes its folder. Returns the name requests must
    /// use and the seconds the sync took (0 when nothing was sent).
    ///
    /// # Errors
    /// [`TrainError::Engine`] when the folder cannot be written or the server refuses the
    /// load (the previous adapter then stays loaded and in use; nothing of the run is lost).
    pub fn sync<B: Backend>(
        &mut self,
        model: &Llama<B>,
        step: usize,
        restores: usize,
    ) -> Result<(String, f64), TrainError> {
        let name = if restores == 0 {
            format!("sleuth-step-{step}")
        } else {
            format!("sleuth-step-{step}-r{restores}")
        };
        if self.loaded.as_ref().is_some_and(|l| l.name == name) {
            return Ok((name, 0.0));
        }
        let t0 = Instant::now();
        let engine_err = |reason: String| TrainError::Engine { reason };
        let dir = self.adapter_root.join(&name);
        // A folder of this name from an earlier process (a resumed run) is stale.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| engine_err(format!("removing {}: {e}", dir.display())))?;
        }
        std::fs::create_dir_all(&self.adapter_root)
            .map_err(|e| engine_err(format!("creating {}: {e}", self.adapter_root.display())))?;
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        peft::write_adapter(model, &self.policy.options().model, &dir, ExportDtype::F32)
            .map_err(|e| engine_err(format!("writing the adapter for the engine: {e}")))?;
        if self.loaded.is_none() {
            // This process's first push: the server may hold this name from a run that was
            // killed and resumed; its weights are not known to be these. Not loaded is fine.
            let _ = self.policy.unload_adapter(&name);
        }
        self.policy.load_adapter(&name, &dir).map_err(|e| {
            engine_err(format!(
                "the rollout engine refused adapter {name} ({}): {e}",
                dir.display()
            ))
        })?;
        if let Some(old) = self.loaded.replace(Loaded {
            name: name.clone(),
            dir,
        }) {
            if let Err(e) = self.policy.unload_adapter(&old.name) {
                tracing::warn!(adapter = %old.name, error = %e, "could not unload the previous adapter");
            }
            if let Err(e) = std::fs::remove_dir_all(&old.dir) {
                tracing::warn!(dir = %old.dir.display(), error = %e, "could not remove the previous adapter");
            }
        }
        Ok((name, t0.elapsed().as_secs_f64()))
    }
}
