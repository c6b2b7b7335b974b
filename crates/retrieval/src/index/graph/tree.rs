//! The tree kind of DESIGN §6: a RAPTOR tree (Sarthi et al. 2024, arXiv 2401.18059, as framed by
//! arXiv 2503.04338), built without an LLM.
//!
//! **Leaves** are the corpus's passages. Each **level** above is built from the one below:
//!
//! 1. every node of the level is embedded ([`Embedder`]): a leaf by its title and text, a
//!    summary by its summary text;
//! 2. the nodes are clustered by **recursive bisecting k-means** ([`bisecting_clusters`]): a set
//!    larger than [`TreeOptions::cluster_size`] is split in two by 2-means ([`kmeans`]), and
//!    each half again, until every cluster holds at most `cluster_size` nodes;
//! 3. each cluster becomes a **summary node** whose children are the cluster's nodes and whose
//!    text is an *extractive* summary: the sentences of the children's texts
//!    ([`super::split_sentences`]) nearest the cluster's centroid by embedding dot product, at
//!    most [`TreeOptions::summary_sentences`] of them and at most [`TreeOptions::summary_words`]
//!    words in all (the best sentence is always taken), repeated sentences once, then put back
//!    in source order (child by child, position within the child).
//!
//! Levels are added until [`TreeOptions::max_levels`] summary levels exist or a level has at
//! most `cluster_size` nodes (clustering it would make a single root, which summarises too much
//! to be retrieved). Each summary node also records its **central leaf**: the child nearest the
//! centroid, followed down to a passage; the retriever titles a summary hit after it.
//!
//! **Why an extractive summary.** RAPTOR summarises each cluster with an LLM; sleuth builds its
//! indexes without one (docs/graph-rag.md). Sentences nearest the centroid are the cluster's
//! most typical statements, which is what a summary node is for in "collapsed tree" retrieval:
//! a query about the theme common to a cluster matches the summary better than any one member.
//!
//! **Why bisecting k-means.** Flat k-means with `k = n / 10` costs `O(n·k·D)` per iteration:
//! for 48k passages that is ~60 GFLOP an iteration at D = 256, too slow for two cores. Bisection
//! costs `O(n·D)` per split level and `log₂(n / cluster_size)` levels, about 3 GFLOP in all.
//! A split that leaves fewer than a tenth of the set on one side (an outlier, or identical
//! vectors) is replaced by a median split along the line between the two centroids, so the
//! recursion depth stays logarithmic.
//!
//! **Embeddings.** [`TfidfEmbedder`] is the fallback that issue 4 names next to
//! all-MiniLM-L6-v2: TF-IDF over [`super::text_terms`], reduced to `D` dimensions by signed
//! feature hashing (a seeded random projection that needs no stored matrix). A dense sentence
//! embedder plugs in behind the same [`Embedder`] trait; the file format reserves an embedder
//! code for it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::build::{progress_bar, refuse_existing, round3};
use super::kg::llm_cache_path;
use super::tree_format::TreeParts;
use super::{split_sentences, GraphError, GraphKind, TreeIndex};
use crate::corpus::{Passage, PassageReader};
use crate::embed::{Embedder, EmbedderKind, MiniLmEmbedder, TfidfEmbedder, DEFAULT_MINILM_DIR};
use crate::llm::{LlmClient, LlmOptions};

/// Default most nodes per cluster (RAPTOR clusters about ten chunks).
pub const DEFAULT_CLUSTER_SIZE: usize = 10;
/// Default most summary levels above the leaves.
pub const DEFAULT_TREE_LEVELS: usize = 5;
/// Default embedding dimensions of [`TfidfEmbedder`].
pub const DEFAULT_EMBEDDING_DIMS: usize = 256;
/// Default cap on the sentences of one summary.
pub const DEFAULT_SUMMARY_SENTENCES: usize = 3;
/// Default cap on the words of one summary.
pub const DEFAULT_SUMMARY_WORDS: usize = 80;
/// Default cap on Lloyd iterations per k-means run.
pub const DEFAULT_KMEANS_ITERATIONS: usize = 10;

/// Dot product of two equal-length vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// The `k` centroids, each the mean of its cluster (an emptied cluster keeps its last one).
    pub centroids: Vec<Vec<f32>>,
    /// Cluster of each point, `< k`.
    pub assignment: Vec<usize>,
    /// Assignment passes run (the last one changed nothing unless the cap was hit).
    pub iterations: usize,
}

