//! Retrieval: the [`Retriever`] seam and its backends.
//!
//! Everything that needs documents for a query goes through [`Retriever`]: the rollout
//! environment when the policy closes a `<|end_of_query|>`, evaluation, the retrieval server,
//! and the agent behind `sleuth serve`. Backends: [`Bm25Retriever`] over a local tantivy index,
//! [`GraphRetriever`] (BM25 seeds expanded along a graph-RAG passage graph), [`KgRetriever`]
//! (personalized PageRank over a graph-RAG knowledge graph), [`TreeRetriever`] (collapsed-tree
//! retrieval over a RAPTOR tree) and [`OnlineRetriever`]; all
//! implement the same trait, so none of those callers change when the
//! backend does.
//!
//! Queries are written by a language model, not a person: they may hold quotes, operators,
//! unbalanced brackets, field-like `title:foo`, or be empty or enormous. A backend treats the
//! query as plain words and never fails because of its content; errors are reserved for a
//! broken backend (an unreadable index, a dead server).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::index::IndexError;

pub mod bm25;
pub mod config;
pub mod graph;
pub mod http;
pub mod kg;
pub mod online;
pub mod server;
pub mod tree;

pub use bm25::{Bm25Options, Bm25Retriever, DEFAULT_MAX_QUERY_TERMS, DEFAULT_TITLE_BOOST};
pub use config::{SearchBackend, SearchSection};
pub use graph::{GraphOptions, GraphRetriever, DEFAULT_GRAPH_ALPHA, DEFAULT_GRAPH_SEEDS};
pub use http::{HttpRetriever, HttpSearchOptions};
pub use kg::{
    personalized_pagerank, KgRetriever, KgSearchOptions, PprOptions, SeedSource, TransitionMatrix,
};
#[cfg(feature = "online")]
pub use online::OnlineRetriever;
pub use online::{Engine, OnlineConfig};
pub use server::ServerConfig;
pub use tree::{
    TreeRetriever, TreeSearchOptions, DEFAULT_TREE_BM25_CANDIDATES, DEFAULT_TREE_BM25_WEIGHT,
    DEFAULT_TREE_EXPAND_LEAVES, SUMMARY_ID_PREFIX, SUMMARY_TITLE_PREFIX,
};

/// One retrieved passage with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The passage id from the corpus.
    pub id: String,
    /// Title of the passage's page.
    pub title: String,
    /// The passage text.
    pub text: String,
    /// Backend relevance score (BM25 for [`Bm25Retriever`]); higher is better, comparable only
    /// within one result list.
    pub score: f32,
}

impl Hit {
    /// The passage as the policy sees it inside a document block: `"{title}" {text}`
    /// (DESIGN §6).
    pub fn render(&self) -> String {
        format!("\"{}\" {}", self.title, self.text)
    }
}

/// A search backend: top-k passages for a free-text query.
///
/// This is the seam between the agent and its knowledge source. The rollout environment, the
/// evaluator, the retrieval server and the chat server all hold a `dyn Retriever` (or a generic
/// `R: Retriever`), so local BM25, graph-RAG and online search backends, and test doubles, are
/// interchangeable. `Send + Sync` because rollouts and servers search from many threads at once
/// through one shared retriever.
///
/// Contract, for every implementation:
/// - any string is a valid query (empty, huge, full of operator characters): a query that
///   yields no searchable terms gives `Ok(vec![])`, never an error or a panic;
/// - at most `k` hits come back, best first (scores non-increasing); `k == 0` gives none;
/// - errors mean the backend itself failed.
pub trait Retriever: Send + Sync {
    /// Returns up to `k` passages for `query`, best first.
    ///
    /// # Errors
    /// [`SearchError`] when the backend fails (never because of the query's content).
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError>;

    /// Runs several queries; result `i` answers `queries[i]`. The default runs them one after
    /// another; backends with a cheaper batch path (a remote server) override it.
    ///
    /// # Errors
    /// The first [`SearchError`] any query returns.
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        queries.iter().map(|q| self.search(q, k)).collect()
    }
}

impl<R: Retriever + ?Sized> Retriever for &R {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        (**self).search(query, k)
    }
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        (**self).search_batch(queries, k)
    }
}

impl<R: Retriever + ?Sized> Retriever for Box<R> {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        (**self).search(query, k)
    }
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        (**self).search_batch(queries, k)
    }
}

impl<R: Retriever + ?Sized> Retriever for Arc<R> {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        (**self).search(query, k)
    }
    fn search_batch(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, SearchError> {
        (**self).search_batch(queries, k)
    }
}

/// Errors opening or querying a search backend. Variants tied to an index name its directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The path does not exist, is not a directory, or holds no tantivy index.
    #[error("{path} is not a search index: {reason}", path = path.display())]
    NotAnIndex {
        /// The directory given.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// tantivy could not open the index: its metadata or segment files are corrupt or missing.
    #[error("cannot open index {path} (corrupt or incomplete?): {source}", path = path.display())]
    Corrupt {
        /// The index directory.
        path: PathBuf,
        /// The underlying tantivy error.
        #[source]
        source: tantivy::TantivyError,
    },
    /// The index opened but lacks the passage fields sleuth needs, or has them with other types.
    #[error("index {path} has an unexpected schema: {reason}", path = path.display())]
    Schema {
        /// The index directory.
        path: PathBuf,
        /// Which field is missing or mistyped.
        reason: String,
    },
    /// The index manifest (`sleuth-index.json`) is unreadable or from a newer format; the inner
    /// error names the file.
    #[error(transparent)]
    Manifest(#[from] IndexError),
    /// A retriever option is out of range.
    #[error("invalid search option `{name}`: {reason}")]
    InvalidOption {
        /// The option's field name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The online backend's search engine failed (unreachable, timed out, non-2xx status,
    /// unparsable result page), or an offline run missed its cache.
    #[error("online search ({engine}) failed at {url}: {reason}")]
    Online {
        /// Engine name, e.g. `searxng`.
        engine: &'static str,
        /// The URL (or cache directory) concerned.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A remote retrieval server (`backend = "http"`) failed or sent no `/retrieve` answer.
    #[error("retrieval server {url} failed: {reason}")]
    Remote {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A graph-RAG index is unreadable, truncated, corrupt or built over another corpus; the
    /// inner error names the file.
    #[error(transparent)]
    Graph(#[from] crate::index::graph::GraphError),
    /// The backend failed while searching or loading stored passages.
    #[error("search failed on index {path}: {source}", path = path.display())]
    Backend {
        /// The index directory.
        path: PathBuf,
        /// The underlying tantivy error.
        #[source]
        source: tantivy::TantivyError,
    },
}
