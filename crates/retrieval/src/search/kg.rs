//! Graph-RAG retrieval over a knowledge graph (KG, textual KG or rich KG of
//! [`crate::index::graph`]): seed entities, personalized PageRank over the entity graph, then
//! passages ranked by their entities' scores, as in HippoRAG (Gutiérrez et al., 2024) and the
//! KG operators of arXiv 2503.04338.
//!
//! A query is answered in four steps.
//!
//! 1. **Seeds.** The query's entities are linked with the same [`EntityLinker`] the builder
//!    used, its gazetteer built from the graph's entity names (so every linked span is a node).
//!    For a TKG or RKG, when linking finds none, the query's words are matched against an
//!    in-memory inverted index of entity names and descriptions and of relation keywords (a
//!    relation's keyword stands for its head and tail), and the best
//!    [`KgSearchOptions::description_seeds`] entities by summed term IDF become the seeds. When
//!    that finds none too (and always for a KG without linked entities), the entities of BM25's
//!    top [`KgSearchOptions::fallback_passages`] passages are the seeds. A seed's weight is its
//!    specificity `1 / (passages it is linked in)`, HippoRAG's node specificity, so a rare name
//!    outweighs a common one.
//! 2. **Personalized PageRank** over the undirected entity graph whose edge weights count the
//!    relations' source passages, restarting at the seeds with probability `1 − d`
//!    (`d` = [`PprOptions::damping`], 0.85). By default ([`PprAlgorithm::Push`]) it is the
//!    local forward push of Andersen, Chung & Lang 2006 ("Local graph partitioning using
//!    PageRank vectors", FOCS; [`TransitionMatrix::personalized_pagerank_push`]): mass is
//!    pushed from a node only while its residual is at least `ε · w(u)` (`ε` =
//!    [`PprOptions::epsilon`], 1e-5; `w(u)` its weighted degree), so a query touches the
//!    seeds' neighbourhood, not the whole graph, and every score is low by less than
//!    `ε · w(v)` (when every seed has edges). [`PprAlgorithm::PowerIteration`] is the exact sparse power iteration
//!    ([`personalized_pagerank`]): at most [`PprOptions::max_iterations`] (30) sweeps over
//!    the graph or until the L1 change is below [`PprOptions::tolerance`] (1e-6).
//! 3. **Passage scores.** A passage scores the sum of the PageRank of the entities linked in it
//!    (or, with [`KgSearchOptions::share_among_passages`], of each entity's PageRank divided by
//!    its passage count).
//! 4. **Fusion with BM25.** Both score lists are scaled to a maximum of 1 and added, BM25's with
//!    weight [`KgSearchOptions::bm25_weight`] (over its top
//!    [`KgSearchOptions::bm25_candidates`] passages); `0` ranks by the graph alone.
//!
//! **Why fuse, and these defaults.** Measured on hotpotqa_500 (docs/graph-rag.md), the walk
//! alone ranks 8.5 points of support recall@5 below BM25: PageRank from a linked name spreads
//! to everything that name co-occurs with, and summing over a passage's entities rewards
//! passages dense in related names. Added to BM25 with weight 1 it gains about 2 points of
//! recall@5 and 3 of recall@10 over BM25. Sharing an entity's score among its passages, or
//! always adding BM25's entities to the seeds, measured worse, so both are off by default.
//!
//! **Why push.** 30 power-iteration sweeps over all 149,138 entities made 500 hotpotqa queries
//! take 12–22 s on 2 threads against about 0.6 s for BM25 (docs/graph-rag.md). The push at
//! ε = 1e-5 touches only the seeds' neighbourhood and takes 0.65–1.75 s, with support
//! recall@5, all-support@5 and hit@5 within 0.003 of the power iteration on hotpotqa_500 and
//! the same hit@5 on 2wiki_500.
//!
//! Passage text comes from the BM25 index's stored passages by id, as for
//! [`super::GraphRetriever`]; the graph stores ids, not text.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Bm25Options, Bm25Retriever, Hit, Retriever, SearchError};
use crate::corpus::Passage;
use crate::index::graph::{
    text_terms, EntityLinker, GraphKind, KnowledgeGraph, DEFAULT_MIN_TITLE_CHARS,
};

/// Default damping factor `d` of personalized PageRank (the walk continues with probability
/// `d`, restarts at the seeds with `1 − d`).
pub const DEFAULT_PPR_DAMPING: f64 = 0.85;
/// Default cap on power-iteration steps.
pub const DEFAULT_PPR_ITERATIONS: usize = 30;
/// Default L1 change below which the iteration stops.
pub const DEFAULT_PPR_TOLERANCE: f64 = 1e-6;
/// Default way of computing personalized PageRank: the local forward push.
pub const DEFAULT_PPR_ALGORITHM: PprAlgorithm = PprAlgorithm::Push;
/// Default residual threshold `ε` of the forward push, per unit of weighted degree: a node
/// is pushed while its residual is at least `ε · w(u)` (PageRank mass per unit of edge
/// weight). Measured on hotpotqa_500 and 2wiki_500 over the KG, TKG and RKG
/// (docs/graph-rag.md): every ε from 1e-6 to 1e-4 gives the same support recall@5 and hit@5,
/// within 0.003 of 30 power-iteration steps, while 1e-3 loses a point of recall@5; 1e-5 keeps
/// a decade of margin and makes 500 queries 12–19× faster than the power iteration.
pub const DEFAULT_PPR_EPSILON: f64 = 1e-5;

