//! `[search]`: which retriever a run uses, and the one place that opens it.
//!
//! The section belongs to the search layer, beside the backends it names, so the `sleuth`
//! crate's `config` stays a schema that places sections and never builds anything. The backend
//! is an enum: a misspelt name is refused when the config is read (serde names the known
//! ones), not when a command first searches.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    Bm25Options, Bm25Retriever, GraphOptions, GraphRetriever, HttpRetriever, HttpSearchOptions,
    KgRetriever, KgSearchOptions, OnlineConfig, Retriever, SearchError, TreeRetriever,
    TreeSearchOptions,
};
use crate::index::graph::{GraphError, GraphKind};

/// `[search] backend`: the retriever a run searches with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchBackend {
    /// `"bm25"`: the local tantivy index at `index` ([`Bm25Retriever`]).
    #[default]
    Bm25,
    /// `"graph-pg"`: BM25 seeds from `index` expanded along the passage graph `graph`
    /// ([`GraphRetriever`], `[search.graph_options]`).
    GraphPg,
    /// `"graph-kg"`: personalized PageRank over the knowledge graph `graph`, fused with BM25
    /// from `index` ([`KgRetriever`], `[search.kg_options]`).
    GraphKg,
    /// `"graph-tkg"`: as `graph-kg` over a textual knowledge graph.
    GraphTkg,
    /// `"graph-rkg"`: as `graph-kg` over a rich knowledge graph.
    GraphRkg,
    /// `"graph-tree"`: collapsed-tree retrieval over the RAPTOR tree `graph`, passages from
    /// `index` ([`TreeRetriever`], `[search.tree_options]`).
    GraphTree,
    /// `"online"`: web search ([`OnlineRetriever`](super::OnlineRetriever), `[search.online]`;
    /// built with the `online` feature).
    Online,
    /// `"http"`: a retrieval server such as `sleuth retrieval-server` ([`HttpRetriever`],
    /// `[search.http]`).
    Http,
}

impl SearchBackend {
    /// Every backend, in the order the docs list them.
    pub const ALL: [SearchBackend; 8] = [
        Self::Bm25,
        Self::GraphPg,
        Self::GraphKg,
        Self::GraphTkg,
        Self::GraphRkg,
        Self::GraphTree,
        Self::Online,
        Self::Http,
    ];

    /// The name a config writes (`"graph-pg"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bm25 => "bm25",
            Self::GraphPg => "graph-pg",
            Self::GraphKg => "graph-kg",
            Self::GraphTkg => "graph-tkg",
            Self::GraphRkg => "graph-rkg",
            Self::GraphTree => "graph-tree",
            Self::Online => "online",
            Self::Http => "http",
        }
    }
}

impl std::fmt::Display for SearchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[search]`: the retriever. Defaults stated once, in `impl Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSection {
    /// The backend ([`SearchBackend`] names each and the settings it reads). Default `"bm25"`.
    pub backend: SearchBackend,
    /// Index directory built by `sleuth index build`. Default `index/wiki`.
    pub index: PathBuf,
    /// Graph file built by `sleuth index graph --kind pg|kg|tkg|rkg|tree` over the corpus of
    /// `index`; used by the `"graph-*"` backends. Default `index/pg`.
    pub graph: PathBuf,
    /// `[search.graph_options]`: the graph backend; defaults in [`GraphOptions`].
    pub graph_options: GraphOptions,
    /// `[search.kg_options]`: the knowledge-graph backends; defaults in [`KgSearchOptions`].
    pub kg_options: KgSearchOptions,
    /// `[search.tree_options]`: the tree backend; defaults in [`TreeSearchOptions`].
    pub tree_options: TreeSearchOptions,
    /// `[search.online]`: the online backend; defaults in [`OnlineConfig`].
    pub online: OnlineConfig,
    /// `[search.http]`: the retrieval-server backend; defaults in [`HttpSearchOptions`].
    pub http: HttpSearchOptions,
}

