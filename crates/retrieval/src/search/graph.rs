//! Graph-RAG retrieval over a passage graph ([`crate::index::graph`]): BM25 seeds, then one
//! step of neighbour expansion.
//!
//! A query first runs through the BM25 index built over the same corpus, giving the top
//! [`GraphOptions::seeds`] passages `S` with scores `s(u)`. Every seed offers part of its score
//! to its graph neighbours, each candidate (a seed or a seed's neighbour) keeps the largest
//! offer, and candidates are ranked by
//!
//! ```text
//! score(v) = s(v) + α · max_{u ∈ S, u ~ v} ŵ(u, v) · s(u),      ŵ(u, v) = w(u, v) / max_x w(u, x)
//! ```
//!
//! where `s(v) = 0` for a passage BM25 did not return, `w` is the edge weight (the summed IDF of
//! the shared entities) and `α` is [`GraphOptions::alpha`]. Normalising each seed's edges by its
//! strongest edge keeps the offer on the BM25 scale whatever the entity counts: a neighbour
//! joined to seed `u` by `u`'s strongest edge is offered `α · s(u)`. So a passage the query does
//! not mention, but which a top passage points to by a rare shared name (the second hop of a
//! bridge question), can enter the top k.
//!
//! **Max, not sum.** Summing the offers of all seeds was measured first and lost recall
//! (docs/graph-rag.md): the seeds of one query are often about one topic and densely linked to
//! each other, so a sum rewards hub passages that many seeds touch rather than the one passage
//! a top seed points to. The defaults (`α` = 0.25, 20 seeds) are the best of the α × seeds grid
//! measured there.
//!
//! Passages outside the seed set are loaded from the BM25 index by id ([`Bm25Retriever::get`]);
//! the graph stores passage ids, not text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Bm25Options, Bm25Retriever, Hit, Retriever, SearchError};
use crate::index::graph::{GraphError, PassageGraph};

/// Default number of BM25 seeds expanded per query.
pub const DEFAULT_GRAPH_SEEDS: usize = 20;
/// Default weight α of the score spread along graph edges.
pub const DEFAULT_GRAPH_ALPHA: f32 = 0.25;

/// Knobs of the graph retriever. `Default` gives the documented defaults; as a config section
/// it reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphOptions {
    /// BM25 passages taken as seeds (at least `k` are taken anyway); at least 1.
    /// Default: [`DEFAULT_GRAPH_SEEDS`].
    pub seeds: usize,
    /// Weight α of the score a seed offers its neighbours; finite and non-negative (`0`
    /// gives plain BM25 order). Default: [`DEFAULT_GRAPH_ALPHA`].
    pub alpha: f32,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self {
            seeds: DEFAULT_GRAPH_SEEDS,
            alpha: DEFAULT_GRAPH_ALPHA,
        }
    }
}

impl GraphOptions {
    fn validate(&self) -> Result<(), SearchError> {
        if self.seeds == 0 {
            return Err(SearchError::InvalidOption {
                name: "seeds",
                reason: "must be at least 1".into(),
            });
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return Err(SearchError::InvalidOption {
                name: "alpha",
                reason: format!("{} is not a finite non-negative number", self.alpha),
            });
        }
        Ok(())
    }
}

/// A [`Retriever`] that expands BM25 seeds along a passage graph (module doc).
#[derive(Debug)]
pub struct GraphRetriever {
    bm25: Bm25Retriever,
    graph: PassageGraph,
    graph_path: PathBuf,
    opts: GraphOptions,
}

impl GraphRetriever {
    /// Opens the BM25 index in `index` and the graph file `graph` with default options.
    ///
    /// # Errors
    /// See [`GraphRetriever::open_with`].
    pub fn open(index: impl AsRef<Path>, graph: impl AsRef<Path>) -> Result<Self, SearchError> {
        Self::open_with(
            index,
            graph,
            Bm25Options::default(),
            GraphOptions::default(),
        )
    }