/// How [`KgRetriever`] computes personalized PageRank (module doc, step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PprAlgorithm {
    /// Local forward push (Andersen, Chung & Lang 2006),
    /// [`TransitionMatrix::personalized_pagerank_push`]: touches only the nodes whose
    /// residual reaches [`PprOptions::epsilon`] times their weighted degree.
    Push,
    /// Sparse power iteration over the whole graph, [`TransitionMatrix::personalized_pagerank`].
    PowerIteration,
}

/// Settings of [`personalized_pagerank`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PprOptions {
    /// Damping `d` in `[0, 1)`. Default: [`DEFAULT_PPR_DAMPING`].
    pub damping: f64,
    /// Most power-iteration steps; at least 1. Default: [`DEFAULT_PPR_ITERATIONS`].
    pub max_iterations: usize,
    /// Stop once the L1 norm of one step's change is below this. Default:
    /// [`DEFAULT_PPR_TOLERANCE`].
    pub tolerance: f64,
    /// Which algorithm [`KgRetriever`] uses; `max_iterations` and `tolerance` apply to
    /// [`PprAlgorithm::PowerIteration`], `epsilon` to [`PprAlgorithm::Push`]. Default:
    /// [`DEFAULT_PPR_ALGORITHM`] (push).
    pub algorithm: PprAlgorithm,
    /// Residual threshold of the forward push per unit of weighted degree; finite and
    /// positive. Each score comes out low by at most `epsilon · w(v)` (`w(v)`: the node's
    /// weighted degree; see [`TransitionMatrix::personalized_pagerank_push`]); smaller is
    /// more exact and touches more of the graph. Default: [`DEFAULT_PPR_EPSILON`].
    pub epsilon: f64,
}

impl Default for PprOptions {
    fn default() -> Self {
        Self {
            damping: DEFAULT_PPR_DAMPING,
            max_iterations: DEFAULT_PPR_ITERATIONS,
            tolerance: DEFAULT_PPR_TOLERANCE,
            algorithm: DEFAULT_PPR_ALGORITHM,
            epsilon: DEFAULT_PPR_EPSILON,
        }
    }
}

/// Personalized PageRank by sparse power iteration (Page et al. 1999; Haveliwala 2002):
///
/// ```text
/// r₀ = s,    r_{t+1} = (1 − d) · s + d · (Pᵀ r_t + m_t · s)
/// ```
///
/// where `s` is the seed vector normalised to sum 1, `P[u][v] = w(u, v) / Σ_x w(u, x)` the
/// random-walk transition matrix of the weighted graph `adjacency` (`adjacency[u]` lists
/// `(v, w)` pairs, weights positive; give both directions of an undirected edge), and `m_t` the
/// mass on nodes without edges, which jumps back to the seeds. Stops after
/// `opts.max_iterations` steps or once `‖r_{t+1} − r_t‖₁ < opts.tolerance`. Returns one score
/// per node, summing to 1; all zeros when there are no seeds with positive weight.
///
/// Builds the [`TransitionMatrix`] on every call; a caller with many queries over one graph
/// keeps the matrix and calls [`TransitionMatrix::personalized_pagerank`].
///
/// # Panics
/// When a seed or neighbour id is out of range.
pub fn personalized_pagerank(
    adjacency: &[Vec<(u32, f32)>],
    seeds: &[(u32, f64)],
    opts: &PprOptions,
) -> Vec<f64> {
    TransitionMatrix::from_adjacency(adjacency).personalized_pagerank(seeds, opts)
}

/// The random-walk transition matrix `P` of a weighted graph in compressed sparse row form:
/// row `u` holds `(v, w(u, v) / Σ_x w(u, x))`. Built once per graph; each PageRank step is one
/// pass over the rows that hold mass.
#[derive(Debug, Clone, Default)]
pub struct TransitionMatrix {
    rows: Vec<usize>,
    cols: Vec<u32>,
    probs: Vec<f64>,
    /// Weighted degree `w(u) = Σ_x w(u, x)` of each node; 0 for a node without edges.
    degrees: Vec<f64>,
}

impl TransitionMatrix {
    /// Normalises each row of `adjacency` (see [`personalized_pagerank`]).
    ///
    /// # Panics
    /// When a neighbour id is out of range.
    pub fn from_adjacency(adjacency: &[Vec<(u32, f32)>]) -> Self {
        let n = adjacency.len();
        let arcs = adjacency.iter().map(Vec::len).sum();
        let mut m = Self {
            rows: Vec::with_capacity(n + 1),
            cols: Vec::with_capacity(arcs),
            probs: Vec::with_capacity(arcs),
            degrees: Vec::with_capacity(n),
        };
        m.rows.push(0);
        for row in adjacency {
            let start = m.cols.len();
            let out: f64 = row.iter().map(|&(_, w)| f64::from(w)).sum();
            for &(v, w) in row {
                assert!((v as usize) < n, "neighbour {v} out of range");
                if out > 0.0 && w > 0.0 {
                    m.cols.push(v);
                    m.probs.push(f64::from(w) / out);
                }
            }
            m.rows.push(m.cols.len());
            m.degrees.push(if m.cols.len() > start { out } else { 0.0 });
        }
        m
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }

    /// Personalized PageRank from `seeds` (`(node, weight)` pairs), as [`personalized_pagerank`].
    ///
    /// # Panics
    /// When a seed is out of range.
    pub fn personalized_pagerank(&self, seeds: &[(u32, f64)], opts: &PprOptions) -> Vec<f64> {
        let n = self.num_nodes();
        let mut s = vec![0f64; n];
        let total: f64 = seeds
            .iter()
            .filter(|(_, w)| *w > 0.0 && w.is_finite())
            .map(|(_, w)| w)
            .sum();
        if total <= 0.0 {
            return s;
        }
        let mut seed_nodes: Vec<u32> = Vec::new();
        for &(u, w) in seeds {
            if w > 0.0 && w.is_finite() {
                if s[u as usize] == 0.0 {
                    seed_nodes.push(u);
                }
                s[u as usize] += w / total;
            }
        }
        let d = opts.damping;
        let mut r = s.clone();
        let mut next = vec![0f64; n];
        for _ in 0..opts.max_iterations.max(1) {
            next.fill(0.0);
            let mut dangling = 0.0;
            for (u, &ru) in r.iter().enumerate() {
                // Rows without mass are skipped: the walk reaches the graph a hop at a time.
                if ru == 0.0 {
                    continue;
                }
                let (a, b) = (self.rows[u], self.rows[u + 1]);
                if a == b {
                    dangling += ru;
                    continue;
                }
                let x = d * ru;
                for (&v, &p) in self.cols[a..b].iter().zip(&self.probs[a..b]) {
                    next[v as usize] += x * p;
                }
            }
            let restart = (1.0 - d) + d * dangling;
            for &u in &seed_nodes {
                next[u as usize] += restart * s[u as usize];
            }
            let delta: f64 = next.iter().zip(&r).map(|(a, b)| (a - b).abs()).sum();
            std::mem::swap(&mut r, &mut next);
            if delta < opts.tolerance {
                break;
            }
        }
        r
    }

    /// Personalized PageRank from `seeds` (`(node, weight)` pairs) by the local forward push
    /// of Andersen, Chung & Lang 2006 ("Local graph partitioning using PageRank vectors",
    /// FOCS 2006, §3), in its non-lazy form for the same PageRank as
    /// [`TransitionMatrix::personalized_pagerank`] (restart `1 − d`, `d` =
    /// [`PprOptions::damping`]; `opts.max_iterations` and `opts.tolerance` are not used).
    ///
    /// It keeps an estimate `p` (initially 0) and a residual `r` (initially the normalised
    /// seed vector `s`). While some node `u` holds `r(u) ≥ ε · w(u)` (`ε` =
    /// [`PprOptions::epsilon`], `w(u)` the weighted degree; `ε` alone for a node without
    /// edges), it is pushed, in first-in first-out order: `p(u) += (1 − d) · r(u)`, and
    /// `d · r(u)` spreads over `u`'s neighbours as the walk does (for a node without edges,
    /// back to the seeds in proportion to `s`, as the power iteration sends dangling mass);
    /// then `r(u) = 0`. Only the seeds and nodes that receive residual are ever read or
    /// written. Each push removes at least `(1 − d) · ε · w(u)` of the residual, whose total
    /// starts at 1, so the pushed nodes' weighted degrees sum to at most `1 / (ε · (1 − d))`
    /// (ACL 2006, §3, for the lazy walk): with edge weights of at least 1, as in a
    /// [`KnowledgeGraph`], that bounds the edge visits, whatever the graph's size.
    ///
    /// **Guarantee.** With `π` the exact PageRank, `π = p + G r` holds throughout, where `G`
    /// maps a residual to the PageRank it will become; so every node's score is low, never
    /// high (`0 ≤ π(v) − p(v)`), and the scores' total L1 error is exactly
    /// [`PushRank::residual`]. For an undirected graph (every edge given in both directions
    /// with equal weight) whose seeds all have edges, reversibility `w(u) π_u(v) = w(v) π_v(u)`
    /// bounds each node's error by its threshold: `π(v) − p(v) = Σ_u r(u) π_u(v) < ε · w(v)`
    /// (ACL 2006, §3, there with unit weights).
    ///
    /// Per-thread buffers of the node count are reused across calls, so a call allocates only
    /// its result.
    ///
    /// # Panics
    /// When a seed is out of range.
    pub fn personalized_pagerank_push(&self, seeds: &[(u32, f64)], opts: &PprOptions) -> PushRank {
        let n = self.num_nodes();
        for &(u, _) in seeds {
            assert!((u as usize) < n, "seed {u} out of range");
        }
        let valid = |w: &f64| *w > 0.0 && w.is_finite();
        let total: f64 = seeds.iter().map(|(_, w)| w).filter(|w| valid(w)).sum();
        if total <= 0.0 {
            return PushRank::default();
        }
        // The normalised seed vector, duplicates merged, ascending by node.
        let mut s: Vec<(u32, f64)> = seeds
            .iter()
            .filter(|(_, w)| valid(w))
            .map(|&(u, w)| (u, w / total))
            .collect();
        s.sort_by_key(|&(u, _)| u);
        s.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
        PUSH_WORKSPACE.with(|ws| self.push(&mut ws.borrow_mut(), &s, opts.damping, opts.epsilon))
    }