/// Lloyd's k-means with deterministic farthest-point initialisation.
///
/// The first centroid is the point farthest (squared Euclidean distance) from the mean of all
/// points, each next one the point farthest from its nearest chosen centroid; ties go to the
/// lowest index. Then points are assigned to their nearest centroid (ties to the lowest
/// centroid) and centroids moved to their cluster's mean, until an assignment pass changes
/// nothing or `max_iterations` passes have run. `k` is capped at the number of points; no points
/// or `k == 0` give no centroids.
///
/// # Panics
/// When the points differ in length.
pub fn kmeans(points: &[&[f32]], k: usize, max_iterations: usize) -> KMeans {
    let k = k.min(points.len());
    if k == 0 {
        return KMeans {
            centroids: Vec::new(),
            assignment: vec![0; points.len()],
            iterations: 0,
        };
    }
    let dims = points[0].len();
    assert!(
        points.iter().all(|p| p.len() == dims),
        "points differ in length"
    );
    let mut mean = vec![0f32; dims];
    for p in points {
        mean.iter_mut().zip(*p).for_each(|(m, x)| *m += x);
    }
    mean.iter_mut().for_each(|m| *m /= points.len() as f32);
    let farthest = |d: &[f32]| {
        d.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0
    };
    let mut nearest: Vec<f32> = points.iter().map(|p| dist2(p, &mean)).collect();
    let mut centroids: Vec<Vec<f32>> = vec![points[farthest(&nearest)].to_vec()];
    nearest = points.iter().map(|p| dist2(p, &centroids[0])).collect();
    while centroids.len() < k {
        let c = points[farthest(&nearest)].to_vec();
        for (d, p) in nearest.iter_mut().zip(points) {
            *d = d.min(dist2(p, &c));
        }
        centroids.push(c);
    }
    let mut assignment = vec![usize::MAX; points.len()];
    let mut iterations = 0;
    while iterations < max_iterations.max(1) {
        iterations += 1;
        let mut changed = false;
        for (a, p) in assignment.iter_mut().zip(points) {
            let mut best = (0, f32::INFINITY);
            for (j, c) in centroids.iter().enumerate() {
                let d = dist2(p, c);
                if d < best.1 {
                    best = (j, d);
                }
            }
            if *a != best.0 {
                *a = best.0;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f32; dims]; k];
        let mut counts = vec![0usize; k];
        for (&a, p) in assignment.iter().zip(points) {
            counts[a] += 1;
            sums[a].iter_mut().zip(*p).for_each(|(s, x)| *s += x);
        }
        for ((c, s), &n) in centroids.iter_mut().zip(sums).zip(&counts) {
            if n > 0 {
                *c = s.into_iter().map(|x| x / n as f32).collect();
            }
        }
    }
    KMeans {
        centroids,
        assignment,
        iterations,
    }
}

/// Partitions `points` into clusters of at most `cluster_size` (≥ 1) by recursive bisecting
/// 2-means (module doc): each cluster's point indices ascending, clusters ordered by their
/// smallest index. A set of at most `cluster_size` points is one cluster.
pub fn bisecting_clusters(
    points: &[&[f32]],
    cluster_size: usize,
    max_iterations: usize,
) -> Vec<Vec<u32>> {
    let cluster_size = cluster_size.max(1);
    let mut out = Vec::new();
    let mut stack: Vec<Vec<u32>> = vec![(0..points.len() as u32).collect()];
    while let Some(set) = stack.pop() {
        if set.is_empty() {
            continue;
        }
        if set.len() <= cluster_size {
            out.push(set);
            continue;
        }
        let sub: Vec<&[f32]> = set.iter().map(|&i| points[i as usize]).collect();
        let km = kmeans(&sub, 2, max_iterations);
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for (&i, &a) in set.iter().zip(&km.assignment) {
            if a == 0 {
                left.push(i);
            } else {
                right.push(i);
            }
        }
        if left.len().min(right.len()) * 10 < set.len() {
            // Unbalanced: split at the median of the projection on the centroids' line.
            let line: Vec<f32> = match km.centroids.as_slice() {
                [a, b] => b.iter().zip(a).map(|(x, y)| x - y).collect(),
                _ => vec![0.0; sub[0].len()],
            };
            let mut keyed: Vec<(f32, u32)> = set
                .iter()
                .map(|&i| (dot(points[i as usize], &line), i))
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let half = keyed.len() / 2;
            left = keyed[..half].iter().map(|x| x.1).collect();
            right = keyed[half..].iter().map(|x| x.1).collect();
            left.sort_unstable();
            right.sort_unstable();
        }
        stack.push(right);
        stack.push(left);
    }
    out.sort_by_key(|c| c[0]);
    out
}