    /// Opens the BM25 index in `index` (with `bm25` options) and the graph file `graph`.
    ///
    /// # Errors
    /// What [`Bm25Retriever::open_with`] returns; [`SearchError::Graph`] when the graph file is
    /// unreadable, truncated or corrupt (naming it), or was built over another corpus (its node
    /// count differs from the index's passage count); [`SearchError::InvalidOption`] for an
    /// option out of range.
    pub fn open_with(
        index: impl AsRef<Path>,
        graph: impl AsRef<Path>,
        bm25: Bm25Options,
        opts: GraphOptions,
    ) -> Result<Self, SearchError> {
        opts.validate()?;
        let bm25 = Bm25Retriever::open_with(index, bm25)?;
        let graph_path = graph.as_ref().to_path_buf();
        let graph = PassageGraph::read(&graph_path)?;
        same_corpus(
            &graph_path,
            "graph",
            graph.num_nodes() as u64,
            "nodes",
            &bm25,
        )?;
        tracing::debug!(
            graph = %graph_path.display(),
            nodes = graph.num_nodes(),
            edges = graph.num_edges(),
            "opened passage graph"
        );
        Ok(Self {
            bm25,
            graph,
            graph_path,
            opts,
        })
    }

    /// The graph in use.
    pub fn graph(&self) -> &PassageGraph {
        &self.graph
    }

    /// The graph file.
    pub fn graph_path(&self) -> &Path {
        &self.graph_path
    }

    /// The BM25 retriever that gives the seeds.
    pub fn bm25(&self) -> &Bm25Retriever {
        &self.bm25
    }

    /// The options in force.
    pub fn options(&self) -> &GraphOptions {
        &self.opts
    }
}

impl Retriever for GraphRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let seeds = self.bm25.search(query, self.opts.seeds.max(k))?;
        // Seeds with their BM25 hits, and the best offer each candidate received.
        let mut seed_hits: HashMap<u32, Hit> = HashMap::new();
        let mut offer: HashMap<u32, f32> = HashMap::new();
        // Hits whose id the graph lacks (impossible for a graph built from the index's corpus):
        // ranked by their BM25 score alone rather than dropped.
        let mut orphans: Vec<Hit> = Vec::new();
        for hit in seeds {
            let Some(u) = self.graph.node(&hit.id) else {
                orphans.push(hit);
                continue;
            };
            let s = hit.score;
            let wmax = self.graph.neighbors(u).map(|(_, w)| w).fold(0f32, f32::max);
            if wmax > 0.0 && self.opts.alpha > 0.0 {
                for (v, w) in self.graph.neighbors(u) {
                    let best = offer.entry(v).or_default();
                    *best = best.max(self.opts.alpha * (w / wmax) * s);
                }
            }
            seed_hits.insert(u, hit);
        }
        let mut score: HashMap<u32, f32> = offer;
        for (&u, hit) in &seed_hits {
            *score.entry(u).or_default() += hit.score;
        }
        let mut ranked: Vec<(f32, &str, Option<u32>)> = score
            .into_iter()
            .map(|(v, s)| (s, self.graph.id(v), Some(v)))
            .chain(orphans.iter().map(|h| (h.score, h.id.as_str(), None)))
            .collect();
        // Best first; equal scores in passage-id order, so results do not depend on hashing.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut hits = Vec::with_capacity(k.min(ranked.len()));
        for (s, id, node) in ranked {
            if hits.len() == k {
                break;
            }
            let hit = match node.and_then(|v| seed_hits.get(&v)) {
                Some(h) => h.clone(),
                None => match node {
                    None => orphans
                        .iter()
                        .find(|h| h.id == id)
                        .cloned()
                        .expect("orphans are ranked from the list"),
                    Some(_) => match self.bm25.get(id)? {
                        Some(p) => Hit {
                            id: p.id,
                            title: p.title,
                            text: p.text,
                            score: 0.0,
                        },
                        // The index lacks a passage the graph has: skip it rather than fail.
                        None => continue,
                    },
                },
            };
            hits.push(Hit { score: s, ..hit });
        }
        Ok(hits)
    }
}

/// Checks that a graph-RAG file was built over the corpus of `bm25`'s index: its `count`
/// (`unit`: nodes, passages, leaves) must equal the index's passage count.
///
/// # Errors
/// [`SearchError::Graph`] wrapping [`GraphError::IndexMismatch`], naming both paths.
pub(crate) fn same_corpus(
    path: &Path,
    kind: &str,
    count: u64,
    unit: &str,
    bm25: &Bm25Retriever,
) -> Result<(), SearchError> {
    if count == bm25.num_passages() {
        return Ok(());
    }
    Err(GraphError::IndexMismatch {
        graph: path.to_path_buf(),
        index: bm25.path().to_path_buf(),
        reason: format!(
            "the {kind} has {count} {unit}, the index {} passages (rebuild the {kind} from the index's corpus)",
            bm25.num_passages()
        ),
    }
    .into())
}
