//! The on-disk graph container, format version 1. All integers little-endian.
//!
//! ```text
//! offset  size          field
//! 0       8             magic  b"SLEUTHGR"
//! 8       4             format version (u32) = 1
//! 12      4             kind (u32): 1 = passage graph (the tree, 2, and the KG kinds, 3–5,
//!                       have their own containers: `tree_format.rs`, `kg_format.rs`)
//! 16      8             n: nodes (u64)
//! 24      8             m: arcs (u64): adjacency entries; an undirected edge is stored twice
//! 32      8             b: bytes of the id blob (u64)
//! 40      4             CRC-32 (IEEE) of everything after the header (u32)
//! 44      4             reserved, zero
//! 48      8·(n+1)       id offsets (u64) into the id blob; node i's id is blob[off[i]..off[i+1]]
//! …       b             id blob: the passage ids, UTF-8, concatenated in node order
//! …       8·(n+1)       CSR row offsets (u64); node i's neighbours are entries row[i]..row[i+1]
//! …       4·m           neighbour node ids (u32), ascending within a row
//! …       4·m           edge weights (f32), finite and positive
//! ```
//!
//! The size is fully determined by the header, so truncation is caught before parsing; the CRC
//! catches flipped bytes; structural checks (monotone offsets, ids in range, UTF-8) catch a
//! writer bug that the CRC would faithfully preserve.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::container::{
    at, check_offsets, corruption, image, index_ids, put, put_strings, read_image, spans,
    write_atomic, Container, Cursor, Header,
};
use super::GraphError;

/// The first eight bytes of every sleuth graph file.
pub const MAGIC: [u8; 8] = *b"SLEUTHGR";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Which graph-RAG construction produced a file (DESIGN §6, arXiv 2503.04338). The code stored
/// in a file header is fixed per kind: 1 passage graph, 2 RAPTOR tree, 3 KG, 4 textual KG, 5
/// rich KG. Passage graphs live in this container, the tree in the tree container of
/// `tree_format.rs`, the three KG kinds in the knowledge-graph container of `kg_format.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GraphKind {
    /// Passage graph: a node per passage, edges between passages sharing entities.
    Passage,
    /// Knowledge graph: entity nodes, relation edges from sentence co-occurrence.
    Kg,
    /// Textual knowledge graph: a KG whose entities and relations carry descriptions.
    Tkg,
    /// Rich knowledge graph: a textual KG whose relations also carry keywords.
    Rkg,
    /// RAPTOR tree: passages as leaves, clustered level by level under extractive summaries.
    Tree,
}

impl GraphKind {
    /// The code stored in a file header.
    pub fn code(self) -> u32 {
        match self {
            GraphKind::Passage => 1,
            GraphKind::Tree => 2,
            GraphKind::Kg => 3,
            GraphKind::Tkg => 4,
            GraphKind::Rkg => 5,
        }
    }

    /// The kind of a header code; `None` for an unknown code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(GraphKind::Passage),
            2 => Some(GraphKind::Tree),
            3 => Some(GraphKind::Kg),
            4 => Some(GraphKind::Tkg),
            5 => Some(GraphKind::Rkg),
            _ => None,
        }
    }

    /// The short name used on the command line and in backend names: `pg`, `kg`, `tkg`, `rkg`,
    /// `tree`.
    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Passage => "pg",
            GraphKind::Kg => "kg",
            GraphKind::Tkg => "tkg",
            GraphKind::Rkg => "rkg",
            GraphKind::Tree => "tree",
        }
    }

    /// A phrase naming the kind in errors, e.g. `"a textual knowledge graph (tkg)"`.
    pub fn describe(self) -> &'static str {
        match self {
            GraphKind::Passage => "a passage graph (pg)",
            GraphKind::Kg => "a knowledge graph (kg)",
            GraphKind::Tkg => "a textual knowledge graph (tkg)",
            GraphKind::Rkg => "a rich knowledge graph (rkg)",
            GraphKind::Tree => "a RAPTOR tree (tree)",
        }
    }

    /// Whether this is one of the knowledge-graph kinds (KG, TKG, RKG).
    pub fn is_knowledge_graph(self) -> bool {
        matches!(self, GraphKind::Kg | GraphKind::Tkg | GraphKind::Rkg)
    }
}

