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

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{GraphError, KG_MAGIC, TREE_MAGIC};

/// The first eight bytes of every sleuth graph file.
pub const MAGIC: [u8; 8] = *b"SLEUTHGR";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header size in bytes.
const HEADER_BYTES: usize = 48;

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
        &self.ids[node as usize]
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
        let (a, b) = (
            self.rows[node as usize] as usize,
            self.rows[node as usize + 1] as usize,
        );
        self.targets[a..b]
            .iter()
            .copied()
            .zip(self.weights[a..b].iter().copied())
    }

    /// The weight of the edge between `a` and `b`, if there is one.
    pub fn weight(&self, a: u32, b: u32) -> Option<f32> {
        let (lo, hi) = (
            self.rows[a as usize] as usize,
            self.rows[a as usize + 1] as usize,
        );
        let row = &self.targets[lo..hi];
        row.binary_search(&b).ok().map(|i| self.weights[lo + i])
    }

    /// The file image: header and body (format in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let id_bytes: usize = self.ids.iter().map(String::len).sum();
        let n = self.ids.len();
        let m = self.targets.len();
        let mut body = Vec::with_capacity(16 * (n + 1) + id_bytes + 8 * m);
        let mut off = 0u64;
        body.extend_from_slice(&off.to_le_bytes());
        for id in &self.ids {
            off += id.len() as u64;
            body.extend_from_slice(&off.to_le_bytes());
        }
        for id in &self.ids {
            body.extend_from_slice(id.as_bytes());
        }
        for r in &self.rows {
            body.extend_from_slice(&r.to_le_bytes());
        }
        for t in &self.targets {
            body.extend_from_slice(&t.to_le_bytes());
        }
        for w in &self.weights {
            body.extend_from_slice(&w.to_le_bytes());
        }
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.kind.code().to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(m as u64).to_le_bytes());
        out.extend_from_slice(&(id_bytes as u64).to_le_bytes());
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&body);
        out
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
        let bytes = fs::read(path).map_err(io_err("cannot read graph", path))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a file image; `path` is only used in errors.
    ///
    /// # Errors
    /// As [`PassageGraph::read`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GraphError> {
        let corrupt = |reason: String| GraphError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() >= KG_MAGIC.len() && bytes[..KG_MAGIC.len()] == KG_MAGIC {
            return Err(GraphError::WrongKind {
                path: path.to_path_buf(),
                found: "a knowledge graph (kg, tkg or rkg)",
                wanted: "a passage graph",
            });
        }
        if bytes.len() >= TREE_MAGIC.len() && bytes[..TREE_MAGIC.len()] == TREE_MAGIC {
            return Err(GraphError::WrongKind {
                path: path.to_path_buf(),
                found: GraphKind::Tree.describe(),
                wanted: "a passage graph",
            });
        }
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(GraphError::NotAGraph {
                path: path.to_path_buf(),
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(GraphError::Truncated {
                path: path.to_path_buf(),
                expected: HEADER_BYTES as u64,
                found: bytes.len() as u64,
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(GraphError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let kind = match GraphKind::from_code(u32_at(12)) {
            Some(GraphKind::Passage) => GraphKind::Passage,
            _ => return Err(corrupt(format!("unknown graph kind {}", u32_at(12)))),
        };
        let (n, m, b) = (u64_at(16), u64_at(24), u64_at(32));
        let crc_stored = u32_at(40);
        // Computed in u128 so absurd counts in a damaged header cannot overflow.
        let expected =
            HEADER_BYTES as u128 + 16 * (u128::from(n) + 1) + u128::from(b) + 8 * u128::from(m);
        if expected != bytes.len() as u128 {
            return Err(GraphError::Truncated {
                path: path.to_path_buf(),
                expected: u64::try_from(expected).unwrap_or(u64::MAX),
                found: bytes.len() as u64,
            });
        }
        if n >= u64::from(u32::MAX) {
            return Err(corrupt(format!("{n} nodes exceed the u32 node id range")));
        }
        let body = &bytes[HEADER_BYTES..];
        let mut crc = flate2::Crc::new();
        crc.update(body);
        if crc.sum() != crc_stored {
            return Err(corrupt(format!(
                "checksum mismatch (header {crc_stored:#010x}, body {:#010x})",
                crc.sum()
            )));
        }
        let (n, m, b) = (n as usize, m as usize, b as usize);
        let mut pos = 0;
        let mut take = |len: usize| {
            let s = &body[pos..pos + len];
            pos += len;
            s
        };
        let id_offsets = read_u64s(take(8 * (n + 1)));
        let blob = take(b);
        let rows = read_u64s(take(8 * (n + 1)));
        let targets: Vec<u32> = take(4 * m)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let weights: Vec<f32> = take(4 * m)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();

        check_offsets(&id_offsets, b as u64, "id offsets").map_err(corrupt)?;
        check_offsets(&rows, m as u64, "row offsets").map_err(corrupt)?;
        let blob = std::str::from_utf8(blob)
            .map_err(|e| corrupt(format!("passage ids are not UTF-8: {e}")))?;
        let mut ids = Vec::with_capacity(n);
        for w in id_offsets.windows(2) {
            let (a, z) = (w[0] as usize, w[1] as usize);
            let id = blob
                .get(a..z)
                .ok_or_else(|| corrupt(format!("id offset {a} splits a UTF-8 character")))?;
            ids.push(id.to_string());
        }
        for (node, w) in rows.windows(2).enumerate() {
            let row = &targets[w[0] as usize..w[1] as usize];
            if let Some(&t) = row.iter().find(|&&t| t as usize >= n) {
                return Err(corrupt(format!(
                    "node {node} has neighbour {t}, but there are {n} nodes"
                )));
            }
            if row.windows(2).any(|p| p[0] >= p[1]) {
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

fn index_ids(ids: &[String]) -> HashMap<String, u32> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i as u32))
        .collect()
}

pub(super) fn read_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Offsets must start at 0, never decrease and end at `end`.
pub(super) fn check_offsets(offsets: &[u64], end: u64, what: &str) -> Result<(), String> {
    if offsets.first() != Some(&0) || offsets.last() != Some(&end) {
        return Err(format!("{what} do not span 0..{end}"));
    }
    if offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!("{what} decrease"));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it is written, synced
/// and renamed over `path`. Returns the bytes written. An existing `path` is replaced only with
/// `overwrite`, and only if it is a sleuth graph file of any container.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<u64, GraphError> {
    check_target(path, overwrite)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let name = path
        .file_name()
        .map_or_else(|| "graph".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(bytes.len() as u64)
}

/// Refuses to replace anything but a sleuth graph, and that only with `overwrite`.
fn check_target(path: &Path, overwrite: bool) -> Result<(), GraphError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let exists = |reason| GraphError::Exists {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(exists("it exists and is not a file"));
    }
    if !overwrite {
        return Err(exists("it exists (pass overwrite to replace it)"));
    }
    let mut head = [0u8; 8];
    let is_graph = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && (head == MAGIC || head == KG_MAGIC || head == TREE_MAGIC);
    if !is_graph {
        return Err(exists("it is not a sleuth graph file"));
    }
    Ok(())
}

pub(super) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> GraphError {
    let path = path.to_path_buf();
    move |source| GraphError::Io {
        action,
        path,
        source,
    }
}