/// How to build a tree. `Default` gives the documented defaults; as a config section it reads
/// from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TreeOptions {
    /// Most nodes per cluster, and the level size at which building stops; at least 2.
    /// Default: [`DEFAULT_CLUSTER_SIZE`].
    pub cluster_size: usize,
    /// Most summary levels above the leaves; at least 1. Default: [`DEFAULT_TREE_LEVELS`].
    pub max_levels: usize,
    /// The embedder of the tree's nodes (and so of queries against it). Default: all-MiniLM-L6-v2
    /// ([`EmbedderKind::Minilm`]).
    pub embedder: EmbedderKind,
    /// The all-MiniLM-L6-v2 model folder (used by [`EmbedderKind::Minilm`] only).
    /// Default: [`DEFAULT_MINILM_DIR`], as `scripts/setup` installs it.
    pub embedder_model: PathBuf,
    /// Dimensions of the hashed TF-IDF vectors (the node embeddings of a TF-IDF tree, and the
    /// space summary sentences are chosen in for both embedders); at least 1.
    /// Default: [`DEFAULT_EMBEDDING_DIMS`].
    pub dims: usize,
    /// Most sentences per summary; at least 1. Default: [`DEFAULT_SUMMARY_SENTENCES`].
    pub summary_sentences: usize,
    /// Most words per summary (the best sentence is taken even when longer).
    /// Default: [`DEFAULT_SUMMARY_WORDS`].
    pub summary_words: usize,
    /// Most Lloyd iterations per 2-means split; at least 1.
    /// Default: [`DEFAULT_KMEANS_ITERATIONS`].
    pub kmeans_iterations: usize,
    /// Replace an existing graph file at the output path. Default: `false`.
    pub overwrite: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    /// Default: `true`.
    pub progress: bool,
    /// Summarise each cluster with this OpenAI-compatible chat endpoint instead of picking
    /// sentences (RAPTOR's own recipe); a cluster whose reply is unusable keeps its extractive
    /// summary. Its cache defaults to `<out>.llm-cache.jsonl` beside the output of
    /// [`build_tree_from_path`]; [`build_tree`] caches only when [`LlmOptions::cache`] is set.
    /// Default: `None` (extractive summaries).
    pub llm: Option<LlmOptions>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self {
            cluster_size: DEFAULT_CLUSTER_SIZE,
            max_levels: DEFAULT_TREE_LEVELS,
            embedder: EmbedderKind::default(),
            embedder_model: PathBuf::from(DEFAULT_MINILM_DIR),
            dims: DEFAULT_EMBEDDING_DIMS,
            summary_sentences: DEFAULT_SUMMARY_SENTENCES,
            summary_words: DEFAULT_SUMMARY_WORDS,
            kmeans_iterations: DEFAULT_KMEANS_ITERATIONS,
            overwrite: false,
            progress: true,
            llm: None,
        }
    }
}

impl TreeOptions {
    fn validate(&self) -> Result<(), GraphError> {
        let bad = |name, reason: &str| {
            Err(GraphError::InvalidOption {
                name,
                reason: reason.into(),
            })
        };
        if self.cluster_size < 2 {
            return bad("cluster_size", "must be at least 2");
        }
        if self.max_levels == 0 || self.max_levels > 15 {
            return bad("max_levels", "must be between 1 and 15");
        }
        if self.dims == 0 {
            return bad("dims", "must be at least 1");
        }
        if self.summary_sentences == 0 {
            return bad("summary_sentences", "must be at least 1");
        }
        if self.kmeans_iterations == 0 {
            return bad("kmeans_iterations", "must be at least 1");
        }
        if let Some(llm) = &self.llm {
            llm.validate()?;
        }
        Ok(())
    }
}