impl std::fmt::Display for GraphKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A weighted graph over passages in compressed sparse row form, loaded from or written to one
/// file (format above). Node `i` stands for the passage whose id is [`PassageGraph::id`]`(i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageGraph {
    kind: GraphKind,
    ids: Vec<String>,
    rows: Vec<u64>,
    targets: Vec<u32>,
    weights: Vec<f32>,
    by_id: HashMap<String, u32>,
}

impl PassageGraph {
    /// Builds a graph from per-node adjacency lists: `adjacency[i]` holds `(neighbour, weight)`
    /// pairs of node `i`, which are sorted by neighbour here. The caller supplies both directions
    /// of an undirected edge.
    ///
    /// # Panics
    /// When `ids` and `adjacency` differ in length, a neighbour is out of range, or there are
    /// `u32::MAX` nodes or more (builder bugs, not data errors).
    pub fn from_adjacency(
        kind: GraphKind,
        ids: Vec<String>,
        adjacency: Vec<Vec<(u32, f32)>>,
    ) -> Self {
        assert_eq!(ids.len(), adjacency.len(), "one adjacency list per node");
        assert!(ids.len() < u32::MAX as usize, "too many nodes for u32 ids");
        let arcs: usize = adjacency.iter().map(Vec::len).sum();
        let mut rows = Vec::with_capacity(ids.len() + 1);
        let mut targets = Vec::with_capacity(arcs);
        let mut weights = Vec::with_capacity(arcs);
        rows.push(0);
        for mut row in adjacency {
            row.sort_by_key(|&(t, _)| t);
            for (t, w) in row {
                assert!((t as usize) < ids.len(), "neighbour {t} out of range");
                targets.push(t);
                weights.push(w);
            }
            rows.push(targets.len() as u64);
        }
        let by_id = index_ids(&ids);
        Self {
            kind,
            ids,
            rows,
            targets,
            weights,
            by_id,
        }
    }

    /// Which construction built the graph.
    pub fn kind(&self) -> GraphKind {
        self.kind
    }

    /// Number of nodes (passages).
    pub fn num_nodes(&self) -> usize {
        self.ids.len()
    }

    /// Number of undirected edges (each is stored in both endpoints' rows).
    pub fn num_edges(&self) -> usize {
        self.targets.len() / 2
    }