    /// The forward push of [`TransitionMatrix::personalized_pagerank_push`] over `ws`, whose
    /// entries are all zero on entry and are left so.
    fn push(&self, ws: &mut PushWorkspace, s: &[(u32, f64)], d: f64, eps: f64) -> PushRank {
        ws.fit(self.num_nodes());
        let threshold = |u: usize| {
            let w = self.degrees[u];
            eps * if w > 0.0 { w } else { 1.0 }
        };
        for &(u, w) in s {
            ws.add(u, w, threshold(u as usize));
        }
        let mut pushes = 0;
        while let Some(u) = ws.queue.pop_front() {
            let ui = u as usize;
            ws.queued[ui] = false;
            let ru = std::mem::take(&mut ws.residual[ui]);
            ws.estimate[ui] += (1.0 - d) * ru;
            pushes += 1;
            let x = d * ru;
            let (a, b) = (self.rows[ui], self.rows[ui + 1]);
            if a == b {
                for &(v, sv) in s {
                    ws.add(v, x * sv, threshold(v as usize));
                }
            } else {
                for (&v, &p) in self.cols[a..b].iter().zip(&self.probs[a..b]) {
                    ws.add(v, x * p, threshold(v as usize));
                }
            }
        }
        ws.touched.sort_unstable();
        ws.touched.dedup();
        let mut left = 0.0;
        let scores = ws
            .touched
            .iter()
            .map(|&v| {
                left += ws.residual[v as usize];
                (v, ws.estimate[v as usize])
            })
            .collect();
        ws.clear();
        PushRank {
            scores,
            residual: left,
            pushes,
        }
    }
}

/// Personalized PageRank of `adjacency` (as [`personalized_pagerank`]) by the local forward
/// push, [`TransitionMatrix::personalized_pagerank_push`].
///
/// # Panics
/// When a seed or neighbour id is out of range.
pub fn personalized_pagerank_push(
    adjacency: &[Vec<(u32, f32)>],
    seeds: &[(u32, f64)],
    opts: &PprOptions,
) -> PushRank {
    TransitionMatrix::from_adjacency(adjacency).personalized_pagerank_push(seeds, opts)
}

/// The sparse result of [`TransitionMatrix::personalized_pagerank_push`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushRank {
    /// `(node, score)` for every node the push touched (the seeds and every node that received
    /// residual), ascending by node; a node that received residual below its threshold scores
    /// 0. Nodes not listed were never read or written and score 0.
    pub scores: Vec<(u32, f64)>,
    /// The residual mass left, `Σ r(u)`: the scores sum to `1 − residual`, and it is their
    /// exact L1 distance to the exact PageRank. 0 when there are no seeds.
    pub residual: f64,
    /// Number of pushes performed.
    pub pushes: usize,
}

impl PushRank {
    /// The scores as a dense vector over `num_nodes` nodes.
    ///
    /// # Panics
    /// When a scored node is not below `num_nodes`.
    pub fn to_dense(&self, num_nodes: usize) -> Vec<f64> {
        let mut out = vec![0.0; num_nodes];
        for &(v, x) in &self.scores {
            out[v as usize] = x;
        }
        out
    }
}

/// Node-sized buffers of the forward push, reused by each thread across queries. Between
/// calls every entry is zero (or false) and the lists are empty.
#[derive(Debug, Default)]
struct PushWorkspace {
    estimate: Vec<f64>,
    residual: Vec<f64>,
    queued: Vec<bool>,
    /// Nodes with a nonzero entry, in the order first touched.
    touched: Vec<u32>,
    queue: VecDeque<u32>,
}

impl PushWorkspace {
    /// Grows the buffers to at least `n` nodes.
    fn fit(&mut self, n: usize) {
        if self.estimate.len() < n {
            self.estimate.resize(n, 0.0);
            self.residual.resize(n, 0.0);
            self.queued.resize(n, false);
        }
    }

    /// Adds `x` to `v`'s residual and queues `v` once the residual reaches `threshold`.
    #[inline]
    fn add(&mut self, v: u32, x: f64, threshold: f64) {
        let vi = v as usize;
        // A node first touched has all-zero entries (`touched` is deduplicated at the end).
        if self.residual[vi] == 0.0 && self.estimate[vi] == 0.0 && !self.queued[vi] {
            self.touched.push(v);
        }
        self.residual[vi] += x;
        if !self.queued[vi] && self.residual[vi] >= threshold {
            self.queued[vi] = true;
            self.queue.push_back(v);
        }
    }

