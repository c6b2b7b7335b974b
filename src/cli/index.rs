//! `sleuth index build` (tantivy BM25) and `sleuth index graph` (graph-RAG builders,
//! DESIGN §6): flags, and the check that each flag applies to the chosen kind.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use sleuth::index::{build_bm25_from_path, IndexOptions};

/// The `sleuth index` subcommands.
#[derive(Subcommand)]
pub enum IndexCmd {
    /// Build a BM25 (tantivy) index over a JSONL corpus of {"id","title","text"} rows (gz or plain).
    Build {
        /// Corpus file, JSONL or gzip JSONL.
        #[arg(long)]
        corpus: PathBuf,
        /// Output index directory (built in a temp dir beside it, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing index at --out.
        #[arg(long)]
        overwrite: bool,
        /// Text analyzer: `default` (lowercase words) or `en_stem` (plus English stemming;
        /// used when the flag is absent, chosen by retrieval recall, see docs/retrieval.md).
        #[arg(long, value_parser = ["default", "en_stem"])]
        tokenizer: Option<String>,
    },
    /// Build a graph-RAG index (DESIGN §6) over a JSONL corpus; prints build statistics as JSON.
    Graph(GraphArgs),
}

/// The flags of `index graph`.
#[derive(Args)]
pub struct GraphArgs {
    /// Graph kind: `pg` (passage graph: passages joined by shared linked entities), `kg`
    /// (knowledge graph: entities joined by relations from sentence co-occurrence), `tkg`
    /// (KG with descriptions), `rkg` (TKG with relation keywords), `tree` (RAPTOR tree:
    /// passages clustered level by level under extractive summaries).
    #[arg(long, value_parser = ["pg", "kg", "tkg", "rkg", "tree"])]
    pub kind: String,
    /// Corpus file, JSONL or gzip JSONL (the one the BM25 index was built from).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Output graph file (written to a temp file beside it, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing graph file at --out.
    #[arg(long)]
    pub overwrite: bool,
    /// τ: shared entities needed for an edge (pg only; default: the library's, 1).
    #[arg(long)]
    pub min_shared: Option<usize>,
    /// Skip entities found in more passages than this (not tree; default: the library's,
    /// 200 for every other kind).
    #[arg(long)]
    pub max_df: Option<usize>,
    /// Most nodes per cluster, and the level size at which building stops (tree only;
    /// default: the library's, 10).
    #[arg(long)]
    pub cluster_size: Option<usize>,
    /// The optional LLM (kg kinds, tree).
    #[command(flatten)]
    pub llm: LlmArgs,
    /// The tree's embedder.
    #[command(flatten)]
    pub embed: EmbedArgs,
}

/// The embedder flags of `index graph --kind tree`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Node embedder of the tree (tree only): `minilm` (all-MiniLM-L6-v2 run in burn, 384
    /// dimensions; the default; about an hour for the 48k-passage corpus on 2 CPU cores) or
    /// `tfidf` (hashed TF-IDF, 256 dimensions, seconds). The tree file records it, so the
    /// retriever embeds queries the same way.
    #[arg(long, value_parser = ["minilm", "tfidf"])]
    pub embedder: Option<String>,
    /// The all-MiniLM-L6-v2 model folder (tree with --embedder minilm; default:
    /// models/all-MiniLM-L6-v2, installed by scripts/setup).
    #[arg(long)]
    pub embedder_model: Option<PathBuf>,
}

impl EmbedArgs {
    /// Whether any embedder flag was given.
    pub fn given(&self) -> bool {
        self.embedder.is_some() || self.embedder_model.is_some()
    }
}

/// The LLM flags of `index graph`.
#[derive(Args)]
pub struct LlmArgs {
    /// OpenAI-compatible chat endpoint for extraction (kg, tkg, rkg: triples, descriptions,
    /// keywords) and summaries (tree), e.g. `http://127.0.0.1:8080`, with or without `/v1`.
    /// Needs --llm-model. Replies are cached in `<out>.llm-cache.jsonl`, so a re-run resumes an
    /// interrupted build; an API key is read from env SLEUTH_LLM_API_KEY.
    #[arg(long, requires = "llm_model")]
    pub llm_url: Option<String>,
    /// Model name sent in every LLM request (with --llm-url).
    #[arg(long, requires = "llm_url")]
    pub llm_model: Option<String>,
    /// Most LLM requests in flight (with --llm-url; default: the library's, 4).
    #[arg(long, requires = "llm_url")]
    pub llm_concurrency: Option<usize>,
    /// Retries of an LLM request after a connection error, timeout, 429 or 5xx (with
    /// --llm-url; default: the library's, 3).
    #[arg(long, requires = "llm_url")]
    pub llm_retries: Option<u32>,
    /// Cap on the tokens of each LLM reply, sent as `max_tokens` (with --llm-url; default: the
    /// library's, 1024).
    #[arg(long, requires = "llm_url")]
    pub llm_max_tokens: Option<u32>,
}

