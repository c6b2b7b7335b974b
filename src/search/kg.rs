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
//! 2. **Personalized PageRank** ([`personalized_pagerank`]) over the undirected entity graph
//!    whose edge weights count the relations' source passages, restarting at the seeds with
//!    probability `1 − d` (`d` = [`PprOptions::damping`], 0.85): sparse power iteration, at most
//!    [`PprOptions::max_iterations`] (30) steps or until the L1 change is below
//!    [`PprOptions::tolerance`] (1e-6).
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
//! Passage text comes from the BM25 index's stored passages by id, as for
//! [`super::GraphRetriever`]; the graph stores ids, not text.

use std::collections::HashMap;
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
}

impl Default for PprOptions {
    fn default() -> Self {
        Self {
            damping: DEFAULT_PPR_DAMPING,
            max_iterations: DEFAULT_PPR_ITERATIONS,
            tolerance: DEFAULT_PPR_TOLERANCE,
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
        };
        m.rows.push(0);
        for row in adjacency {
            let out: f64 = row.iter().map(|&(_, w)| f64::from(w)).sum();
            for &(v, w) in row {
                assert!((v as usize) < n, "neighbour {v} out of range");
                if out > 0.0 && w > 0.0 {
                    m.cols.push(v);
                    m.probs.push(f64::from(w) / out);
                }
            }
            m.rows.push(m.cols.len());
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
        let rank = self
            .transitions
            .personalized_pagerank(&seeds, &self.opts.ppr);
        // Dense per-passage sums: after 30 steps most of the giant component holds some mass.
        let mut score = vec![0f64; self.graph.num_passages()];
        for (e, &r) in rank.iter().enumerate() {
            if r > 0.0 {
                let passages = &self.graph.entities()[e].passages;
                let r = if self.opts.share_among_passages {
                    r / passages.len().max(1) as f64
                } else {
                    r
                };
                for &p in passages {
                    score[p as usize] += r;
                }
            }
        }
        let gmax = score.iter().copied().fold(0f64, f64::max);
        if gmax > 0.0 {
            score.iter_mut().for_each(|g| *g /= gmax);
        }
        let bmax = bm25_hits.iter().map(|h| h.score).fold(0f32, f32::max);
        let mut by_node: HashMap<u32, &Hit> = HashMap::new();
        // BM25 hits the graph lacks (impossible for a graph over the index's corpus) are
        // ranked by their BM25 share alone rather than dropped.
        let mut orphans: Vec<(f64, &Hit)> = Vec::new();
        for hit in &bm25_hits {
            let share = if bmax > 0.0 {
                f64::from(self.opts.bm25_weight) * f64::from(hit.score / bmax)
            } else {
                0.0
            };
            match self.passage_node(&hit.id) {
                Some(p) => {
                    score[p as usize] += share;
                    by_node.insert(p, hit);
                }
                None => orphans.push((share, hit)),
            }
        }
        let mut ranked: Vec<(f64, &str, Option<u32>)> = score
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s > 0.0)
            .map(|(p, &s)| (s, self.graph.passage_id(p as u32), Some(p as u32)))
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