    /// Zeroes the entries of the touched nodes only.
    fn clear(&mut self) {
        for &v in &self.touched {
            let v = v as usize;
            self.estimate[v] = 0.0;
            self.residual[v] = 0.0;
            self.queued[v] = false;
        }
        self.touched.clear();
        self.queue.clear();
    }
}

thread_local! {
    static PUSH_WORKSPACE: RefCell<PushWorkspace> = RefCell::new(PushWorkspace::default());
}

/// Default BM25 passages fetched per query (for fusion and the seed fallback).
pub const DEFAULT_KG_BM25_CANDIDATES: usize = 20;
/// Default number of BM25 passages whose entities seed the walk when nothing else does.
pub const DEFAULT_KG_FALLBACK_PASSAGES: usize = 5;
/// Default number of seeds taken from description and keyword matches (TKG, RKG).
pub const DEFAULT_KG_DESCRIPTION_SEEDS: usize = 5;
/// Default weight of the (max-scaled) BM25 score added to the (max-scaled) graph score.
pub const DEFAULT_KG_BM25_WEIGHT: f32 = 1.0;

/// Knobs of the knowledge-graph retriever. `Default` gives the documented defaults; as a config
/// section (`[search.kg_options]`) it reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KgSearchOptions {
    /// Personalized PageRank settings.
    pub ppr: PprOptions,
    /// BM25 passages fetched per query; at least 1. Default: [`DEFAULT_KG_BM25_CANDIDATES`].
    pub bm25_candidates: usize,
    /// Top BM25 passages whose entities are the seeds when linking (and, for TKG/RKG, matching
    /// descriptions) finds none; at least 1. Default: [`DEFAULT_KG_FALLBACK_PASSAGES`].
    pub fallback_passages: usize,
    /// Seeds taken from description and keyword matches (TKG, RKG); at least 1.
    /// Default: [`DEFAULT_KG_DESCRIPTION_SEEDS`].
    pub description_seeds: usize,
    /// Weight of the max-scaled BM25 score in the fusion; finite, non-negative (`0`: graph
    /// only). Default: [`DEFAULT_KG_BM25_WEIGHT`].
    pub bm25_weight: f32,
    /// Divide an entity's PageRank by the number of passages it is linked in before adding it
    /// to their scores, so that an entity shares its score among its passages instead of
    /// giving all of it to each. Default: `false`.
    pub share_among_passages: bool,
    /// Also seed with the entities of BM25's top [`KgSearchOptions::fallback_passages`]
    /// passages when linking (or description matching) found seeds; they are added with their
    /// fallback weights. Default: `false`.
    pub always_seed_bm25: bool,
}

impl Default for KgSearchOptions {
    fn default() -> Self {
        Self {
            ppr: PprOptions::default(),
            bm25_candidates: DEFAULT_KG_BM25_CANDIDATES,
            fallback_passages: DEFAULT_KG_FALLBACK_PASSAGES,
            description_seeds: DEFAULT_KG_DESCRIPTION_SEEDS,
            bm25_weight: DEFAULT_KG_BM25_WEIGHT,
            share_among_passages: false,
            always_seed_bm25: false,
        }
    }
}

impl KgSearchOptions {
    fn validate(&self) -> Result<(), SearchError> {
        let bad = |name, reason: String| Err(SearchError::InvalidOption { name, reason });
        if !(0.0..1.0).contains(&self.ppr.damping) {
            return bad("damping", format!("{} is not in [0, 1)", self.ppr.damping));
        }
        if self.ppr.max_iterations == 0 {
            return bad("max_iterations", "must be at least 1".into());
        }
        if self.ppr.tolerance.is_nan() || self.ppr.tolerance < 0.0 {
            return bad("tolerance", format!("{} is negative", self.ppr.tolerance));
        }
        if !(self.ppr.epsilon.is_finite() && self.ppr.epsilon > 0.0) {
            return bad(
                "epsilon",
                format!("{} is not a finite positive number", self.ppr.epsilon),
            );
        }
        for (name, v) in [
            ("bm25_candidates", self.bm25_candidates),
            ("fallback_passages", self.fallback_passages),
            ("description_seeds", self.description_seeds),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if !self.bm25_weight.is_finite() || self.bm25_weight < 0.0 {
            return bad(
                "bm25_weight",
                format!("{} is not a finite non-negative number", self.bm25_weight),
            );
        }
        Ok(())
    }
}

/// Where the seeds of one query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    /// Entities linked in the query.
    Linked,
    /// Entity names, descriptions and relation keywords matching the query's words (TKG, RKG).
    Descriptions,
    /// Entities of BM25's top passages.
    Bm25,
    /// No seeds: the query linked nothing and BM25 found nothing.
    None,
}

/// A [`Retriever`] over a knowledge graph and the BM25 index of the same corpus (module doc).
#[derive(Debug)]
pub struct KgRetriever {
    bm25: Bm25Retriever,
    graph: KnowledgeGraph,
    graph_path: PathBuf,
    opts: KgSearchOptions,
    transitions: TransitionMatrix,
    linker: EntityLinker,
    passage_entities: Vec<Vec<u32>>,
    /// TKG/RKG: term → (entities, IDF); empty for a KG.
    terms: HashMap<String, (Vec<u32>, f64)>,
}

