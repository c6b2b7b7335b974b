//! `sleuth search` (print the top passages of one query) and `sleuth retrieval-server`
//! (R1-Searcher's and Search-R1's HTTP retrieval APIs over any backend).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{open_retriever, open_search};
use sleuth::config::RunConfig;
use sleuth::search::{Bm25Retriever, Retriever};

/// Flags of `sleuth search`.
#[derive(Args)]
pub struct SearchArgs {
    /// Index directory (overrides the config's [search].index).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Env config whose [search] section names the index.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of passages to print.
    #[arg(short = 'k', long, default_value_t = 5)]
    pub k: usize,
    /// The query (any text; operator characters are treated as text).
    pub query: String,
}

/// Flags of `sleuth retrieval-server`.
#[derive(Args)]
pub struct RetrievalServerArgs {
    /// Index directory built by `sleuth index build`.
    #[arg(long, default_value = "index/wiki")]
    pub index: PathBuf,
    /// Serve the search backend this env config names (BM25, a graph kind, online) instead of
    /// --index.
    #[arg(long, conflicts_with = "title_boost")]
    pub config: Option<PathBuf>,
    /// Address to bind (use 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Multiplier on title matches (BM25 option).
    #[arg(long)]
    pub title_boost: Option<f32>,
    /// Seconds a client has to send its request headers before its connection is closed
    /// (default 10).
    #[arg(long, value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Connections held open at once; more wait to be accepted (default 1024).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Passages (queries × k over the large requests in flight) searched and answered at
    /// once; a request waits for its share, bounding memory (default 204,800: two 1,024 × 100
    /// requests).
    #[arg(long, value_name = "N")]
    pub max_inflight_passages: Option<usize>,
    /// Requests of at most this many passages (queries × k) are small: they have a lane of
    /// eight such requests of their own, never queued behind large batches (default 4,096).
    #[arg(long, value_name = "N")]
    pub small_request_passages: Option<usize>,
}

/// `sleuth search`: the top-k passages of one query, with scores and ids.
pub fn run_search(a: SearchArgs) -> Result<()> {
    let r: Box<dyn Retriever> = match (&a.index, &a.config) {
        (Some(i), _) => Box::new(open_retriever(i)?),
        // The config's backend: BM25, a graph-RAG index, or online search.
        (None, Some(c)) => open_search(&RunConfig::load(c)?)?,
        (None, None) => bail!("give --index DIR or --config FILE"),
    };
    for (i, hit) in r.search(&a.query, a.k)?.iter().enumerate() {
        println!(
            "{:>2}. [{:.3}] {}  ({})",
            i + 1,
            hit.score,
            hit.render(),
            hit.id
        );
    }
    Ok(())
}

/// `sleuth retrieval-server`: serves until interrupted (see [`sleuth::search::server`]).
pub fn run_retrieval_server(a: RetrievalServerArgs) -> Result<()> {
    let mut opts = sleuth::search::Bm25Options::default();
    if let Some(b) = a.title_boost {
        opts.title_boost = b;
    }
    let retriever: std::sync::Arc<dyn Retriever> = match &a.config {
        Some(c) => open_search(&RunConfig::load(c)?)?.into(),
        None => std::sync::Arc::new(
            Bm25Retriever::open_with(&a.index, opts)
                .with_context(|| format!("opening index {}", a.index.display()))?,
        ),
    };
    let addr = std::net::SocketAddr::new(a.host, a.port);
    let mut cfg = sleuth::search::ServerConfig::default();
    if let Some(s) = a.header_read_timeout {
        cfg.conn.header_read_timeout_s = s;
    }
    if let Some(n) = a.max_connections {
        cfg.conn.max_connections = n;
    }
    if let Some(n) = a.max_inflight_passages {
        cfg.max_inflight_passages = n;
    }
    if let Some(n) = a.small_request_passages {
        cfg.small_request_passages = n;
    }
    Ok(sleuth::search::server::run(
        retriever,
        addr,
        cfg,
        |bound| eprintln!("retrieval server listening on http://{bound}"),
    )?)
}