/// What a tree build produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeStats {
    /// Always `tree`.
    pub kind: GraphKind,
    /// Passages read (the leaves).
    pub passages: u64,
    /// Levels, the leaf level included.
    pub levels: u64,
    /// Nodes per level, leaves first.
    pub nodes_per_level: Vec<u64>,
    /// Summary nodes (all levels above the leaves).
    pub summary_nodes: u64,
    /// Mean words of a summary (0 without summaries).
    pub mean_summary_words: f64,
    /// The node embedder (absent in statistics written before it was recorded: TF-IDF).
    #[serde(default = "tfidf_kind")]
    pub embedder: EmbedderKind,
    /// Terms in the stored TF-IDF vocabulary (0 for a MiniLM tree, which needs none).
    pub vocabulary: u64,
    /// Embedding dimensions.
    pub dims: u64,
    /// Wall-clock build time in seconds (reading the corpus and writing the file included).
    pub seconds: f64,
    /// Size of the written file in bytes (0 when nothing was written).
    pub bytes_on_disk: u64,
    /// Summary requests sent to the LLM (0 without one).
    #[serde(default)]
    pub llm_requests: u64,
    /// Summaries answered from the LLM cache.
    #[serde(default)]
    pub llm_cached: u64,
    /// Clusters whose LLM reply was unusable and kept their extractive summary.
    #[serde(default)]
    pub llm_failures: u64,
}

/// Builds a tree over an in-memory corpus with [`TfidfEmbedder`] (no file is written; see
/// [`TreeIndex::write`]).
///
/// # Errors
/// [`GraphError::InvalidOption`] for an option out of range; [`GraphError::DuplicateId`] when
/// two passages share an id.
pub fn build_tree(
    passages: &[Passage],
    opts: &TreeOptions,
) -> Result<(TreeIndex, TreeStats), GraphError> {
    opts.validate()?;
    let start = Instant::now();
    let llm = opts.llm.as_ref().map(LlmClient::new).transpose()?;
    let (tree, mut stats) = build_core(passages, opts, llm.as_ref(), &ProgressBar::hidden())?;
    stats.seconds = round3(start.elapsed().as_secs_f64());
    Ok((tree, stats))
}

/// Builds a tree over the corpus file `corpus` (JSONL, plain or gzip; read once, held in
/// memory) and writes it to `out` atomically with [`TreeIndex::write`].
///
/// # Errors
/// [`GraphError::Corpus`] naming the corpus file and line; [`GraphError::Exists`] when `out`
/// may not be replaced; [`GraphError::Io`] naming the file for filesystem failures;
/// [`GraphError::InvalidOption`] and [`GraphError::DuplicateId`] as for [`build_tree`].
pub fn build_tree_from_path(
    corpus: &Path,
    out: &Path,
    opts: &TreeOptions,
) -> Result<TreeStats, GraphError> {
    opts.validate()?;
    let start = Instant::now();
    let _span = tracing::info_span!("build_tree", corpus = %corpus.display(), out = %out.display())
        .entered();
    refuse_existing(out, opts.overwrite)?;
    let bar = progress_bar(opts.progress);
    bar.set_message("reading passages");
    let mut passages = Vec::new();
    for p in PassageReader::open(corpus)? {
        passages.push(p?);
        if passages.len().is_multiple_of(4096) {
            bar.set_position(passages.len() as u64);
        }
    }
    let llm = opts
        .llm
        .as_ref()
        .map(|o| LlmClient::with_default_cache(o, &llm_cache_path(out)))
        .transpose()?;
    let (tree, mut stats) = build_core(&passages, opts, llm.as_ref(), &bar)?;
    drop(passages);
    bar.set_message("writing");
    stats.bytes_on_disk = tree.write(out, opts.overwrite)?;
    bar.finish_and_clear();
    stats.seconds = round3(start.elapsed().as_secs_f64());
    tracing::info!(?stats, "built tree");
    Ok(stats)
}

