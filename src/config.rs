//! Env/run configuration files (`envs/*.toml`): one struct per section, each owned by the
//! module it configures, assembled here.
//!
//! Every section uses `#[serde(default, deny_unknown_fields)]`: a missing key takes the
//! default stated once in that section's `impl Default`, a misspelt key is an error naming
//! it. Relative paths are taken relative to the working directory (run sleuth from the
//! repository root, as the README does); `prompt.demonstrations_file` is relative to the
//! config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::{PromptConfig, RolloutConfig};
use crate::reward::RewardKind;
use crate::rl::TrainConfig;

/// `[model]`: which policy to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// GGUF file of the policy. Default `models/SmolLM2-135M-Instruct.Q4_1.gguf` (what
    /// `scripts/setup` installs).
    pub path: PathBuf,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        }
    }
}

/// The `[search] backend` names [`SearchSection::open`] knows, stated once.
pub const SEARCH_BACKENDS: [&str; 7] = [
    "bm25",
    "graph-pg",
    "graph-kg",
    "graph-tkg",
    "graph-rkg",
    "graph-tree",
    "online",
];

/// `[search]`: the retriever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSection {
    /// Backend name: `"bm25"` (local tantivy index), `"graph-pg"` (BM25 seeds from `index`
    /// expanded along the passage graph `graph`, settings in `[search.graph_options]`),
    /// `"graph-kg"`, `"graph-tkg"`, `"graph-rkg"` (personalized PageRank over the knowledge
    /// graph `graph` of that kind, fused with BM25 from `index`, settings in
    /// `[search.kg_options]`), `"graph-tree"` (collapsed-tree retrieval over the RAPTOR tree
    /// `graph`, passages from `index`, settings in `[search.tree_options]`) or `"online"` (web
    /// search, settings in `[search.online]`). Default `"bm25"`.
    pub backend: String,
    /// Index directory built by `sleuth index build`. Default `index/wiki`.
    pub index: PathBuf,
    /// Graph file built by `sleuth index graph --kind pg|kg|tkg|rkg|tree` over the corpus of
    /// `index`; used by the `"graph-*"` backends. Default `index/pg`.
    pub graph: PathBuf,
    /// `[search.graph_options]`: the graph backend; defaults in
    /// [`crate::search::GraphOptions`].
    pub graph_options: crate::search::GraphOptions,
    /// `[search.kg_options]`: the knowledge-graph backends; defaults in
    /// [`crate::search::KgSearchOptions`].
    pub kg_options: crate::search::KgSearchOptions,
    /// `[search.tree_options]`: the tree backend; defaults in
    /// [`crate::search::TreeSearchOptions`].
    pub tree_options: crate::search::TreeSearchOptions,
    /// `[search.online]`: the online backend; defaults in [`crate::search::OnlineConfig`].
    pub online: crate::search::OnlineConfig,
}

impl Default for SearchSection {
    fn default() -> Self {
        Self {
            backend: "bm25".into(),
            index: PathBuf::from("index/wiki"),
            graph: PathBuf::from("index/pg"),
            graph_options: crate::search::GraphOptions::default(),
            kg_options: crate::search::KgSearchOptions::default(),
            tree_options: crate::search::TreeSearchOptions::default(),
            online: crate::search::OnlineConfig::default(),
        }
    }
}

impl SearchSection {
    /// Opens the configured backend: the BM25 index at `index` for `"bm25"`, a
    /// [`crate::search::GraphRetriever`] over `index` and `graph` for `"graph-pg"`, a
    /// [`crate::search::KgRetriever`] over `index` and `graph` for `"graph-kg"`, `"graph-tkg"`
    /// and `"graph-rkg"`, a [`crate::search::TreeRetriever`] over `index` and `graph` for
    /// `"graph-tree"`, an [`crate::search::OnlineRetriever`] with `online` for `"online"`.
    ///
    /// # Errors
    /// [`crate::search::SearchError::InvalidOption`] naming `backend` for an unknown backend
    /// name; [`crate::search::SearchError::Graph`] when a knowledge graph is of another kind
    /// than the backend names; otherwise whatever opening the backend returns.
    pub fn open(&self) -> Result<Box<dyn crate::search::Retriever>, crate::search::SearchError> {
        match self.backend.as_str() {
            "bm25" => Ok(Box::new(crate::search::Bm25Retriever::open(&self.index)?)),
            "graph-pg" => Ok(Box::new(crate::search::GraphRetriever::open_with(
                &self.index,
                &self.graph,
                crate::search::Bm25Options::default(),
                self.graph_options.clone(),
            )?)),
            "graph-kg" | "graph-tkg" | "graph-rkg" => {
                use crate::index::graph::GraphKind;
                let wanted = match self.backend.as_str() {
                    "graph-kg" => GraphKind::Kg,
                    "graph-tkg" => GraphKind::Tkg,
                    _ => GraphKind::Rkg,
                };
                let r = crate::search::KgRetriever::open_with(
                    &self.index,
                    &self.graph,
                    crate::search::Bm25Options::default(),
                    self.kg_options.clone(),
                )?;
                let found = r.graph().kind();
                if found != wanted {
                    return Err(crate::index::graph::GraphError::WrongKind {
                        path: self.graph.clone(),
                        found: found.describe(),
                        wanted: wanted.describe(),
                    }
                    .into());
                }
                Ok(Box::new(r))
            }
            "graph-tree" => Ok(Box::new(crate::search::TreeRetriever::open_with(
                &self.index,
                &self.graph,
                crate::search::Bm25Options::default(),
                self.tree_options.clone(),
            )?)),
            "online" => Ok(Box::new(crate::search::OnlineRetriever::new(
                self.online.clone(),
            )?)),
            other => Err(crate::search::SearchError::InvalidOption {
                name: "backend",
                reason: format!(
                    "unknown backend {other:?} (known: {})",
                    SEARCH_BACKENDS.join(", ")
                ),
            }),
        }
    }
}

