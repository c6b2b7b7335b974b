//! `sleuth data fetch` (download the public files a manifest lists, [`sleuth::data`]) and
//! `sleuth corpus prepare` (turn a downloaded dump into a passage corpus,
//! [`sleuth::corpus::prepare`]): flags, and one JSON line per result on stdout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use sleuth::corpus::prepare::{prepare, InputFormat, PrepareOptions};
use sleuth::data::{FetchOptions, Fetcher, Manifest};

/// The `sleuth data` subcommands.
#[derive(Subcommand)]
pub enum DataCmd {
    /// Download the public files of a manifest (default: the built-in corpus/manifest.toml)
    /// into a folder: resumable (HTTP Range on DEST.part), SHA-256-checked, renamed into place
    /// when complete; files already there and matching are skipped. Prints one JSON line per
    /// file.
    Fetch(FetchArgs),
}

/// The flags of `data fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// Manifest TOML of [[file]] entries (name, url, dest, license, description, optional
    /// sha256, size, fetch); default: the built-in corpus/manifest.toml.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Fetch only these entries (comma-separated names). Without it, every entry whose
    /// `fetch` is "default"; "on-request" entries (e.g. the DPR Wikipedia dump) only when
    /// named here; "manual" entries never.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Destination folder: each file lands at DIR/<dest> (e.g. DIR/qa/hotpotqa_500.jsonl).
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
    /// Print the manifest's entries (JSON lines) and download nothing.
    #[arg(long)]
    pub list: bool,
}

/// The `sleuth corpus` subcommands.
#[derive(Subcommand)]
pub enum CorpusCmd {
    /// Turn a downloaded dump into the {"id","title","text"} JSONL that `sleuth index build`
    /// reads (streamed; written to a temp file, then renamed). Prints a JSON summary line.
    Prepare(PrepareArgs),
}

/// The flags of `corpus prepare`.
#[derive(Args)]
pub struct PrepareArgs {
    /// The dump, plain or gzip (detected by content).
    #[arg(long)]
    pub input: PathBuf,
    /// Its format: `dpr-tsv` (DPR's psgs_w100.tsv: id, text, title), `hotpotqa-json`
    /// (HotpotQA / 2WikiMultihopQA question file: one passage per context paragraph,
    /// deduplicated by title) or `jsonl` (a passage corpus, validated and deduplicated by id).
    #[arg(long, value_parser = InputFormat::NAMES)]
    pub format: String,
    /// Output corpus, OUT.jsonl or OUT.jsonl.gz (gzip when the name ends in .gz).
    #[arg(long)]
    pub out: PathBuf,
    /// Id prefix of hotpotqa-json passages, numbered from 000000 (default: the library's,
    /// `hotpot-ctx-`).
    #[arg(long)]
    pub id_prefix: Option<String>,
}

/// `sleuth data …`.
pub fn run_data(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Fetch(a) => run_fetch(a),
    }
}

/// `sleuth data fetch`: downloads the selected entries one after another, printing a JSON
/// line for each; stops at the first error (a rerun resumes an interrupted file).
pub fn run_fetch(a: FetchArgs) -> Result<()> {
    let manifest = match &a.manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::builtin(),
    };
    if a.list {
        for entry in &manifest.files {
            println!("{}", serde_json::to_string(entry)?);
        }
        return Ok(());
    }
    let out = a.out.context("--out DIR is required")?;
    let entries = manifest.select(&a.only)?;
    let fetcher = Fetcher::new(&FetchOptions::default())?;
    for entry in entries {
        let report = fetcher
            .fetch(entry, &out)
            .with_context(|| format!("fetching `{}`", entry.name))?;
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// `sleuth corpus …`.
pub fn run_corpus(cmd: CorpusCmd) -> Result<()> {
    match cmd {
        CorpusCmd::Prepare(a) => run_prepare(a),
    }
}

/// `sleuth corpus prepare`: converts the dump and prints the summary as one JSON line.
pub fn run_prepare(a: PrepareArgs) -> Result<()> {
    let format: InputFormat = a.format.parse()?;
    let mut opts = PrepareOptions::default();
    if let Some(prefix) = a.id_prefix {
        opts.id_prefix = prefix;
    }
    let summary = prepare(&a.input, format, &a.out, &opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