impl KgRetriever {
    /// Opens the BM25 index in `index` and the knowledge-graph file `graph` with default
    /// options.
    ///
    /// # Errors
    /// See [`KgRetriever::open_with`].
    pub fn open(index: impl AsRef<Path>, graph: impl AsRef<Path>) -> Result<Self, SearchError> {
        Self::open_with(
            index,
            graph,
            Bm25Options::default(),
            KgSearchOptions::default(),
        )
    }

    /// Opens the BM25 index in `index` (with `bm25` options) and the knowledge-graph file
    /// `graph` (any of KG, TKG, RKG; see [`KgRetriever::graph`] for which).
    ///
    /// # Errors
    /// What [`Bm25Retriever::open_with`] returns; [`SearchError::Graph`] when the graph file is
    /// unreadable, truncated, corrupt or not a knowledge graph (naming it), or was built over
    /// another corpus (its passage count differs from the index's);
    /// [`SearchError::InvalidOption`] for an option out of range.
    pub fn open_with(
        index: impl AsRef<Path>,
        graph: impl AsRef<Path>,
        bm25: Bm25Options,
        opts: KgSearchOptions,
    ) -> Result<Self, SearchError> {
        opts.validate()?;
        let bm25 = Bm25Retriever::open_with(index, bm25)?;
        let graph_path = graph.as_ref().to_path_buf();
        let graph = KnowledgeGraph::read(&graph_path)?;
        super::graph::same_corpus(
            &graph_path,
            "graph",
            graph.num_passages() as u64,
            "passages",
            &bm25,
        )?;
        let transitions = TransitionMatrix::from_adjacency(&graph.entity_adjacency());
        let linker = EntityLinker::new(
            graph.entities().iter().map(|e| e.name.as_str()),
            DEFAULT_MIN_TITLE_CHARS,
            true,
        );
        let mut passage_entities = vec![Vec::new(); graph.num_passages()];
        for (e, ent) in graph.entities().iter().enumerate() {
            for &p in &ent.passages {
                passage_entities[p as usize].push(e as u32);
            }
        }
        let terms = if graph.kind() == GraphKind::Kg {
            HashMap::new()
        } else {
            term_index(&graph)
        };
        tracing::debug!(
            graph = %graph_path.display(),
            kind = %graph.kind(),
            entities = graph.entities().len(),
            relations = graph.relations().len(),
            "opened knowledge graph"
        );
        Ok(Self {
            bm25,
            graph,
            graph_path,
            opts,
            transitions,
            linker,
            passage_entities,
            terms,
        })
    }

    /// The graph in use.
    pub fn graph(&self) -> &KnowledgeGraph {
        &self.graph
    }

    /// The graph file.
    pub fn graph_path(&self) -> &Path {
        &self.graph_path
    }

    /// The BM25 retriever used for fusion, the seed fallback and passage text.
    pub fn bm25(&self) -> &Bm25Retriever {
        &self.bm25
    }

    /// The options in force.
    pub fn options(&self) -> &KgSearchOptions {
        &self.opts
    }

    /// The seed entities of `query` with their weights, and where they came from (module doc,
    /// step 1). `bm25_hits` are the query's BM25 hits, used by the last fallback.
    pub fn seeds(&self, query: &str, bm25_hits: &[Hit]) -> (Vec<(u32, f64)>, SeedSource) {
        let specificity =
            |e: u32| 1.0 / self.graph.entities()[e as usize].passages.len().max(1) as f64;
        let as_passage = Passage {
            id: String::new(),
            title: String::new(),
            text: query.to_string(),
        };
        let linked: Vec<(u32, f64)> = self
            .linker
            .link(&as_passage)
            .iter()
            .filter_map(|name| self.graph.entity_id(name))
            .map(|e| (e, specificity(e)))
            .collect();
        if !linked.is_empty() {
            return self.with_bm25(linked, SeedSource::Linked, bm25_hits);
        }
        if !self.terms.is_empty() {
            let mut score: HashMap<u32, f64> = HashMap::new();
            let mut seen = std::collections::HashSet::new();
            for t in text_terms(query) {
                if !seen.insert(t.clone()) {
                    continue;
                }
                if let Some((ents, idf)) = self.terms.get(&t) {
                    for &e in ents {
                        *score.entry(e).or_default() += idf;
                    }
                }
            }
            let mut ranked: Vec<(u32, f64)> = score.into_iter().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.truncate(self.opts.description_seeds);
            if !ranked.is_empty() {
                return self.with_bm25(ranked, SeedSource::Descriptions, bm25_hits);
            }
        }
        let seeds = self.bm25_seeds(bm25_hits);
        if seeds.is_empty() {
            (seeds, SeedSource::None)
        } else {
            (seeds, SeedSource::Bm25)
        }
    }

    /// Adds the BM25 seeds when [`KgSearchOptions::always_seed_bm25`] asks for them.
    fn with_bm25(
        &self,
        mut seeds: Vec<(u32, f64)>,
        source: SeedSource,
        bm25_hits: &[Hit],
    ) -> (Vec<(u32, f64)>, SeedSource) {
        if self.opts.always_seed_bm25 {
            seeds.extend(self.bm25_seeds(bm25_hits));
        }
        (seeds, source)
    }