impl LlmArgs {
    /// The LLM options the flags ask for; `None` without --llm-url.
    pub fn options(self) -> Result<Option<sleuth::llm::LlmOptions>> {
        let Some(url) = self.llm_url else {
            return Ok(None);
        };
        let Some(model) = self.llm_model else {
            bail!("--llm-url needs --llm-model");
        };
        let defaults = sleuth::llm::LlmOptions::default();
        Ok(Some(sleuth::llm::LlmOptions {
            url,
            model,
            concurrency: self.llm_concurrency.unwrap_or(defaults.concurrency),
            retries: self.llm_retries.unwrap_or(defaults.retries),
            max_tokens: self.llm_max_tokens.unwrap_or(defaults.max_tokens),
            ..defaults
        }))
    }
}

/// `sleuth index build` / `sleuth index graph`: builds the index and prints its statistics as
/// JSON.
pub fn run_index(cmd: IndexCmd) -> Result<()> {
    match cmd {
        IndexCmd::Build {
            corpus,
            out,
            overwrite,
            tokenizer,
        } => {
            let mut opts = IndexOptions {
                overwrite,
                ..Default::default()
            };
            if let Some(t) = tokenizer {
                opts.tokenizer = serde_json::from_value(serde_json::json!(t))?;
            }
            let stats = build_bm25_from_path(&corpus, &out, &opts)?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
        IndexCmd::Graph(a) => run_index_graph(a),
    }
}

/// `index graph`: refuses flags the kind does not take, then builds with the library's
/// defaults for every option not given.
fn run_index_graph(a: GraphArgs) -> Result<()> {
    use sleuth::index::graph::{
        build_kg_from_path, build_pg_from_path, build_tree_from_path, GraphKind, KgOptions,
        PgOptions, TreeOptions,
    };
    let kind = a.kind.as_str();
    // Which kinds take which flags, stated once.
    for (given, flag, kinds) in [
        (a.min_shared.is_some(), "--min-shared", &["pg"][..]),
        (
            a.max_df.is_some(),
            "--max-df",
            &["pg", "kg", "tkg", "rkg"][..],
        ),
        (a.cluster_size.is_some(), "--cluster-size", &["tree"][..]),
        (
            a.embed.given(),
            "--embedder/--embedder-model",
            &["tree"][..],
        ),
        (
            a.llm.llm_url.is_some(),
            "--llm-url",
            &["kg", "tkg", "rkg", "tree"][..],
        ),
    ] {
        if given && !kinds.contains(&kind) {
            bail!("{flag} applies to --kind {} only", kinds.join(", "));
        }
    }
    let stats = match kind {
        "pg" => {
            let d = PgOptions::default();
            let opts = PgOptions {
                overwrite: a.overwrite,
                min_shared: a.min_shared.unwrap_or(d.min_shared),
                max_df: a.max_df.unwrap_or(d.max_df),
                ..d
            };
            serde_json::to_string(&build_pg_from_path(&a.corpus, &a.out, &opts)?)?
        }
        "tree" => {
            let d = TreeOptions::default();
            let embedder = match a.embed.embedder.as_deref() {
                Some(name) => serde_json::from_value(serde_json::json!(name))?,
                None => d.embedder,
            };
            let opts = TreeOptions {
                overwrite: a.overwrite,
                cluster_size: a.cluster_size.unwrap_or(d.cluster_size),
                embedder,
                embedder_model: a
                    .embed
                    .embedder_model
                    .unwrap_or_else(|| d.embedder_model.clone()),
                llm: a.llm.options()?,
                ..d
            };
            serde_json::to_string(&build_tree_from_path(&a.corpus, &a.out, &opts)?)?
        }
        // kg, tkg or rkg (clap allows no other value).
        _ => {
            let graph_kind: GraphKind = serde_json::from_value(serde_json::json!(kind))?;
            let d = KgOptions::default();
            let opts = KgOptions {
                overwrite: a.overwrite,
                max_df: a.max_df.unwrap_or(d.max_df),
                llm: a.llm.options()?,
                ..d
            };
            serde_json::to_string(&build_kg_from_path(&a.corpus, &a.out, graph_kind, &opts)?)?
        }
    };
    println!("{stats}");
    Ok(())
}