impl Default for SearchSection {
    fn default() -> Self {
        Self {
            backend: SearchBackend::Bm25,
            index: PathBuf::from("index/wiki"),
            graph: PathBuf::from("index/pg"),
            graph_options: GraphOptions::default(),
            kg_options: KgSearchOptions::default(),
            tree_options: TreeSearchOptions::default(),
            online: OnlineConfig::default(),
            http: HttpSearchOptions::default(),
        }
    }
}

impl SearchSection {
    /// Opens the configured backend over `index` and, for the graph kinds, `graph`
    /// ([`SearchBackend`] says which retriever each is).
    ///
    /// # Errors
    /// [`SearchError::Graph`] when a knowledge graph is of another kind than the backend
    /// names; otherwise whatever opening the backend returns (a missing index or graph names
    /// its path).
    pub fn open(&self) -> Result<Box<dyn Retriever>, SearchError> {
        let kg = |wanted: GraphKind| -> Result<Box<dyn Retriever>, SearchError> {
            let r = KgRetriever::open_with(
                &self.index,
                &self.graph,
                Bm25Options::default(),
                self.kg_options.clone(),
            )?;
            let found = r.graph().kind();
            if found != wanted {
                return Err(GraphError::WrongKind {
                    path: self.graph.clone(),
                    found: found.describe(),
                    wanted: wanted.describe(),
                }
                .into());
            }
            Ok(Box::new(r))
        };
        Ok(match self.backend {
            SearchBackend::Bm25 => Box::new(Bm25Retriever::open(&self.index)?),
            SearchBackend::GraphPg => Box::new(GraphRetriever::open_with(
                &self.index,
                &self.graph,
                Bm25Options::default(),
                self.graph_options.clone(),
            )?),
            SearchBackend::GraphKg => kg(GraphKind::Kg)?,
            SearchBackend::GraphTkg => kg(GraphKind::Tkg)?,
            SearchBackend::GraphRkg => kg(GraphKind::Rkg)?,
            SearchBackend::GraphTree => Box::new(TreeRetriever::open_with(
                &self.index,
                &self.graph,
                Bm25Options::default(),
                self.tree_options.clone(),
            )?),
            #[cfg(feature = "online")]
            SearchBackend::Online => Box::new(super::OnlineRetriever::new(self.online.clone())?),
            #[cfg(not(feature = "online"))]
            SearchBackend::Online => {
                return Err(SearchError::Online {
                    engine: self.online.engine.name(),
                    url: self.online.base_url.clone(),
                    reason: "this build has no online backend (sleuth-retrieval's `online` \
                             feature is off)"
                        .into(),
                })
            }
            SearchBackend::Http => Box::new(HttpRetriever::new(&self.http)?),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every backend name a config can write reads back as its variant, `name` agrees with
    /// serde, and a misspelt one is refused when the section is read, naming the known ones.
    #[test]
    fn backend_names_round_trip_and_a_misspelt_one_is_refused_at_load() {
        for b in SearchBackend::ALL {
            let s: SearchSection = toml::from_str(&format!("backend = \"{b}\"\n")).unwrap();
            assert_eq!(s.backend, b);
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.name())
            );
        }
        let e = toml::from_str::<SearchSection>("backend = \"bm26\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bm26") && e.contains("graph-tree"), "{e}");
    }

    /// Each backend opens its own retriever: with nothing on disk, the local ones fail naming
    /// the missing index (not some other backend's setting), and the network ones build.
    #[test]
    fn every_backend_is_dispatched() {
        let dir = tempfile::tempdir().unwrap();
        for b in SearchBackend::ALL {
            let section = SearchSection {
                backend: b,
                index: dir.path().join("missing-index"),
                graph: dir.path().join("missing-graph"),
                ..Default::default()
            };
            match (b, section.open()) {
                (SearchBackend::Online | SearchBackend::Http, r) => {
                    assert!(r.is_ok(), "{b}: {:?}", r.err());
                }
                (_, Ok(_)) => panic!("{b} opened with no index on disk"),
                (_, Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains("missing-"), "{b}: {e}");
                }
            }
        }
    }
}