    /// The entities of BM25's top passages, weighted by specificity times the passage's BM25
    /// score over the best one.
    fn bm25_seeds(&self, bm25_hits: &[Hit]) -> Vec<(u32, f64)> {
        let specificity =
            |e: u32| 1.0 / self.graph.entities()[e as usize].passages.len().max(1) as f64;
        let top = bm25_hits.iter().take(self.opts.fallback_passages);
        let smax = bm25_hits.iter().map(|h| h.score).fold(0f32, f32::max);
        let mut seeds: Vec<(u32, f64)> = Vec::new();
        for hit in top {
            let Some(p) = self.passage_node(&hit.id) else {
                continue;
            };
            let scale = if smax > 0.0 {
                f64::from(hit.score / smax)
            } else {
                1.0
            };
            for &e in &self.passage_entities[p as usize] {
                seeds.push((e, scale * specificity(e)));
            }
        }
        seeds
    }

    fn passage_node(&self, id: &str) -> Option<u32> {
        self.graph.passage_node(id)
    }
}

/// TKG/RKG: term → entities whose name or description holds it, or which head or tail a
/// relation with it as keyword; with the term's IDF over entities, `ln(1 + E / df)`.
fn term_index(graph: &KnowledgeGraph) -> HashMap<String, (Vec<u32>, f64)> {
    let mut postings: HashMap<String, Vec<u32>> = HashMap::new();
    let mut add = |t: String, e: u32| {
        let list = postings.entry(t).or_default();
        if list.last() != Some(&e) {
            list.push(e);
        }
    };
    for (e, ent) in graph.entities().iter().enumerate() {
        let e = e as u32;
        let mut words: Vec<String> = text_terms(&ent.name).collect();
        for &s in &ent.description {
            words.extend(text_terms(&graph.sentences()[s as usize]));
        }
        words.sort_unstable();
        words.dedup();
        for w in words {
            add(w, e);
        }
    }
    let mut from_keywords: HashMap<String, Vec<u32>> = HashMap::new();
    for r in graph.relations() {
        for k in &r.keywords {
            let list = from_keywords.entry(k.clone()).or_default();
            list.push(r.head);
            list.push(r.tail);
        }
    }
    for (k, ents) in from_keywords {
        let list = postings.entry(k).or_default();
        list.extend(ents);
    }
    let n = graph.entities().len().max(1) as f64;
    postings
        .into_iter()
        .map(|(t, mut ents)| {
            ents.sort_unstable();
            ents.dedup();
            let idf = (1.0 + n / ents.len() as f64).ln();
            (t, (ents, idf))
        })
        .collect()
}

impl Retriever for KgRetriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let bm25_hits = self.bm25.search(query, self.opts.bm25_candidates.max(k))?;
        let (seeds, _) = self.seeds(query, &bm25_hits);
        // Entity scores, ascending by entity (so that the passage sums below add in a fixed
        // order): the push's sparse result, or the nonzero entries of the power iteration.
        let rank: Vec<(u32, f64)> = match self.opts.ppr.algorithm {
            PprAlgorithm::Push => {
                self.transitions
                    .personalized_pagerank_push(&seeds, &self.opts.ppr)
                    .scores
            }
            PprAlgorithm::PowerIteration => self
                .transitions
                .personalized_pagerank(&seeds, &self.opts.ppr)
                .into_iter()
                .enumerate()
                .filter(|&(_, r)| r > 0.0)
                .map(|(e, r)| (e as u32, r))
                .collect(),
        };
        let bmax = bm25_hits.iter().map(|h| h.score).fold(0f32, f32::max);
        let mut by_node: HashMap<u32, &Hit> = HashMap::new();
        // BM25 hits the graph lacks (impossible for a graph over the index's corpus) are
        // ranked by their BM25 share alone rather than dropped.
        let mut orphans: Vec<(f64, &Hit)> = Vec::new();
        let mut shares: Vec<(u32, f64)> = Vec::with_capacity(bm25_hits.len());
        for hit in &bm25_hits {
            let share = if bmax > 0.0 {
                f64::from(self.opts.bm25_weight) * f64::from(hit.score / bmax)
            } else {
                0.0
            };
            match self.passage_node(&hit.id) {
                Some(p) => {
                    shares.push((p, share));
                    by_node.insert(p, hit);
                }
                None => orphans.push((share, hit)),
            }
        }
        let num_passages = self.graph.num_passages();
        let score = PASSAGE_SUMS.with(|sums| {
            let mut sums = sums.borrow_mut();
            sums.fit(num_passages);
            for &(e, r) in rank.iter().filter(|&&(_, r)| r > 0.0) {
                let passages = &self.graph.entities()[e as usize].passages;
                let r = if self.opts.share_among_passages {
                    r / passages.len().max(1) as f64
                } else {
                    r
                };
                for &p in passages {
                    sums.add(p, r);
                }
            }
            sums.scale_to_max_one();
            for &(p, share) in &shares {
                sums.add(p, share);
            }
            sums.take()
        });
        let mut ranked: Vec<(f64, &str, Option<u32>)> = score
            .into_iter()
            .filter(|&(_, s)| s > 0.0)
            .map(|(p, s)| (s, self.graph.passage_id(p), Some(p)))
            .chain(
                orphans
                    .iter()
                    .filter(|(s, _)| *s > 0.0)
                    .map(|(s, h)| (*s, h.id.as_str(), None)),
            )
            .collect();
        // Best first; equal scores in passage-id order, so results do not depend on hashing.
        // Only the best k + (orphans) are sorted; the rest are cut by a linear selection.
        let order = |a: &(f64, &str, Option<u32>), b: &(f64, &str, Option<u32>)| {
            b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        // Hits whose passage the index lacks are skipped below, so keep a margin.
        let keep = (2 * k + 8).min(ranked.len());
        if keep > 0 && keep < ranked.len() {
            ranked.select_nth_unstable_by(keep - 1, order);
            ranked.truncate(keep);
        }
        ranked.sort_by(order);
        let mut hits = Vec::with_capacity(k.min(ranked.len()));
        for (s, id, node) in ranked {
            if hits.len() == k {
                break;
            }
            let known = node
                .and_then(|p| by_node.get(&p).copied())
                .or_else(|| orphans.iter().find(|(_, h)| h.id == id).map(|(_, h)| *h));
            let hit = match known {
                Some(h) => h.clone(),
                None => match self.bm25.get(id)? {
                    Some(p) => Hit {
                        id: p.id,
                        title: p.title,
                        text: p.text,
                        score: 0.0,
                    },
                    // The index lacks a passage the graph has: skip it rather than fail.
                    None => continue,
                },
            };
            hits.push(Hit {
                score: s as f32,
                ..hit
            });
        }
        Ok(hits)
    }
}