/// `[reward]`: the reward rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSection {
    /// `stage1` or `stage2` (DESIGN §4). Default `stage1`.
    pub kind: RewardKind,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            kind: RewardKind::Stage1,
        }
    }
}

/// `[data]`: question sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Training questions (JSONL with `question`, `answer`). Default
    /// `../shared/data/qa/stage_1.jsonl`.
    pub train: PathBuf,
    /// Default evaluation set. Default `../shared/data/qa/hotpotqa_500.jsonl`.
    pub eval: PathBuf,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::from("../shared/data/qa/stage_1.jsonl"),
            eval: PathBuf::from("../shared/data/qa/hotpotqa_500.jsonl"),
        }
    }
}

/// A whole env/run configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Policy model.
    pub model: ModelSection,
    /// Retriever.
    pub search: SearchSection,
    /// Prompt template and demonstrations.
    pub prompt: PromptConfig,
    /// Rollout settings.
    pub rollout: RolloutConfig,
    /// Reward rule.
    pub reward: RewardSection,
    /// Question sets.
    pub data: DataSection,
    /// Trainer settings.
    pub train: TrainConfig,
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Config path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys.
    #[error("{path}: {source}")]
    Toml {
        /// Config path.
        path: PathBuf,
        /// Parser error (names line, column and key).
        source: toml::de::Error,
    },
    /// A referenced file could not be read.
    #[error(transparent)]
    Prompt(#[from] crate::env::prompt::PromptError),
}

impl RunConfig {
    /// Reads and validates a TOML config; loads any demonstrations file it names.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for TOML errors, the line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: RunConfig = toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.prompt.resolve_files(base)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in [
            "stage1",
            "stage2",
            "graph-pg",
            "graph-kg",
            "graph-tkg",
            "graph-rkg",
            "graph-tree",
            "online",
            "learning-demo",
        ] {
            let cfg = RunConfig::load(&root.join(format!("envs/{name}.toml"))).unwrap();
            assert!(
                !cfg.prompt.demonstrations.is_empty(),
                "{name} should carry a demonstration"
            );
        }
        // The cold-started policy is trained and evaluated without the crutch.
        let cold = RunConfig::load(&root.join("envs/learning-coldstart.toml")).unwrap();
        assert!(cold.prompt.demonstrations.is_empty());
        assert_eq!(
            cold.train,
            RunConfig::load(&root.join("envs/learning-demo.toml"))
                .unwrap()
                .train
        );
    }

    /// Every listed backend name is one `SearchSection::open` dispatches (opening fails on the
    /// missing index, not on the name), and an unlisted one is refused naming the list.
    #[test]
    fn every_listed_backend_is_dispatched() {
        let dir = tempfile::tempdir().unwrap();
        for name in SEARCH_BACKENDS {
            let section = SearchSection {
                backend: name.to_string(),
                index: dir.path().join("missing-index"),
                graph: dir.path().join("missing-graph"),
                ..Default::default()
            };
            if let Err(e) = section.open() {
                assert!(!e.to_string().contains("unknown backend"), "{name}: {e}");
            }
        }
        let bad = SearchSection {
            backend: "bm26".into(),
            ..Default::default()
        };
        let e = bad.open().err().expect("unknown backend").to_string();
        assert!(
            e.contains("unknown backend") && e.contains("graph-tree"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[rollout]\nsamples_per_questoin = 3\n").unwrap();
        let err = RunConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("samples_per_questoin") && err.contains("bad.toml"),
            "{err}"
        );
    }
}
