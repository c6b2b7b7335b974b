//! The `sleuth` subcommands: each command's flags (a clap `Args` struct) and its body
//! (`run_*`), one file per command family.
//!
//! This is the binary crate (the workspace's root package), the only one that depends on clap
//! and anyhow: as ripgrep's binary turns flags into library objects, each body here turns its
//! flags into the library crates' plain option structs and calls them. The bodies live in one
//! folder rather than beside each concept because most of them read a [`RunConfig`], which
//! holds a section of every library module.
//!
//! Every `run_*` returns `anyhow::Result`: a command glues several modules together, so its
//! errors carry context (which file, which flag) rather than one module's error enum.
//! `serve` and `chat` return the library's `ServeError`.

pub mod collect;
pub mod data;
pub mod eval;
pub mod index;
pub mod model;
pub mod plot;
pub mod rollout;
pub mod search;
pub mod serve;
pub mod train;

use std::path::Path;

use anyhow::{bail, Context, Result};

use sleuth::config::RunConfig;
use sleuth::model::LoadedModel;
use sleuth::rl::checkpoint;
use sleuth::search::{Bm25Retriever, Retriever};

/// Opens a BM25 index; the error says how to build one.
pub fn open_retriever(index: &Path) -> Result<Bm25Retriever> {
    Bm25Retriever::open(index).with_context(|| {
        format!(
            "opening index {} (build it with `sleuth index build` or scripts/setup)",
            index.display()
        )
    })
}

/// The retriever a config's `[search]` section names (BM25, a graph-RAG kind, or online).
pub fn open_search(cfg: &RunConfig) -> Result<Box<dyn Retriever>> {
    if cfg.search.backend == sleuth::config::SearchBackend::Bm25 {
        return Ok(Box::new(open_retriever(&cfg.search.index)?));
    }
    Ok(cfg.search.open()?)
}

/// The environment `cfg` describes around `tokenizer`: its `[search]` retriever, prompt and
/// rollout settings.
pub fn env_for(cfg: &RunConfig, tokenizer: sleuth::model::Tokenizer) -> Result<sleuth::env::Env> {
    Ok(sleuth::env::Env {
        tokenizer,
        retriever: std::sync::Arc::from(open_search(cfg)?),
        prompt: cfg.prompt.clone(),
        rollout: cfg.rollout.clone(),
    })
}

/// Loads a policy (weights, architecture, tokenizer) from a GGUF file or a Hugging Face model
/// directory, with the PEFT LoRA adapter in `lora` applied on top when given
/// ([`sleuth::model::hf::peft::apply_adapter`]); the error says how to install the default
/// model, or names the adapter file at fault.
pub fn load_model<B: burn::tensor::backend::Backend>(
    path: &Path,
    lora: Option<&Path>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let mut loaded = sleuth::model::load::<B>(path, device).with_context(|| {
        format!(
            "loading model {} (run scripts/setup to install the default model)",
            path.display()
        )
    })?;
    if let Some(dir) = lora {
        loaded.model = sleuth::model::hf::peft::apply_adapter(loaded.model, dir)
            .with_context(|| format!("applying the LoRA adapter {}", dir.display()))?;
    }
    Ok(loaded)
}

/// `--lora DIR` of a config-driven command: the adapter replaces `[model] lora`.
pub fn lora_flag(cfg: &mut RunConfig, lora: Option<&Path>) {
    if let Some(dir) = lora {
        cfg.model.lora = Some(dir.to_path_buf());
    }
}

/// Refuses a config whose policy is served elsewhere: only `eval` and `collect` sample from
/// a remote policy.
pub fn require_local(cfg: &RunConfig) -> Result<()> {
    if cfg.model.backend != sleuth::config::PolicyBackend::Local {
        anyhow::bail!(
            "[model] backend = \"openai\" is supported by `eval` and `collect` only; this command runs the policy in-process"
        );
    }
    Ok(())
}

/// Loads only the tokenizer of a model (GGUF file or Hugging Face directory).
pub fn load_tokenizer(path: &Path) -> Result<sleuth::model::Tokenizer> {
    sleuth::model::load_tokenizer(path)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))
}

/// Loads the model named by the config, replacing its weights by a checkpoint's when given.
pub fn load_policy<B: burn::tensor::backend::Backend>(
    cfg: &RunConfig,
    checkpoint_dir: Option<&Path>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    require_local(cfg)?;
    let mut loaded = load_model::<B>(&cfg.model.path, cfg.model.lora.as_deref(), device)?;
    if let Some(run) = checkpoint_dir {
        (loaded.model, loaded.config) = checkpoint::load_saved(run, device)?;
    }
    Ok(loaded)
}

/// The policy `eval` and `collect` sample from: the config's weights in this process (or a
/// checkpoint's), or a completions server (`[model] backend = "openai"`).
pub enum EvalPolicy {
    /// Weights loaded here; decoded with `[rollout] weights`.
    Local(Box<LoadedModel<sleuth::model::backend::Inference>>),
    /// A remote server, with the local tokenizer episodes are encoded with.
    Remote(Box<(sleuth::env::remote::RemotePolicy, sleuth::model::Tokenizer)>),
}

impl EvalPolicy {
    /// Loads the policy `cfg` names; `checkpoint` (local weights) is refused for a remote one.
    pub fn load(cfg: &RunConfig, checkpoint: Option<&Path>) -> Result<Self> {
        if cfg.model.backend == sleuth::config::PolicyBackend::Openai {
            if checkpoint.is_some() {
                bail!("--checkpoint loads local weights; [model] backend = \"openai\" samples from the server");
            }
            let tokenizer = load_tokenizer(&cfg.model.path)?;
            let remote = sleuth::env::remote::RemotePolicy::new(&cfg.model.openai)?;
            return Ok(Self::Remote(Box::new((remote, tokenizer))));
        }
        let device = sleuth::model::backend::device();
        let loaded = load_policy(cfg, checkpoint, &device)?;
        Ok(Self::Local(Box::new(loaded)))
    }

    /// Runs `f` with the policy (a local one built as the engine `weights` names) and its
    /// tokenizer.
    pub fn with<T>(
        &self,
        weights: sleuth::model::DecodeWeights,
        f: impl FnOnce(&dyn sleuth::env::Policy, &sleuth::model::Tokenizer) -> T,
    ) -> T {
        match self {
            Self::Local(m) => f(&sleuth::model::Engine::new(&m.model, weights), &m.tokenizer),
            Self::Remote(rt) => f(&rt.0, &rt.1),
        }
    }
}