/// Per-passage score sums of one query, in a passage-sized buffer each thread reuses; between
/// queries every entry is zero and `touched` is empty.
#[derive(Debug, Default)]
struct PassageSums {
    score: Vec<f64>,
    /// Passages with a nonzero entry, in the order first touched.
    touched: Vec<u32>,
}

impl PassageSums {
    /// Grows the buffer to at least `n` passages.
    fn fit(&mut self, n: usize) {
        if self.score.len() < n {
            self.score.resize(n, 0.0);
        }
    }

    /// Adds `x` to passage `p`.
    fn add(&mut self, p: u32, x: f64) {
        let slot = &mut self.score[p as usize];
        if *slot == 0.0 {
            self.touched.push(p);
        }
        *slot += x;
    }

    /// Divides every sum by the largest, when that is positive.
    fn scale_to_max_one(&mut self) {
        let max = self
            .touched
            .iter()
            .map(|&p| self.score[p as usize])
            .fold(0f64, f64::max);
        if max > 0.0 {
            for &p in &self.touched {
                self.score[p as usize] /= max;
            }
        }
    }

    /// The `(passage, sum)` pairs ascending by passage; leaves the buffer zeroed.
    fn take(&mut self) -> Vec<(u32, f64)> {
        self.touched.sort_unstable();
        self.touched.dedup();
        let out = self
            .touched
            .iter()
            .map(|&p| (p, std::mem::take(&mut self.score[p as usize])))
            .collect();
        self.touched.clear();
        out
    }
}

thread_local! {
    static PASSAGE_SUMS: RefCell<PassageSums> = RefCell::new(PassageSums::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_leaves_its_workspace_zeroed_for_the_next_query() {
        // A path 0 – 1 – 2 – 3 and a lonely node 4.
        let adjacency = vec![
            vec![(1, 1.0)],
            vec![(0, 1.0), (2, 1.0)],
            vec![(1, 1.0), (3, 1.0)],
            vec![(2, 1.0)],
            vec![],
        ];
        let m = TransitionMatrix::from_adjacency(&adjacency);
        assert_eq!(m.degrees, vec![1.0, 2.0, 2.0, 1.0, 0.0]);
        let opts = PprOptions {
            epsilon: 1e-4,
            ..PprOptions::default()
        };
        let first = m.personalized_pagerank_push(&[(0, 1.0), (4, 1.0)], &opts);
        PUSH_WORKSPACE.with(|ws| {
            let ws = ws.borrow();
            assert!(ws.estimate.iter().chain(&ws.residual).all(|&x| x == 0.0));
            assert!(ws.queued.iter().all(|&q| !q));
            assert!(ws.touched.is_empty() && ws.queue.is_empty());
        });
        // The same query again gives the same answer from the reused buffers.
        assert_eq!(
            m.personalized_pagerank_push(&[(4, 1.0), (0, 1.0)], &opts),
            first
        );
    }

    #[test]
    fn passage_sums_scale_then_add_and_leave_the_buffer_zeroed() {
        let mut sums = PassageSums::default();
        sums.fit(6);
        sums.add(4, 2.0);
        sums.add(1, 1.0);
        sums.add(4, 2.0);
        sums.scale_to_max_one();
        sums.add(5, 0.5);
        sums.add(1, 0.5);
        assert_eq!(sums.take(), vec![(1, 0.75), (4, 1.0), (5, 0.5)]);
        assert!(sums.score.iter().all(|&x| x == 0.0) && sums.touched.is_empty());
    }
}