fn build_core(
    passages: &[Passage],
    opts: &TreeOptions,
    llm: Option<&LlmClient>,
    bar: &ProgressBar,
) -> Result<(TreeIndex, TreeStats), GraphError> {
    let mut seen = HashSet::with_capacity(passages.len());
    for p in passages {
        if !seen.insert(p.id.as_str()) {
            return Err(GraphError::DuplicateId { id: p.id.clone() });
        }
    }
    drop(seen);
    let p = passages.len();
    let dense = match opts.embedder {
        EmbedderKind::Tfidf => None,
        EmbedderKind::Minilm => {
            bar.set_message(format!("loading {}", opts.embedder_model.display()));
            Some(MiniLmEmbedder::load(&opts.embedder_model)?)
        }
    };
    let leaf_text = |q: &Passage| format!("{} {}", q.title, q.text);
    bar.set_message("fitting TF-IDF");
    // Document frequencies come from title and text together (what a leaf is embedded from).
    let texts: Vec<String> = passages.iter().map(leaf_text).collect();
    let lexical = TfidfEmbedder::fit(texts.iter().map(String::as_str), opts.dims);
    let ld = opts.dims;
    // Lexical rows: every node's TF-IDF vector, the space summary sentences are chosen in.
    let mut lex_rows = vec![0f32; p * ld];
    for (t, row) in texts.iter().zip(lex_rows.chunks_exact_mut(ld)) {
        lexical.embed_into(t, row);
    }
    // Node rows: what is clustered, stored and searched. For a TF-IDF tree they are the
    // lexical rows themselves (`None`), so nothing is held twice.
    let mut dense_rows: Option<Vec<f32>> = match &dense {
        None => None,
        Some(m) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            Some(embed_with_progress(m, &refs, bar, "embedding passages"))
        }
    };
    drop(texts);
    let d = dense.as_ref().map_or(ld, |m| m.dims());
    let mut level_starts = vec![0, p];
    let mut summaries: Vec<String> = Vec::new();
    let mut children: Vec<Vec<u32>> = Vec::new();
    let mut central: Vec<u32> = Vec::new();
    let mut sentence_vec = vec![0f32; ld];
    for level in 1..=opts.max_levels {
        let (a, b) = (level_starts[level - 1], level_starts[level]);
        if b - a <= opts.cluster_size {
            break;
        }
        bar.set_message(format!("clustering level {level} ({} nodes)", b - a));
        let node_rows = dense_rows.as_deref().unwrap_or(&lex_rows);
        let points: Vec<&[f32]> = node_rows[a * d..b * d].chunks_exact(d).collect();
        let clusters = bisecting_clusters(&points, opts.cluster_size, opts.kmeans_iterations);
        bar.set_message(format!(
            "summarising level {level} ({} clusters)",
            clusters.len()
        ));
        let level_first = summaries.len();
        let node_text = |node: usize| -> &str {
            if node < p {
                passages[node].text.as_str()
            } else {
                summaries[node - p].as_str()
            }
        };
        // With an LLM: one summary request per cluster, all of the level at once.
        let llm_summaries = match llm {
            None => Vec::new(),
            Some(client) => {
                bar.set_message(format!(
                    "LLM summaries, level {level} ({} clusters)",
                    clusters.len()
                ));
                let groups: Vec<Vec<&str>> = clusters
                    .iter()
                    .map(|c| c.iter().map(|&m| node_text(a + m as usize)).collect())
                    .collect();
                client.summarize_all(&groups, opts.summary_words)?
            }
        };
        let mut llm_summaries = llm_summaries.into_iter();
        let mut new_lex = Vec::with_capacity(clusters.len() * ld);
        // This level's summaries join `summaries` after the loop: the children's texts are
        // read from the levels below while it runs.
        let mut new_summaries = Vec::with_capacity(clusters.len());
        for cluster in clusters {
            // The centroid in node space picks the central child; the centroid in TF-IDF space
            // picks the summary sentences (the same vector for a TF-IDF tree).
            let centroid = |rows: &[f32], dims: usize| {
                let mut c = vec![0f32; dims];
                for &m in &cluster {
                    let node = a + m as usize;
                    c.iter_mut()
                        .zip(&rows[node * dims..(node + 1) * dims])
                        .for_each(|(s, x)| *s += x);
                }
                c
            };
            let node_centroid = centroid(node_rows, d);
            let dense_lex_centroid = dense_rows.as_ref().map(|_| centroid(&lex_rows, ld));
            let lex_centroid = dense_lex_centroid.as_deref().unwrap_or(&node_centroid);
            let summary = match llm_summaries.next() {
                Some(Ok(text)) => text,
                // No LLM, or its reply was unusable (counted by the client): extractive.
                _ => extractive_summary(
                    cluster.iter().map(|&c| node_text(a + c as usize)),
                    &lexical,
                    lex_centroid,
                    opts,
                ),
            };
            let best_child = cluster
                .iter()
                .map(|&c| (dot(points[c as usize], &node_centroid), c))
                .fold((f32::NEG_INFINITY, u32::MAX), |best, x| {
                    if x.0 > best.0 {
                        x
                    } else {
                        best
                    }
                })
                .1;
            let best_node = a + best_child as usize;
            central.push(if best_node < p {
                best_node as u32
            } else {
                central[best_node - p]
            });
            lexical.embed_into(&summary, &mut sentence_vec);
            new_lex.extend_from_slice(&sentence_vec);
            new_summaries.push(summary);
            children.push(cluster.iter().map(|&c| (a + c as usize) as u32).collect());
        }
        summaries.extend(new_summaries);
        lex_rows.extend_from_slice(&new_lex);
        if let (Some(m), Some(rows)) = (&dense, dense_rows.as_mut()) {
            let refs: Vec<&str> = summaries[level_first..]
                .iter()
                .map(String::as_str)
                .collect();
            let msg = format!("embedding level {level} summaries");
            rows.extend(embed_with_progress(m, &refs, bar, &msg));
        }
        level_starts.push(p + summaries.len());
    }
    let embeddings = dense_rows.unwrap_or(lex_rows);
    // A TF-IDF tree stores its vocabulary (the retriever rebuilds the query embedder from it);
    // a MiniLM tree needs none.
    let (vocabulary, idf): (Vec<String>, Vec<f32>) = match opts.embedder {
        EmbedderKind::Tfidf => lexical
            .vocabulary()
            .into_iter()
            .map(|(t, x)| (t.to_string(), x))
            .unzip(),
        EmbedderKind::Minilm => (Vec::new(), Vec::new()),
    };
    let nodes_per_level: Vec<u64> = level_starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as u64)
        .collect();
    let summary_words: usize = summaries.iter().map(|s| s.split_whitespace().count()).sum();
    let llm_stats = llm.map(LlmClient::stats).unwrap_or_default();
    let stats = TreeStats {
        kind: GraphKind::Tree,
        passages: p as u64,
        levels: nodes_per_level.len() as u64,
        nodes_per_level,
        summary_nodes: summaries.len() as u64,
        mean_summary_words: if summaries.is_empty() {
            0.0
        } else {
            round3(summary_words as f64 / summaries.len() as f64)
        },
        embedder: opts.embedder,
        vocabulary: vocabulary.len() as u64,
        dims: d as u64,
        seconds: 0.0,
        bytes_on_disk: 0,
        llm_requests: llm_stats.requests,
        llm_cached: llm_stats.cached,
        llm_failures: llm_stats.failures,
    };
    let tree = TreeIndex::from_parts(TreeParts {
        passage_ids: passages.iter().map(|q| q.id.clone()).collect(),
        level_starts,
        summaries,
        children,
        central,
        vocabulary,
        idf,
        embedder: opts.embedder,
        dims: d,
        embeddings,
    });
    Ok((tree, stats))
}