    /// The passage id of node `node`.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn id(&self, node: u32) -> &str {
        at(&self.ids, node as usize, "node").as_str()
    }

    /// The node of a passage id, if the graph has it.
    pub fn node(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The neighbours of `node` with edge weights, in ascending neighbour order.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn neighbors(&self, node: u32) -> impl ExactSizeIterator<Item = (u32, f32)> + '_ {
        let (targets, weights) = self
            .row(node)
            .unwrap_or_else(|| panic!("node {node} out of range (there are {})", self.ids.len()));
        targets.iter().copied().zip(weights.iter().copied())
    }

    /// The weight of the edge between `a` and `b`, if there is one (`None` also when `a` is
    /// out of range).
    pub fn weight(&self, a: u32, b: u32) -> Option<f32> {
        let (targets, weights) = self.row(a)?;
        let i = targets.binary_search(&b).ok()?;
        weights.get(i).copied()
    }

    /// The neighbours and weights of `node`'s row; `None` when `node` is out of range.
    fn row(&self, node: u32) -> Option<(&[u32], &[f32])> {
        let node = node as usize;
        let (&lo, &hi) = (self.rows.get(node)?, self.rows.get(node.checked_add(1)?)?);
        let span = usize::try_from(lo).ok()?..usize::try_from(hi).ok()?;
        Some((self.targets.get(span.clone())?, self.weights.get(span)?))
    }

    /// The file image: header and body (format in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let id_bytes: usize = self.ids.iter().map(String::len).sum();
        let (n, m) = (self.ids.len(), self.targets.len());
        let mut body = Vec::with_capacity(16 * (n + 1) + id_bytes + 8 * m);
        let id_bytes = put_strings(&mut body, self.ids.iter().map(String::as_str));
        put(&mut body, self.rows.iter().copied(), u64::to_le_bytes);
        put(&mut body, self.targets.iter().copied(), u32::to_le_bytes);
        put(&mut body, self.weights.iter().copied(), f32::to_le_bytes);
        let counts = [n as u64, m as u64, id_bytes];
        image(Container::Passage, self.kind, counts, 0, &body)
    }

    /// Writes the graph to `path` atomically: a hidden temporary file beside it is written,
    /// synced and renamed over `path`. Returns the bytes written. An existing `path` is
    /// replaced only with `overwrite`, and only if it is a sleuth graph file.
    ///
    /// # Errors
    /// [`GraphError::Exists`] when `path` may not be replaced; [`GraphError::Io`] naming the
    /// file for filesystem failures.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<u64, GraphError> {
        write_atomic(path, &self.to_bytes(), overwrite)
    }

    /// Reads a graph file written by [`PassageGraph::write`].
    ///
    /// # Errors
    /// All name `path`: [`GraphError::Io`] when it cannot be read, [`GraphError::WrongKind`]
    /// for a knowledge-graph or tree file, [`GraphError::NotAGraph`] for another wrong magic, [`GraphError::UnsupportedVersion`], [`GraphError::Truncated`] when the
    /// size disagrees with the header, [`GraphError::Corrupt`] for a checksum mismatch or
    /// inconsistent content.
    pub fn read(path: &Path) -> Result<Self, GraphError> {
        Self::from_bytes(&read_image(path)?, path)
    }

    /// Parses a file image; `path` is only used in errors.
    ///
    /// # Errors
    /// As [`PassageGraph::read`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GraphError> {
        let header = Header::<3>::read(bytes, path, Container::Passage)?;
        let corrupt = corruption(path);
        let kind = match GraphKind::from_code(header.kind) {
            Some(GraphKind::Passage) => GraphKind::Passage,
            _ => return Err(corrupt(format!("unknown graph kind {}", header.kind))),
        };
        let [n, m, b] = header.counts;
        // Computed in u128 so absurd counts in a damaged header cannot overflow.
        header.check_len(
            Header::<3>::BYTES as u128
                + 16 * (u128::from(n) + 1)
                + u128::from(b)
                + 8 * u128::from(m),
        )?;
        if n >= u64::from(u32::MAX) {
            return Err(corrupt(format!("{n} nodes exceed the u32 node id range")));
        }
        let mut cur = Cursor::new(header.body()?);
        let (n, m) = (n as usize, m as usize);
        let ids = cur.strings(n, b, "passage ids").map_err(corrupt)?;
        let rows = cur.u64s(n + 1, "row offsets").map_err(corrupt)?;
        let targets = cur.u32s(m, "neighbour ids").map_err(corrupt)?;
        let weights = cur.f32s(m, "edge weights").map_err(corrupt)?;
        check_offsets(&rows, m as u64, "row offsets").map_err(corrupt)?;
        for (node, span) in spans(&rows).enumerate() {
            let Some(row) = span.and_then(|r| targets.get(r)) else {
                return Err(corrupt(format!(
                    "row offsets of node {node} lie beyond the {m} neighbour entries"
                )));
            };
            if let Some(&t) = row.iter().find(|&&t| t as usize >= n) {
                return Err(corrupt(format!(
                    "node {node} has neighbour {t}, but there are {n} nodes"
                )));
            }
            if row.iter().zip(row.iter().skip(1)).any(|(a, b)| a >= b) {
                return Err(corrupt(format!(
                    "neighbours of node {node} are not ascending"
                )));
            }
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(corrupt(format!(
                "edge weight {w} is not finite and positive"
            )));
        }
        let by_id = index_ids(&ids);
        if by_id.len() != ids.len() {
            return Err(corrupt("passage ids are not unique".into()));
        }
        Ok(Self {
            kind,
            ids,
            rows,
            targets,
            weights,
            by_id,
        })
    }
}
