//! The RAPTOR-tree container (the tree kind of DESIGN §6, arXiv 2401.18059 as framed by arXiv
//! 2503.04338), format version 1. All integers little-endian.
//!
//! A tree is neither a passage graph (no edges between passages) nor a knowledge graph (no
//! entities): its nodes are passages (leaves) and extractive summaries, each summary lists its
//! children, and every node carries a dense embedding. So it has its own magic and version; the
//! kind code, 2, is the one [`GraphKind::code`] fixes for it.
//!
//! ```text
//! offset  size          field
//! 0       8             magic  b"SLEUTHTR"
//! 8       4             format version (u32) = 1
//! 12      4             kind (u32) = 2 (tree)
//! 16      8             P: passages = leaves (u64)
//! 24      8             N: nodes, leaves and summaries (u64), N ≥ P
//! 32      8             L: levels, the leaf level included (u64), 1 ≤ L ≤ 16
//! 40      8             D: embedding dimensions (u64), ≥ 1
//! 48      8             V: vocabulary terms of the embedder (u64)
//! 56      8             bytes of passage ids (u64)
//! 64      8             bytes of summary texts (u64)
//! 72      8             entries of children lists (u64)
//! 80      8             bytes of vocabulary terms (u64)
//! 88      4             CRC-32 (IEEE) of everything after the header (u32)
//! 92      4             embedder (u32): 1 = hashed TF-IDF, 2 = all-MiniLM-L6-v2
//! 96      …             body: the sections below, in this order
//! ```
//!
//! A *string table* of `n` strings is `8·(n+1)` bytes of u64 offsets into a UTF-8 blob, then the
//! blob (string `i` is `blob[off[i]..off[i+1]]`). A *list table* of `n` lists is `8·(n+1)` bytes
//! of u64 offsets into a u32 array, then the array.
//!
//! | # | section | shape |
//! |---|---|---|
//! | 1 | passage ids of the leaves, in corpus order (node `i < P` is passage `i`) | string table, P |
//! | 2 | level starts: node id where each level begins, then N; level 0 is `0..P` | `L+1` u64 |
//! | 3 | summary text of each summary node `P..N` | string table, N−P |
//! | 4 | children of each summary node: ascending ids in the level below | list table, N−P |
//! | 5 | central leaf of each summary node (its passage nearest the centroid) | N−P u32, `< P` |
//! | 6 | embedder vocabulary: terms, ascending and unique | string table, V |
//! | 7 | inverse document frequency of each term | V f32, finite, > 0 |
//! | 8 | embedding of every node, row-major | N·D f32, finite |
//!
//! Nodes are numbered level by level: the leaves, then level 1's summaries, and so on; every
//! node below the top level has exactly one parent in the level above. For a TF-IDF tree the
//! vocabulary makes the query side reproducible: the retriever rebuilds the same
//! [`super::TfidfEmbedder`] from it. A MiniLM tree (embedder 2) has V = 0 and D = 384; its
//! retriever loads the same model folder ([`crate::embed::MiniLmEmbedder`]) and checks D.
//! Embedder 2 was added without a version bump: files with embedder 1 are unchanged, and a
//! reader that predates it rejects code 2 as an unknown embedder by name.
//!
//! As for the other containers, the size follows from the header, so truncation is caught
//! before parsing, the CRC catches flipped bytes, and structural checks (offsets, level ranges,
//! one parent per node, ascending vocabulary, finite numbers) catch what a writer bug would
//! leave behind.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::Path;

use super::container::{
    at, corruption, image, index_ids, put, put_lists, put_strings, read_image, write_atomic,
    Container, Cursor, Header,
};
use super::{GraphError, GraphKind, TfidfEmbedder};
use crate::embed::{EmbedError, Embedder, EmbedderKind, MiniLmEmbedder};

/// The first eight bytes of every sleuth tree file.
pub const TREE_MAGIC: [u8; 8] = *b"SLEUTHTR";
/// The tree format version this build writes and reads.
pub const TREE_FORMAT_VERSION: u32 = 1;
/// Most levels a file may declare (a sanity bound on a damaged header).
const MAX_LEVELS: u64 = 16;

