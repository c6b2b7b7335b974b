//! Graph-RAG retrieval over a RAPTOR tree ([`crate::index::graph::TreeIndex`]): RAPTOR's
//! *collapsed-tree* retrieval (Sarthi et al. 2024, arXiv 2401.18059), which searches all levels
//! together.
//!
//! The query is embedded with the tree's own embedder (a TF-IDF tree's is rebuilt from the
//! vocabulary in the file; a MiniLM tree's is loaded from [`TreeSearchOptions::embedder_model`]),
//! every node, leaves and summaries alike, is scored by the dot product of the unit embeddings
//! (their cosine), and the best `k` with a positive score come back:
//!
//! - a **leaf** is its passage, text fetched from the BM25 index by id as the other graph
//!   retrievers do (the tree stores ids, not passage text);
//! - a **summary node** is a hit whose `id` is `summary:<node>` ([`SUMMARY_ID_PREFIX`]), whose
//!   `title` is `Summary: <title of its central passage>` and whose `text` is the extractive
//!   summary.
//!
//! **Summaries and evaluation.** Support recall (`sleuth eval --retrieval`) counts gold
//! *titles* among the hits; a summary hit's title is never a gold title, so every summary in the
//! top k costs a slot. Answer hit counts the answer string in any hit's text, so a summary can
//! score there. [`TreeSearchOptions::expand_summaries`] replaces each summary hit by its
//! [`TreeSearchOptions::expand_leaves`] best passages under it (by the same cosine, those not
//! already returned), which makes the list comparable with the passage retrievers.
//!
//! **Fusion with BM25** ([`TreeSearchOptions::bm25_weight`]): BM25's top
//! [`TreeSearchOptions::bm25_candidates`] passages get their max-scaled BM25 score times the
//! weight added to their leaf's cosine, as the knowledge-graph retriever fuses PageRank.
//!
//! **Why these defaults** (hotpotqa_500, docs/graph-rag.md). With the hashed TF-IDF embedder
//! the tree alone reaches support recall@5 .28 against BM25's .71, and summaries take a fifth
//! of its top-5 slots. Fused with weight 1 it gains 0.8 points of recall@5 over BM25 (.715),
//! the best of weights 0.5, 1 and 2. With fusion, summaries almost never reach the top 5, so
//! expansion changes nothing measurable there; it is on so that every hit is a passage.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Bm25Options, Bm25Retriever, Hit, Retriever, SearchError};
use crate::embed::{Embedder, DEFAULT_MINILM_DIR};
use crate::index::graph::{dot, GraphError, TreeIndex};

/// Prefix of a summary hit's id; the node number follows, e.g. `summary:48250`.
pub const SUMMARY_ID_PREFIX: &str = "summary:";
/// Prefix of a summary hit's title; the title of its central passage follows.
pub const SUMMARY_TITLE_PREFIX: &str = "Summary: ";
/// Default BM25 passages fetched per query for fusion.
pub const DEFAULT_TREE_BM25_CANDIDATES: usize = 20;
/// Default weight of the max-scaled BM25 score added to a leaf's cosine.
pub const DEFAULT_TREE_BM25_WEIGHT: f32 = 1.0;
/// Default number of passages a summary hit expands to.
pub const DEFAULT_TREE_EXPAND_LEAVES: usize = 2;

/// Knobs of the tree retriever. `Default` gives the documented defaults; as a config section
/// (`[search.tree_options]`) it reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TreeSearchOptions {
    /// Weight of the max-scaled BM25 score added to a leaf's cosine; finite, non-negative (`0`:
    /// the tree alone, pure collapsed-tree retrieval). Default: [`DEFAULT_TREE_BM25_WEIGHT`].
    pub bm25_weight: f32,
    /// BM25 passages fetched per query when `bm25_weight > 0`; at least 1.
    /// Default: [`DEFAULT_TREE_BM25_CANDIDATES`].
    pub bm25_candidates: usize,
    /// Replace each summary hit by its best passages. Default: `true`.
    pub expand_summaries: bool,
    /// Passages a summary hit expands to; at least 1. Default: [`DEFAULT_TREE_EXPAND_LEAVES`].
    pub expand_leaves: usize,
    /// The all-MiniLM-L6-v2 model folder that embeds queries against a MiniLM tree (unused for
    /// a TF-IDF tree). Default: [`DEFAULT_MINILM_DIR`], as `scripts/setup` installs it.
    pub embedder_model: PathBuf,
}