/// The extractive summary of a cluster whose children's texts are `texts` (in child order):
/// the sentences nearest `centroid` in TF-IDF space (module doc).
fn extractive_summary<'a>(
    texts: impl Iterator<Item = &'a str>,
    lexical: &TfidfEmbedder,
    centroid: &[f32],
    opts: &TreeOptions,
) -> String {
    let mut sentence_vec = vec![0f32; lexical.dims()];
    // Candidate sentences: (score, child rank, position, text).
    let mut cands: Vec<(f32, usize, usize, &str)> = Vec::new();
    for (rank, text) in texts.enumerate() {
        for (pos, s) in split_sentences(text).into_iter().enumerate() {
            lexical.embed_into(s, &mut sentence_vec);
            cands.push((dot(&sentence_vec, centroid), rank, pos, s));
        }
    }
    cands.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let mut taken: Vec<(usize, usize, &str)> = Vec::new();
    let mut words = 0;
    for &(_, rank, pos, s) in &cands {
        if taken.len() >= opts.summary_sentences {
            break;
        }
        let w = s.split_whitespace().count();
        if taken.iter().any(|t| t.2 == s) || (!taken.is_empty() && words + w > opts.summary_words) {
            continue;
        }
        taken.push((rank, pos, s));
        words += w;
    }
    taken.sort_unstable();
    taken.iter().map(|t| t.2).collect::<Vec<_>>().join(" ")
}

fn tfidf_kind() -> EmbedderKind {
    EmbedderKind::Tfidf
}

/// Embeds `texts` with `model` in one batch, counting progress on `bar` under `what`.
fn embed_with_progress(
    model: &dyn Embedder,
    texts: &[&str],
    bar: &ProgressBar,
    what: &str,
) -> Vec<f32> {
    let mut rows = vec![0f32; texts.len() * model.dims()];
    let total = texts.len();
    bar.set_message(format!("{what} (0/{total})"));
    let started = Instant::now();
    model.embed_batch(texts, &mut rows, &mut |n| {
        bar.set_message(format!("{what} ({n}/{total})"));
    });
    tracing::info!(
        texts = total,
        seconds = round3(started.elapsed().as_secs_f64()),
        "{what}"
    );
    rows
}