/// A RAPTOR tree over the passages of a corpus, loaded from or written to one file (format in
/// the module doc). Node ids `0..P` are the leaves (passage `i` of the corpus), `P..N` the
/// summary nodes, level by level.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeIndex {
    passage_ids: Vec<String>,
    level_starts: Vec<usize>,
    summaries: Vec<String>,
    children: Vec<Vec<u32>>,
    central: Vec<u32>,
    vocabulary: Vec<String>,
    idf: Vec<f32>,
    embedder: EmbedderKind,
    dims: usize,
    embeddings: Vec<f32>,
    parents: Vec<u32>,
    by_passage: HashMap<String, u32>,
}

/// The parts a builder assembles a tree from (fields as in [`TreeIndex`]).
pub(super) struct TreeParts {
    pub passage_ids: Vec<String>,
    pub level_starts: Vec<usize>,
    pub summaries: Vec<String>,
    pub children: Vec<Vec<u32>>,
    pub central: Vec<u32>,
    pub vocabulary: Vec<String>,
    pub idf: Vec<f32>,
    pub embedder: EmbedderKind,
    pub dims: usize,
    pub embeddings: Vec<f32>,
}

impl TreeIndex {
    /// Assembles a tree from its parts.
    ///
    /// # Panics
    /// On inconsistent parts (builder bugs, not data errors): see the module doc's invariants.
    pub(super) fn from_parts(parts: TreeParts) -> Self {
        match Self::assemble(parts) {
            Ok(t) => t,
            Err(reason) => panic!("inconsistent tree: {reason}"),
        }
    }

    fn assemble(p: TreeParts) -> Result<Self, String> {
        let mut tree = Self {
            by_passage: index_ids(&p.passage_ids),
            passage_ids: p.passage_ids,
            level_starts: p.level_starts,
            summaries: p.summaries,
            children: p.children,
            central: p.central,
            vocabulary: p.vocabulary,
            idf: p.idf,
            embedder: p.embedder,
            dims: p.dims,
            embeddings: p.embeddings,
            parents: Vec::new(),
        };
        tree.check()?;
        let n = tree.num_nodes();
        tree.parents = vec![u32::MAX; n];
        for (i, ch) in tree.children.iter().enumerate() {
            for &c in ch {
                // Children are `< N` by the check just passed.
                if let Some(parent) = tree.parents.get_mut(c as usize) {
                    *parent = (tree.passage_ids.len() + i) as u32;
                }
            }
        }
        Ok(tree)
    }

    /// Always [`GraphKind::Tree`].
    pub fn kind(&self) -> GraphKind {
        GraphKind::Tree
    }

    /// Number of leaves (the passages of the corpus it was built from).
    pub fn num_passages(&self) -> usize {
        self.passage_ids.len()
    }

    /// Number of nodes, leaves and summaries.
    pub fn num_nodes(&self) -> usize {
        self.passage_ids.len() + self.summaries.len()
    }

    /// Number of levels, the leaf level included (1 when no summary level was built).
    pub fn num_levels(&self) -> usize {
        self.level_starts.len() - 1
    }

    /// The node ids of level `level` (0 = leaves).
    ///
    /// # Panics
    /// When `level >= num_levels()`.
    pub fn level(&self, level: usize) -> std::ops::Range<u32> {
        match self.level_starts.get(level..=level.saturating_add(1)) {
            Some(&[start, end]) => start as u32..end as u32,
            _ => panic!(
                "level {level} out of range (there are {})",
                self.num_levels()
            ),
        }
    }

    /// Nodes per level, leaves first.
    pub fn nodes_per_level(&self) -> Vec<usize> {
        let starts = &self.level_starts;
        starts
            .iter()
            .zip(starts.iter().skip(1))
            .map(|(a, b)| b - a)
            .collect()
    }

    /// The level of `node` (0 for a leaf).
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn level_of(&self, node: u32) -> usize {
        assert!(
            (node as usize) < self.num_nodes(),
            "node {node} out of range"
        );
        self.level_starts
            .partition_point(|&s| s <= node as usize)
            .saturating_sub(1)
    }

    /// Whether `node` is a leaf (a passage).
    pub fn is_leaf(&self, node: u32) -> bool {
        (node as usize) < self.passage_ids.len()
    }

