//! Graph-RAG indexes (DESIGN §6, arXiv 2503.04338): graphs over the passages of a corpus that a
//! retriever walks after a BM25 seed search.
//!
//! Five kinds are built today, all without an LLM:
//!
//! - the **passage graph** ([`build_pg`], `pg.rs`): a node per passage, an edge between two
//!   passages that share linked entities, weighted by how rare those entities are;
//! - the **knowledge graph** (KG), **textual KG** (TKG) and **rich KG** (RKG) ([`build_kg`],
//!   `kg.rs`): entity nodes found by the passage graph's [`EntityLinker`], relation edges
//!   between entities that co-occur in a sentence, each linked to its source passages; the TKG
//!   adds descriptions (the sentences that mention an entity or relation), the RKG adds TF-IDF
//!   keywords to relations. They are stored in their own container ([`KnowledgeGraph`], format
//!   in `kg_format.rs`), because their sections (names, texts, passage lists, sentences) share
//!   nothing with a passage graph's CSR arrays.
//!
//! The fifth kind, the **RAPTOR tree** ([`build_tree`], `tree.rs`), clusters passages level by
//! level under extractive summary nodes, every node embedded by an [`Embedder`] (hashed TF-IDF
//! today); it has its own container too ([`TreeIndex`], format in `tree_format.rs`).
//!
//! Design choices:
//!
//! - **Nodes are passages, keyed by passage id.** The file stores the corpus ids in node order,
//!   so a graph maps back to the BM25 index built over the same corpus without relying on
//!   tantivy's internal document numbers (which change with merges and rebuilds). The retriever
//!   ([`crate::search::graph::GraphRetriever`]) checks at open time that both hold the same
//!   passage count.
//! - **One binary file, CSR adjacency** ([`PassageGraph`], format in `format.rs`): a header
//!   with magic, version, counts and a CRC-32 of the body, then the id table, row offsets, `u32`
//!   neighbour ids and `f32` weights. Loading is one `read` and a linear parse, with no
//!   per-edge allocation; a truncated or corrupt file is an error naming the path and what is
//!   wrong.
//! - **Atomic writes.** The file is written to a hidden temporary name beside the target, synced
//!   and renamed over it, so a reader never sees half a graph. An existing file is replaced only
//!   with `overwrite`, and only when it is itself a sleuth graph.

use std::path::PathBuf;

use crate::corpus::CorpusError;

mod build;
mod container;
mod format;
mod kg;
mod kg_format;
mod pg;
mod tree;
mod tree_format;

pub use format::{GraphKind, PassageGraph, FORMAT_VERSION, MAGIC};
pub use kg::{
    build_kg, build_kg_from_path, llm_cache_path, split_sentences, text_terms, KgOptions, KgStats,
    DEFAULT_DESCRIPTION_SENTENCES, DEFAULT_DESCRIPTION_WORDS, DEFAULT_KEYWORDS, DEFAULT_KG_MAX_DF,
    DEFAULT_RELATION_WORDS,
};
pub use kg_format::{Entity, KnowledgeGraph, Relation, KG_FORMAT_VERSION, KG_MAGIC};
pub use pg::{
    build_pg, build_pg_from_path, EntityLinker, PgOptions, PgStats, DEFAULT_MAX_DF,
    DEFAULT_MIN_SHARED, DEFAULT_MIN_TITLE_CHARS,
};
// The embedders live in crate::embed; re-exported here where the tree's users look for them.
pub use crate::embed::{hashed_feature, Embedder, EmbedderKind, TfidfEmbedder};
pub use tree::{
    bisecting_clusters, build_tree, build_tree_from_path, dot, kmeans, KMeans, TreeOptions,
    TreeStats, DEFAULT_CLUSTER_SIZE, DEFAULT_EMBEDDING_DIMS, DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_SUMMARY_SENTENCES, DEFAULT_SUMMARY_WORDS, DEFAULT_TREE_LEVELS,
};
pub use tree_format::{TreeIndex, TREE_FORMAT_VERSION, TREE_MAGIC};

/// Errors building, writing or reading a graph index. Every variant tied to a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Reading the corpus failed; the inner error names the corpus file and line.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// The tree's embedding model could not be loaded (the inner error names the file).
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// A filesystem operation (open, read, write, rename) failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done, e.g. `"cannot read graph"`.
        action: &'static str,
        /// The file acted on.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file starts with none of the graph magics ([`MAGIC`], [`KG_MAGIC`], [`TREE_MAGIC`]):
    /// it is not a sleuth graph.
    #[error("{path} is not a sleuth graph file (bad magic bytes)", path = path.display())]
    NotAGraph {
        /// The file.
        path: PathBuf,
    },
    /// The file is a sleuth graph of another kind than the reader or backend expects (a
    /// knowledge graph given to the passage-graph backend, a KG given as a TKG, …).
    #[error("graph {path} is {found}, but {wanted} was expected (check the backend and --kind)", path = path.display())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What the file holds.
        found: &'static str,
        /// What was asked for.
        wanted: &'static str,
    },
    /// The file was written in a format version this build cannot read.
    #[error(
        "graph {path} has format version {found}; this sleuth reads version {supported}",
        path = path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// The version this build reads ([`FORMAT_VERSION`]).
        supported: u32,
    },
    /// The file is shorter (or longer) than its header says: an interrupted copy or write.
    #[error(
        "graph {path} is truncated or padded: its header implies {expected} bytes, the file has {found}",
        path = path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Size implied by the header counts.
        expected: u64,
        /// Actual size.
        found: u64,
    },
    /// The file has the right size but its content is inconsistent (checksum mismatch, offsets
    /// out of order, a neighbour id out of range, an id that is not UTF-8, …).
    #[error("graph {path} is corrupt: {reason}", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The output exists and `overwrite` was not set, or it is not a sleuth graph.
    #[error("refusing to overwrite {path}: {reason}", path = path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
        /// Why it was left alone.
        reason: &'static str,
    },
    /// Two corpus passages share an id, so nodes could not be mapped back to passages.
    #[error("passage id {id:?} occurs twice in the corpus; graph nodes need unique ids")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
    /// The graph and the BM25 index it is used with were not built from the same corpus.
    #[error(
        "graph {graph} does not match index {index}: {reason}",
        graph = graph.display(),
        index = index.display()
    )]
    IndexMismatch {
        /// The graph file.
        graph: PathBuf,
        /// The BM25 index directory.
        index: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A builder option is out of range.
    #[error("invalid graph option `{name}`: {reason}")]
    InvalidOption {
        /// The option's field name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The LLM endpoint failed for good (after retries), or its reply cache is unreadable; the
    /// inner error names the URL or the cache file.
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmError),
}