impl Default for TreeSearchOptions {
    fn default() -> Self {
        Self {
            bm25_weight: DEFAULT_TREE_BM25_WEIGHT,
            bm25_candidates: DEFAULT_TREE_BM25_CANDIDATES,
            expand_summaries: true,
            expand_leaves: DEFAULT_TREE_EXPAND_LEAVES,
            embedder_model: PathBuf::from(DEFAULT_MINILM_DIR),
        }
    }
}

impl TreeSearchOptions {
    fn validate(&self) -> Result<(), SearchError> {
        let bad = |name, reason: String| Err(SearchError::InvalidOption { name, reason });
        if !self.bm25_weight.is_finite() || self.bm25_weight < 0.0 {
            return bad(
                "bm25_weight",
                format!("{} is not a finite non-negative number", self.bm25_weight),
            );
        }
        if self.bm25_candidates == 0 {
            return bad("bm25_candidates", "must be at least 1".into());
        }
        if self.expand_leaves == 0 {
            return bad("expand_leaves", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Collapsed-tree retrieval over a RAPTOR tree, passages from a BM25 index (module doc).
pub struct TreeRetriever {
    bm25: Bm25Retriever,
    tree: TreeIndex,
    embedder: Box<dyn Embedder>,
    tree_path: PathBuf,
    opts: TreeSearchOptions,
}

impl std::fmt::Debug for TreeRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeRetriever")
            .field("tree_path", &self.tree_path)
            .field("embedder", &self.tree.embedder_kind())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl TreeRetriever {
    /// Opens the BM25 index `index` and the tree file `tree` with default options.
    ///
    /// # Errors
    /// See [`TreeRetriever::open_with`].
    pub fn open(index: impl AsRef<Path>, tree: impl AsRef<Path>) -> Result<Self, SearchError> {
        Self::open_with(
            index,
            tree,
            Bm25Options::default(),
            TreeSearchOptions::default(),
        )
    }

    /// Opens the BM25 index `index` and the tree file `tree`.
    ///
    /// # Errors
    /// [`SearchError::InvalidOption`] for an option out of range; what
    /// [`Bm25Retriever::open_with`] returns; [`SearchError::Graph`] when the tree cannot be read
    /// ([`TreeIndex::read`]) or has another passage count than the index
    /// ([`GraphError::IndexMismatch`]), and [`GraphError::Embed`] when a MiniLM tree's model
    /// cannot be loaded from [`TreeSearchOptions::embedder_model`].
    pub fn open_with(
        index: impl AsRef<Path>,
        tree: impl AsRef<Path>,
        bm25: Bm25Options,
        opts: TreeSearchOptions,
    ) -> Result<Self, SearchError> {
        opts.validate()?;
        let bm25 = Bm25Retriever::open_with(index, bm25)?;
        let tree_path = tree.as_ref().to_path_buf();
        let tree = TreeIndex::read(&tree_path)?;
        super::graph::same_corpus(
            &tree_path,
            "tree",
            tree.num_passages() as u64,
            "leaves",
            &bm25,
        )?;
        let embedder = tree
            .embedder(&opts.embedder_model)
            .map_err(|e| SearchError::Graph(GraphError::Embed(e)))?;
        tracing::debug!(tree = %tree_path.display(), nodes = tree.num_nodes(), levels = tree.num_levels(), "opened tree");
        Ok(Self {
            bm25,
            tree,
            embedder,
            tree_path,
            opts,
        })
    }

    /// The tree.
    pub fn tree(&self) -> &TreeIndex {
        &self.tree
    }

    /// The tree file.
    pub fn tree_path(&self) -> &Path {
        &self.tree_path
    }

    /// The BM25 retriever that holds the passage text.
    pub fn bm25(&self) -> &Bm25Retriever {
        &self.bm25
    }

    /// The options in use.
    pub fn options(&self) -> &TreeSearchOptions {
        &self.opts
    }

    /// Every node's score for `query`: the cosine of the embeddings, plus for BM25's candidates
    /// the weighted max-scaled BM25 score (module doc). One value per node.
    ///
    /// # Errors
    /// What BM25 search returns when fusion is on.
    pub fn node_scores(&self, query: &str) -> Result<Vec<f32>, SearchError> {
        let q = self.embedder.embed(query);
        let d = self.tree.dims();
        let mut scores: Vec<f32> = self
            .tree
            .embeddings()
            .chunks_exact(d)
            .map(|e| dot(e, &q))
            .collect();
        if self.opts.bm25_weight > 0.0 {
            let hits = self.bm25.search(query, self.opts.bm25_candidates)?;
            let max = hits.iter().map(|h| h.score).fold(0f32, f32::max);
            if max > 0.0 {
                for h in &hits {
                    if let Some(u) = self.tree.passage_node(&h.id) {
                        scores[u as usize] += self.opts.bm25_weight * h.score / max;
                    }
                }
            }
        }
        Ok(scores)
    }

    fn leaf_hit(&self, node: u32, score: f32) -> Result<Option<Hit>, SearchError> {
        Ok(self.bm25.get(self.tree.passage_id(node))?.map(|p| Hit {
            id: p.id,
            title: p.title,
            text: p.text,
            score,
        }))
    }
}

impl Retriever for TreeRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let scores = self.node_scores(query)?;
        let mut ranked: Vec<(f32, u32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, &s)| s > 0.0 && s.is_finite())
            .map(|(u, &s)| (s, u as u32))
            .collect();
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        // Enough candidates for k hits even when summaries expand into leaves already taken.
        let keep = (k * (self.opts.expand_leaves + 1)).max(k + 16);
        if ranked.len() > keep {
            ranked.select_nth_unstable_by(keep, by_score);
            ranked.truncate(keep);
        }
        ranked.sort_by(by_score);
        let mut hits = Vec::with_capacity(k);
        let mut taken: HashSet<u32> = HashSet::new();
        let mut titles: HashMap<u32, String> = HashMap::new();
        for (s, u) in ranked {
            if hits.len() == k {
                break;
            }
            if self.tree.is_leaf(u) {
                if taken.insert(u) {
                    if let Some(h) = self.leaf_hit(u, s)? {
                        hits.push(h);
                    }
                }
                continue;
            }
            if self.opts.expand_summaries {
                let mut leaves: Vec<(f32, u32)> = self
                    .tree
                    .leaves_under(u)
                    .into_iter()
                    .filter(|l| !taken.contains(l))
                    .map(|l| (scores[l as usize], l))
                    .collect();
                leaves.sort_by(by_score);
                for (_, l) in leaves.into_iter().take(self.opts.expand_leaves) {
                    if hits.len() == k {
                        break;
                    }
                    taken.insert(l);
                    // An expanded passage ranks where its summary did.
                    if let Some(h) = self.leaf_hit(l, s)? {
                        hits.push(h);
                    }
                }
                continue;
            }
            let central = self.tree.central_leaf(u);
            let title = match titles.get(&central) {
                Some(t) => t.clone(),
                None => {
                    let t = self
                        .bm25
                        .get(self.tree.passage_id(central))?
                        .map_or_else(String::new, |p| p.title);
                    titles.insert(central, t.clone());
                    t
                }
            };
            hits.push(Hit {
                id: format!("{SUMMARY_ID_PREFIX}{u}"),
                title: format!("{SUMMARY_TITLE_PREFIX}{title}"),
                text: self.tree.summary(u).unwrap_or_default().to_string(),
                score: s,
            });
        }
        Ok(hits)
    }
}