    /// The corpus id of leaf `node`.
    ///
    /// # Panics
    /// When `node` is not a leaf.
    pub fn passage_id(&self, node: u32) -> &str {
        at(&self.passage_ids, node as usize, "leaf").as_str()
    }

    /// The leaf of passage id `id`, if the tree has it.
    pub fn passage_node(&self, id: &str) -> Option<u32> {
        self.by_passage.get(id).copied()
    }

    /// The extractive summary of summary node `node`; `None` for a leaf.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn summary(&self, node: u32) -> Option<&str> {
        let i = self.summary_index(node)?;
        self.summaries.get(i).map(String::as_str)
    }

    /// The children of `node`, ascending, all in the level below; empty for a leaf.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn children(&self, node: u32) -> &[u32] {
        self.summary_index(node)
            .and_then(|i| self.children.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// The parent of `node`; `None` for a node of the top level.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn parent(&self, node: u32) -> Option<u32> {
        let p = *at(&self.parents, node as usize, "node");
        (p != u32::MAX).then_some(p)
    }

    /// The leaf whose passage is most central to summary node `node` (nearest its cluster's
    /// centroid, followed down the levels); the leaf itself for a leaf.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn central_leaf(&self, node: u32) -> u32 {
        self.summary_index(node)
            .and_then(|i| self.central.get(i).copied())
            .unwrap_or(node)
    }

    /// The leaves under `node`, ascending (`[node]` for a leaf).
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn leaves_under(&self, node: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![node];
        while let Some(u) = stack.pop() {
            if self.is_leaf(u) {
                out.push(u);
            } else {
                stack.extend_from_slice(self.children(u));
            }
        }
        out.sort_unstable();
        out
    }

    /// Embedding dimensions `D`.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The embedding of `node` (`D` values; unit length, or all zeros for a text without
    /// known terms).
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn embedding(&self, node: u32) -> &[f32] {
        let a = node as usize * self.dims;
        self.embeddings
            .get(a..a + self.dims)
            .unwrap_or_else(|| panic!("node {node} out of range (there are {})", self.num_nodes()))
    }

    /// All embeddings, row-major (`N·D` values).
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// The embedder's vocabulary: `(term, idf)` pairs, terms ascending.
    pub fn vocabulary(&self) -> impl ExactSizeIterator<Item = (&str, f32)> + '_ {
        self.vocabulary
            .iter()
            .map(String::as_str)
            .zip(self.idf.iter().copied())
    }

    /// Which embedder produced the node embeddings.
    pub fn embedder_kind(&self) -> EmbedderKind {
        self.embedder
    }

    /// The embedder that produced the node embeddings, for embedding queries the same way: a
    /// TF-IDF tree's is rebuilt from the stored vocabulary; a MiniLM tree's is loaded from the
    /// model folder `minilm_dir` (ignored for TF-IDF trees).
    ///
    /// # Errors
    /// What [`MiniLmEmbedder::load`] returns, and [`EmbedError::Model`] when the model's
    /// dimensions differ from the tree's.
    pub fn embedder(&self, minilm_dir: &Path) -> Result<Box<dyn Embedder>, EmbedError> {
        match self.embedder {
            EmbedderKind::Tfidf => Ok(Box::new(TfidfEmbedder::from_vocabulary(
                self.vocabulary
                    .iter()
                    .cloned()
                    .zip(self.idf.iter().copied()),
                self.dims,
            ))),
            EmbedderKind::Minilm => {
                let m = MiniLmEmbedder::load(minilm_dir)?;
                if m.dims() != self.dims {
                    return Err(EmbedError::Model {
                        path: minilm_dir.to_path_buf(),
                        reason: format!(
                            "embeds into {} dimensions, the tree into {}",
                            m.dims(),
                            self.dims
                        ),
                    });
                }
                Ok(Box::new(m))
            }
        }
    }

    fn summary_index(&self, node: u32) -> Option<usize> {
        assert!(
            (node as usize) < self.num_nodes(),
            "node {node} out of range"
        );
        (node as usize).checked_sub(self.passage_ids.len())
    }

    /// Serialises the tree to a file image (module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let pb = put_strings(&mut body, self.passage_ids.iter().map(String::as_str));
        let level_starts = self.level_starts.iter().map(|&s| s as u64);
        put(&mut body, level_starts, u64::to_le_bytes);
        let sb = put_strings(&mut body, self.summaries.iter().map(String::as_str));
        let ce = put_lists(&mut body, self.children.iter().map(Vec::as_slice));
        put(&mut body, self.central.iter().copied(), u32::to_le_bytes);
        let vb = put_strings(&mut body, self.vocabulary.iter().map(String::as_str));
        let numbers = self.idf.iter().chain(&self.embeddings).copied();
        put(&mut body, numbers, f32::to_le_bytes);
        let counts = [
            self.passage_ids.len() as u64,
            self.num_nodes() as u64,
            self.num_levels() as u64,
            self.dims as u64,
            self.vocabulary.len() as u64,
            pb,
            sb,
            ce,
            vb,
        ];
        image(
            Container::Tree,
            GraphKind::Tree,
            counts,
            self.embedder.code(),
            &body,
        )
    }

    /// Writes the tree to `path` atomically (temporary file beside it, synced, renamed); an
    /// existing file is replaced only with `overwrite` and only if it is a sleuth graph file.
    /// Returns the bytes written.
    ///
    /// # Errors
    /// [`GraphError::Exists`] when `path` may not be replaced; [`GraphError::Io`] naming the
    /// file for filesystem failures.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<u64, GraphError> {
        write_atomic(path, &self.to_bytes(), overwrite)
    }

    /// Reads a tree file written by [`TreeIndex::write`].
    ///
    /// # Errors
    /// All name `path`: [`GraphError::Io`] when it cannot be read, [`GraphError::WrongKind`]
    /// for a passage graph or knowledge graph, [`GraphError::NotAGraph`] for any other magic,
    /// [`GraphError::UnsupportedVersion`], [`GraphError::Truncated`] when the size disagrees
    /// with the header, [`GraphError::Corrupt`] for a wrong kind code, an unknown embedder, a
    /// checksum mismatch or inconsistent content.
    pub fn read(path: &Path) -> Result<Self, GraphError> {
        Self::from_bytes(&read_image(path)?, path)
    }

    /// Parses a file image; `path` is only used in errors.
    ///
    /// # Errors
    /// As [`TreeIndex::read`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GraphError> {
        let header = Header::<9>::read(bytes, path, Container::Tree)?;
        let corrupt = corruption(path);
        if GraphKind::from_code(header.kind) != Some(GraphKind::Tree) {
            return Err(corrupt(format!("kind {} is not a tree (2)", header.kind)));
        }
        let [p, n, l, d, v, pb, sb, ce, vb] = header.counts;
        let Some(embedder) = EmbedderKind::from_code(header.word) else {
            return Err(corrupt(format!("unknown embedder code {}", header.word)));
        };
        if embedder == EmbedderKind::Minilm && v != 0 {
            return Err(corrupt(format!("a MiniLM tree with {v} vocabulary terms")));
        }
        if n < p || l == 0 || l > MAX_LEVELS || d == 0 {
            return Err(corrupt(format!(
                "impossible counts: {p} passages, {n} nodes, {l} levels, {d} dimensions"
            )));
        }
        // Section sizes in u128 so that absurd counts in a damaged header cannot overflow.
        let (p, n, l, d, v) = (p as u128, n as u128, l as u128, d as u128, v as u128);
        let s = n - p;
        let strings = |k: u128, b: u64| 8 * (k + 1) + u128::from(b);
        let expected = Header::<9>::BYTES as u128
            + strings(p, pb)
            + 8 * (l + 1)
            + strings(s, sb)
            + 8 * (s + 1)
            + 4 * u128::from(ce)
            + 4 * s
            + strings(v, vb)
            + 4 * v
            + 4 * n * d;
        header.check_len(expected)?;
        if n >= u128::from(u32::MAX) {
            return Err(corrupt("counts exceed the u32 id range".into()));
        }
        let mut cur = Cursor::new(header.body()?);
        let (p, n, l, d, v, s) = (
            p as usize, n as usize, l as usize, d as usize, v as usize, s as usize,
        );
        // Struct fields are evaluated in the order written: the section order.
        Self::assemble(TreeParts {
            passage_ids: cur.strings(p, pb, "passage ids").map_err(corrupt)?,
            level_starts: cur
                .u64s(l + 1, "level starts")
                .map_err(corrupt)?
                .into_iter()
                .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
                .collect(),
            summaries: cur.strings(s, sb, "summaries").map_err(corrupt)?,
            children: cur.lists(s, ce, "children").map_err(corrupt)?,
            central: cur.u32s(s, "central leaves").map_err(corrupt)?,
            vocabulary: cur.strings(v, vb, "vocabulary").map_err(corrupt)?,
            idf: cur.f32s(v, "idf").map_err(corrupt)?,
            embedder,
            dims: d,
            embeddings: cur.f32s(n * d, "embeddings").map_err(corrupt)?,
        })
        .map_err(corrupt)
    }

    /// The structural invariants of the module doc.
    fn check(&self) -> Result<(), String> {
        let (p, n, s) = (
            self.passage_ids.len(),
            self.num_nodes(),
            self.summaries.len(),
        );
        if self.by_passage.len() != p {
            return Err("passage ids are not unique".into());
        }
        if self.children.len() != s || self.central.len() != s {
            return Err("summary sections differ in length".into());
        }
        let ls = &self.level_starts;
        if ls.first() != Some(&0) || ls.get(1) != Some(&p) || ls.last() != Some(&n) {
            return Err(format!("level starts {ls:?} do not span 0, {p} … {n}"));
        }
        if ls
            .iter()
            .skip(1)
            .zip(ls.iter().skip(2))
            .any(|(a, b)| a >= b)
        {
            return Err(format!("an upper level of {ls:?} is empty"));
        }
        let mut has_parent = vec![false; n];
        // Each window is (start of the level below, start of the level, its end).
        for (below, w) in ls.windows(3).enumerate() {
            let &[below_start, start, end] = w else {
                continue;
            };
            let level = below + 1;
            for node in start..end {
                let i = node - p;
                let (Some(ch), Some(&central)) = (self.children.get(i), self.central.get(i)) else {
                    return Err(format!(
                        "summary node {node} lies beyond the summary sections"
                    ));
                };
                if ch.is_empty() {
                    return Err(format!("summary node {node} has no children"));
                }
                if ch.iter().zip(ch.iter().skip(1)).any(|(a, b)| a >= b) {
                    return Err(format!("children of node {node} are not ascending"));
                }
                for &c in ch {
                    let c = c as usize;
                    let slot = has_parent
                        .get_mut(c)
                        .filter(|_| below_start <= c && c < start);
                    let Some(slot) = slot else {
                        return Err(format!(
                            "node {node} of level {level} has child {c} outside level {below}"
                        ));
                    };
                    if std::mem::replace(slot, true) {
                        return Err(format!("node {c} has two parents"));
                    }
                }
                if central as usize >= p {
                    return Err(format!("central leaf of node {node} is not a leaf"));
                }
            }
        }
        // The start of the top level; `ls` has at least two entries (checked above).
        let top = ls.iter().rev().nth(1).copied().unwrap_or(0);
        if let Some(orphan) = has_parent.iter().take(top).position(|&h| !h) {
            return Err(format!("node {orphan} below the top level has no parent"));
        }
        if self.dims == 0 || self.embeddings.len() != n * self.dims {
            return Err("embeddings do not hold N·D values".into());
        }
        if self.embeddings.iter().any(|x| !x.is_finite()) {
            return Err("an embedding value is not finite".into());
        }
        if self.vocabulary.len() != self.idf.len() {
            return Err("vocabulary and idf differ in length".into());
        }
        let vocabulary = &self.vocabulary;
        if vocabulary
            .iter()
            .zip(vocabulary.iter().skip(1))
            .any(|(a, b)| a >= b)
        {
            return Err("vocabulary terms are not ascending and unique".into());
        }
        if self.idf.iter().any(|x| !x.is_finite() || *x <= 0.0) {
            return Err("an idf is not finite and positive".into());
        }
        Ok(())
    }
}
