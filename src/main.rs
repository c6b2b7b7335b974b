//! `sleuth`: a thin CLI over the library. Each subcommand parses flags, builds library
//! objects, and prints results (JSON Lines for machine-readable output).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use sleuth::config::RunConfig;
use sleuth::env::{rollout, PromptConfig};
use sleuth::eval::{evaluate, read_qa, rescore};
use sleuth::index::{build_bm25_from_path, IndexOptions};
use sleuth::model::backend::{self, Inference, Train};
use sleuth::model::{
    load_gguf, text_of, BatchGenerator, Llama, LoadedModel, Sampler, SamplingConfig,
};
use sleuth::rl::trainer::Question;
use sleuth::rl::{checkpoint, run, Trainer};
use sleuth::search::{Bm25Retriever, Retriever};

#[derive(Parser)]
#[command(
    name = "sleuth",
    version,
    about = "Train language models to search while they reason."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build search indexes.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Search an index (or the backend a config names) and print the top passages with their
    /// scores.
    Search(SearchArgs),
    /// Generate text from the policy model (no search).
    Generate(GenerateArgs),
    /// Run the search agent on one question and print the trajectory readably.
    Rollout(RolloutArgs),
    /// Train the policy with GRPO / Reinforce++ (writes metrics.jsonl and checkpoints).
    Train(TrainArgs),
    /// Evaluate the agent on a QA set, or rescore an existing predictions file.
    Eval(EvalArgs),
    /// Measure decode throughput (tokens/s) of the policy at batch 1 and batch G.
    Bench(BenchArgs),
    /// Serve a BM25 index over HTTP with R1-Searcher's (POST /queries) and Search-R1's
    /// (POST /retrieve) APIs.
    RetrievalServer(RetrievalServerArgs),
    /// Serve the agent as an OpenAI-compatible chat endpoint (POST /v1/chat/completions).
    Serve(sleuth::serve::ServeArgs),
    /// Chat with a running `sleuth serve` in the terminal, seeing each search as it happens.
    Chat(sleuth::serve::ChatArgs),
    /// Collect format-valid trajectories (demonstration prompt) for a supervised cold start.
    Collect(CollectArgs),
    /// Supervised fine-tuning on collected trajectories (loss on policy tokens only).
    Sft(SftArgs),
    /// Render training curves (reward ± std, format-valid rate, searches, response length,
    /// KL, entropy) of one or more runs' metrics.jsonl to a PNG.
    Plot(PlotArgs),
}

#[derive(Args)]
struct CollectArgs {
    /// Env config: model, search, prompt (with demonstrations), rollout, reward, [data].train.
    #[arg(long)]
    config: PathBuf,
    /// Output JSONL of kept trajectories (tokens, mask, prompt_len), prompts without demonstrations.
    #[arg(long)]
    out: PathBuf,
    /// Samples per question (default: the config's samples_per_question).
    #[arg(long)]
    samples_per_question: Option<usize>,
    /// Use only the first N training questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep only cover-EM correct answers (default: on with --checkpoint and for stage2
    /// configs, off otherwise).
    #[arg(long)]
    require_correct: Option<bool>,
    /// Keep only trajectories that searched at least N times (a cold start meant to teach
    /// searching must not keep episodes that never searched). Ignored with --scripted.
    #[arg(long, default_value_t = 1)]
    min_searches: usize,
    /// Sample from the weights saved in this SFT/RL run directory instead of the config's
    /// model (DeepSeek-R1's second SFT round: sample the cold-started policy, keep its correct
    /// well-formed trajectories, fine-tune again). Turns --require-correct on by default.
    #[arg(long, value_name = "RUN")]
    checkpoint: Option<PathBuf>,
    /// Questions per batched rollout.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// RNG seed (sampling; with --scripted, the choice of reasoning phrases).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write scripted episodes instead of sampling (no model run): per question, the question
    /// as the first query, then, when the question's gold support titles are not all among
    /// the hits, one search per missing title (the bridge entity, or each compared entity; at
    /// most the config's max_searches), the retriever's real documents after each query, and a
    /// gold answer those documents cover (questions whose documents cover none are skipped).
    /// The reasoning between searches varies per question. For policies too weak for
    /// rejection sampling to keep anything.
    #[arg(long)]
    scripted: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// Run directories (or metrics.jsonl files); several runs are overlaid, one colour each.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output PNG (default: <run>/curves.png for a single run; required for several).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Moving-average window in steps for the thick curves (1 = raw only).
    #[arg(long, default_value_t = 5)]
    smooth: usize,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1500)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800)]
    height: u32,
}

#[derive(Args)]
struct SftArgs {
    /// Env config naming the model ([model].path) and optimizer settings ([train]:
    /// learning_rate, micro_batch, grad_clip, warmup_steps, seed; questions_per_step = sequences per step).
    #[arg(long)]
    config: PathBuf,
    /// Trajectories JSONL written by `sleuth collect`.
    #[arg(long)]
    data: PathBuf,
    /// Run directory: metrics.jsonl and checkpoint/ go here.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps to reach.
    #[arg(long)]
    steps: usize,
    /// Learning rate (overrides the config's).
    #[arg(long)]
    lr: Option<f64>,
    /// Stop once the policy entropy (nats per policy token) falls below this, so the cold
    /// start leaves sampling variance for RL (overrides `[train] sft_stop_entropy`; 0 = never).
    #[arg(long)]
    stop_entropy: Option<f64>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print each metrics line to stdout even on a terminal.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum IndexCmd {
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
struct GraphArgs {
    /// Graph kind: `pg` (passage graph: passages joined by shared linked entities), `kg`
    /// (knowledge graph: entities joined by relations from sentence co-occurrence), `tkg`
    /// (KG with descriptions), `rkg` (TKG with relation keywords), `tree` (RAPTOR tree:
    /// passages clustered level by level under extractive summaries).
    #[arg(long, value_parser = ["pg", "kg", "tkg", "rkg", "tree"])]
    kind: String,
    /// Corpus file, JSONL or gzip JSONL (the one the BM25 index was built from).
    #[arg(long)]
    corpus: PathBuf,
    /// Output graph file (written to a temp file beside it, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing graph file at --out.
    #[arg(long)]
    overwrite: bool,
    /// τ: shared entities needed for an edge (pg only; default: the library's, 1).
    #[arg(long)]
    min_shared: Option<usize>,
    /// Skip entities found in more passages than this (not tree; default: the library's,
    /// 200 for every other kind).
    #[arg(long)]
    max_df: Option<usize>,
    /// Most nodes per cluster, and the level size at which building stops (tree only;
    /// default: the library's, 10).
    #[arg(long)]
    cluster_size: Option<usize>,
    #[command(flatten)]
    llm: LlmArgs,
    #[command(flatten)]
    embed: EmbedArgs,
}

/// The embedder flags of `index graph --kind tree`.
#[derive(Args)]
struct EmbedArgs {
    /// Node embedder of the tree (tree only): `minilm` (all-MiniLM-L6-v2 run in burn, 384
    /// dimensions; the default; about an hour for the 48k-passage corpus on 2 CPU cores) or
    /// `tfidf` (hashed TF-IDF, 256 dimensions, seconds). The tree file records it, so the
    /// retriever embeds queries the same way.
    #[arg(long, value_parser = ["minilm", "tfidf"])]
    embedder: Option<String>,
    /// The all-MiniLM-L6-v2 model folder (tree with --embedder minilm; default:
    /// models/all-MiniLM-L6-v2, installed by scripts/setup).
    #[arg(long)]
    embedder_model: Option<PathBuf>,
}

impl EmbedArgs {
    fn given(&self) -> bool {
        self.embedder.is_some() || self.embedder_model.is_some()
    }
}

/// The LLM flags of `index graph`.
#[derive(Args)]
struct LlmArgs {
    /// OpenAI-compatible chat endpoint for extraction (kg, tkg, rkg: triples, descriptions,
    /// keywords) and summaries (tree), e.g. `http://127.0.0.1:8080`, with or without `/v1`.
    /// Needs --llm-model. Replies are cached in `<out>.llm-cache.jsonl`, so a re-run resumes an
    /// interrupted build; an API key is read from env SLEUTH_LLM_API_KEY.
    #[arg(long, requires = "llm_model")]
    llm_url: Option<String>,
    /// Model name sent in every LLM request (with --llm-url).
    #[arg(long, requires = "llm_url")]
    llm_model: Option<String>,
    /// Most LLM requests in flight (with --llm-url; default: the library's, 4).
    #[arg(long, requires = "llm_url")]
    llm_concurrency: Option<usize>,
    /// Retries of an LLM request after a connection error, timeout, 429 or 5xx (with
    /// --llm-url; default: the library's, 3).
    #[arg(long, requires = "llm_url")]
    llm_retries: Option<u32>,
    /// Cap on the tokens of each LLM reply, sent as `max_tokens` (with --llm-url; default: the
    /// library's, 1024).
    #[arg(long, requires = "llm_url")]
    llm_max_tokens: Option<u32>,
}

impl LlmArgs {
    /// The LLM options the flags ask for; `None` without --llm-url.
    fn options(self) -> Result<Option<sleuth::llm::LlmOptions>> {
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

#[derive(Args)]
struct SearchArgs {
    /// Index directory (overrides the config's [search].index).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Env config whose [search] section names the index.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of passages to print.
    #[arg(short = 'k', long, default_value_t = 5)]
    k: usize,
    /// The query (any text; operator characters are treated as text).
    query: String,
}

#[derive(Args)]
struct ModelArgs {
    /// GGUF model file (overrides the config's [model].path).
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text. Special tokens such as <|im_start|> are parsed.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template (SmolLM2 / ChatML).
    #[arg(long)]
    chat: bool,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct RolloutArgs {
    /// Env config (model, search, prompt, rollout settings).
    #[arg(long)]
    config: PathBuf,
    /// The question to answer.
    #[arg(long)]
    question: String,
    /// Samples to draw (default: the config's samples_per_question).
    #[arg(long)]
    samples: Option<usize>,
    /// Sampling temperature (default: the config's).
    #[arg(long)]
    temperature: Option<f32>,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Load policy weights from this run's checkpoint.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print each trajectory as one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Env config (envs/stage1.toml, envs/stage2.toml).
    #[arg(long)]
    config: PathBuf,
    /// Optimizer steps to reach (a resumed run continues up to this step count). Required
    /// for a single-phase config; a curriculum config (`[[phase]]`s) runs each phase's steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Run directory: metrics.jsonl and checkpoint/ go here (a curriculum: one folder per
    /// phase, curriculum.json, and one metrics.jsonl for all phases).
    #[arg(long)]
    out: PathBuf,
    /// Continue from the run directory's last checkpoint (a curriculum: skip completed
    /// phases and resume the interrupted one); starts fresh when there is none.
    #[arg(long)]
    resume: bool,
    /// Use at most this many training questions (the first N of the file).
    #[arg(long)]
    limit: Option<usize>,
    /// Curriculum only: cap every sft/rl phase at this many steps (a short smoke run).
    #[arg(long)]
    phase_steps: Option<usize>,
    /// Curriculum only: cap every eval and collect phase at this many questions per set.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Print each metrics line to stdout even on a terminal (always printed when stdout is
    /// not a terminal; always appended to metrics.jsonl).
    #[arg(long)]
    json: bool,
    /// Start from the weights of this run's checkpoint (e.g. an `sleuth sft` run) instead of
    /// the config's model file; optimizer and progress start fresh.
    #[arg(long)]
    init: Option<PathBuf>,
}

#[derive(Args)]
struct RetrievalServerArgs {
    /// Index directory built by `sleuth index build`.
    #[arg(long, default_value = "index/wiki")]
    index: PathBuf,
    /// Serve the search backend this env config names (BM25, a graph kind, online) instead of
    /// --index.
    #[arg(long, conflicts_with = "title_boost")]
    config: Option<PathBuf>,
    /// Address to bind (use 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Multiplier on title matches (BM25 option).
    #[arg(long)]
    title_boost: Option<f32>,
}

#[derive(Args)]
struct EvalArgs {
    /// Measure retrieval alone: support-title recall@1/5/10 and answer hit@1/5/10 of the
    /// questions used as queries (no model needed); the BM25 index of --index, or the backend
    /// --config names.
    #[arg(long, conflicts_with_all = ["rescore", "checkpoint"])]
    retrieval: bool,
    /// With --retrieval: the BM25 index to search (ignored with --config).
    #[arg(long, requires = "retrieval", default_value = "index/wiki")]
    index: PathBuf,
    /// With --retrieval: gold support titles JSONL (default: <data stem>.support.jsonl when it exists).
    #[arg(long, requires = "retrieval")]
    support: Option<PathBuf>,
    /// With --retrieval: title boost(s) to evaluate, comma-separated (default: the BM25 default).
    #[arg(long, requires = "retrieval", value_delimiter = ',')]
    title_boost: Vec<f32>,
    /// With --retrieval: also evaluate with English stop words dropped from the queries.
    #[arg(long, requires = "retrieval")]
    stop_words: bool,
    /// Rescore an existing predictions JSONL (fields pred_ans, answer) and print {n, em, cover_em, f1}.
    #[arg(long, conflicts_with_all = ["config", "data", "out"])]
    rescore: Option<PathBuf>,
    /// Env config (model, search, prompt, rollout settings). With --retrieval: measure the
    /// search backend it names (BM25, a graph kind, online) instead of --index.
    #[arg(long)]
    config: Option<PathBuf>,
    /// QA JSONL to evaluate (default: the config's [data].eval).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Write the report here (JSON); trajectories go beside it as <stem>.trajectories.jsonl.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Evaluate the policy saved in this run directory's checkpoint.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Questions per batched rollout.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Sampling temperature (default 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch size for the batched measurement.
    #[arg(long, default_value_t = 4)]
    g: usize,
    /// Tokens to decode per measurement.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Prompt length in tokens for the prefill measurement.
    #[arg(long, default_value_t = 256)]
    prefill_tokens: usize,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Index(IndexCmd::Build {
            corpus,
            out,
            overwrite,
            tokenizer,
        }) => {
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
        Command::Index(IndexCmd::Graph(a)) => cmd_index_graph(a),
        Command::Search(a) => cmd_search(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Rollout(a) => cmd_rollout(a),
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Bench(a) => cmd_bench(a),
        Command::RetrievalServer(a) => cmd_retrieval_server(a),
        Command::Serve(a) => Ok(sleuth::serve::run_serve(a)?),
        Command::Chat(a) => Ok(sleuth::serve::run_chat(a)?),
        Command::Collect(a) => cmd_collect(a),
        Command::Sft(a) => cmd_sft(a),
        Command::Plot(a) => cmd_plot(a),
    }
}

/// `index graph`: refuses flags the kind does not take, then builds with the library's
/// defaults for every option not given.
fn cmd_index_graph(a: GraphArgs) -> Result<()> {
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

fn cmd_plot(a: PlotArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| sleuth::plot::RunMetrics::read(r))
        .collect::<Result<Vec<_>, _>>()?;
    let out = match (&a.out, a.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) if one.is_dir() => one.join("curves.png"),
        _ => bail!("give --out FILE.png when plotting several runs or a metrics file"),
    };
    sleuth::plot::render(&runs, &out, a.smooth, (a.width, a.height))?;
    println!("{}", out.display());
    Ok(())
}

fn open_retriever(index: &Path) -> Result<Bm25Retriever> {
    Bm25Retriever::open(index).with_context(|| {
        format!(
            "opening index {} (build it with `sleuth index build` or scripts/setup)",
            index.display()
        )
    })
}

/// The retriever a config's `[search]` section names (`bm25` or `online`).
fn open_search(cfg: &RunConfig) -> Result<Box<dyn Retriever>> {
    if cfg.search.backend == "bm25" {
        return Ok(Box::new(open_retriever(&cfg.search.index)?));
    }
    Ok(cfg.search.open()?)
}

fn load_config(path: &Path) -> Result<RunConfig> {
    let cfg = RunConfig::load(path)?;
    if !sleuth::config::SEARCH_BACKENDS.contains(&cfg.search.backend.as_str()) {
        bail!(
            "{}: unknown [search] backend {:?} (supported: {})",
            path.display(),
            cfg.search.backend,
            sleuth::config::SEARCH_BACKENDS.join(", ")
        );
    }
    Ok(cfg)
}

fn load_model<B: burn::tensor::backend::Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    load_gguf::<B>(path, device).with_context(|| {
        format!(
            "loading model {} (run scripts/setup to install the default model)",
            path.display()
        )
    })
}

/// Loads only the tokenizer stored in a GGUF model file.
fn load_tokenizer(path: &Path) -> Result<sleuth::model::Tokenizer> {
    let gguf = sleuth::model::gguf::GgufFile::open(path)
        .with_context(|| format!("opening model {}", path.display()))?;
    sleuth::model::Tokenizer::from_gguf(&gguf)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))
}

/// Loads the model named by the config, replacing its weights by a checkpoint's when given.
fn load_policy<B: burn::tensor::backend::Backend>(
    cfg: &RunConfig,
    checkpoint_dir: Option<&Path>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let mut loaded = load_model::<B>(&cfg.model.path, device)?;
    if let Some(run) = checkpoint_dir {
        let arch = checkpoint::load_config(run)?;
        let fresh = Llama::<B>::random(&arch, device);
        loaded.model = checkpoint::load_model(run, fresh, device)?;
        loaded.config = arch;
    }
    Ok(loaded)
}

fn cmd_search(a: SearchArgs) -> Result<()> {
    let r: Box<dyn Retriever> = match (&a.index, &a.config) {
        (Some(i), _) => Box::new(open_retriever(i)?),
        // The config's backend: BM25, a graph-RAG index, or online search.
        (None, Some(c)) => open_search(&load_config(c)?)?,
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

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let device = backend::device();
    let path = a
        .model
        .model
        .unwrap_or_else(|| RunConfig::default().model.path);
    let m = load_model::<Inference>(&path, &device)?;
    let text = if a.chat {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            a.prompt
        )
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.encode(&text, true)?;
    let eos: Vec<u32> = m.tokenizer.eos_id().into_iter().collect();
    let t0 = Instant::now();
    let mut gen = BatchGenerator::new(
        &m.model,
        &m.tokenizer,
        std::slice::from_ref(&ids),
        ids.len() + a.max_new_tokens + 8,
        a.stop.clone(),
        eos,
    )?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: 0,
        seed: a.seed,
    });
    let t1 = Instant::now();
    gen.generate(&mut sampler, &[a.max_new_tokens]);
    let decode_s = t1.elapsed().as_secs_f64();
    let row = &gen.rows()[0];
    let out = text_of(&m.tokenizer, &row.tokens[row.prompt_len..]);
    println!("{out}");
    eprintln!(
        "[{} prompt tokens in {:.2}s; {} new tokens in {:.2}s = {:.1} tok/s; stop: {:?}; backend {}]",
        ids.len(),
        prefill_s,
        row.generated,
        decode_s,
        row.generated as f64 / decode_s.max(1e-9),
        row.stop,
        backend::name()
    );
    Ok(())
}

fn cmd_rollout(a: RolloutArgs) -> Result<()> {
    let mut cfg = load_config(&a.config)?;
    if let Some(s) = a.samples {
        cfg.rollout.samples_per_question = s;
    }
    if let Some(t) = a.temperature {
        cfg.rollout.temperature = t;
    }
    let device = backend::device();
    let m = load_policy::<Inference>(&cfg, a.checkpoint.as_deref(), &device)?;
    let retriever = open_search(&cfg)?;
    let mut sampler = Sampler::new(cfg.rollout.sampling(a.seed));
    let (episodes, stats) = rollout(
        &m.model,
        &m.tokenizer,
        &retriever,
        &cfg.prompt,
        &cfg.rollout,
        std::slice::from_ref(&a.question),
        &mut sampler,
    )?;
    let reward = cfg.reward.kind.build();
    for (i, ep) in episodes.iter().enumerate() {
        let r = reward.score(&ep.solution, &[]);
        if a.json {
            println!(
                "{}",
                serde_json::json!({"sample": i, "episode": ep, "format_ok": r.format_ok, "prediction": r.prediction})
            );
            continue;
        }
        println!(
            "=== sample {i}: {:?}, {} searches, {} policy tokens / {} total, format_ok={} ===",
            ep.end,
            ep.searches.len(),
            ep.policy_tokens(),
            ep.tokens.len(),
            r.format_ok
        );
        println!("Assistant: <think>{}", ep.solution);
        for s in &ep.searches {
            println!(
                "  [search] {:?} -> {} passages{}",
                s.query,
                s.documents.len(),
                s.error
                    .as_ref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
        }
        println!("  [prediction] {:?}", r.prediction);
    }
    eprintln!(
        "[rollout {:.1}s: generate {:.1}s, search {:.2}s; {} tokens sampled, {:.1} tok/s]",
        stats.seconds_total,
        stats.seconds_generate,
        stats.seconds_search,
        stats.sampled_tokens,
        stats.sampled_tokens as f64 / stats.seconds_generate.max(1e-9)
    );
    Ok(())
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let cfg = load_config(&a.config)?;
    let device = backend::device();
    if !cfg.phase.is_empty() {
        return cmd_curriculum(a, cfg, device);
    }
    let Some(steps) = a.steps else {
        bail!(
            "--steps is required: {} has no [[phase]]s (a curriculum config runs each phase's own steps)",
            a.config.display()
        );
    };
    let m = load_policy::<Train>(&cfg, a.init.as_deref(), &device)?;
    let retriever = open_search(&cfg)?;
    let mut data = cfg.data.read_train()?;
    if let Some(n) = a.limit {
        data.truncate(n);
    }
    let questions = data.into_iter().map(Question::from).collect();
    let mut trainer = Trainer::new(
        m.model,
        m.config,
        m.tokenizer,
        Box::new(retriever),
        cfg.reward.kind.build(),
        cfg.prompt.clone(),
        cfg.rollout.clone(),
        cfg.train.clone(),
        questions,
        device,
    )?;
    trainer.step_reward = cfg.reward.step.clone();
    let restored = run::prepare_dir(&a.out, a.resume, |dir| {
        trainer.resume_from(dir)?;
        Ok(trainer.state.step)
    })?;
    if restored {
        eprintln!("resumed {} at step {}", a.out.display(), trainer.state.step);
    } else if a.resume {
        eprintln!("no checkpoint in {}; starting fresh", a.out.display());
    }
    std::fs::write(a.out.join("config.toml"), toml::to_string(&cfg)?)?;
    eprintln!(
        "training {} ({} backend): {} questions × G={} per step, ≤{} new tokens, algo {}",
        cfg.model.path.display(),
        backend::name(),
        cfg.train.questions_per_step,
        cfg.rollout.samples_per_question,
        cfg.rollout.max_new_tokens,
        cfg.train.algo.as_str()
    );
    let opts = run::LoopOptions {
        steps,
        checkpoint_every: cfg.train.checkpoint_every,
        echo_json: a.json,
        ..Default::default()
    };
    run::run_steps(&mut trainer, &a.out, &a.out.join("metrics.jsonl"), &opts)?;
    Ok(())
}

/// `sleuth train` on a config with `[[phase]]`s: the whole curriculum as one run.
fn cmd_curriculum(
    a: TrainArgs,
    cfg: RunConfig,
    device: burn::tensor::Device<Inference>,
) -> Result<()> {
    if a.init.is_some() || a.limit.is_some() || a.steps.is_some() {
        bail!(
            "{} is a curriculum ([[phase]]s): --steps, --limit and --init do not apply; use --phase-steps / --eval-limit to shorten it",
            a.config.display()
        );
    }
    let m = load_policy::<Train>(&cfg, None, &device)?;
    let retriever: std::sync::Arc<dyn Retriever> = std::sync::Arc::from(open_search(&cfg)?);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::write(a.out.join("config.toml"), toml::to_string(&cfg)?)?;
    let names: Vec<&str> = cfg.phase.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "curriculum {} ({} backend): phases {}",
        a.config.display(),
        backend::name(),
        names.join(" → ")
    );
    let t0 = std::time::Instant::now();
    let opts = sleuth::curriculum::CurriculumOptions {
        resume: a.resume,
        phase_steps: a.phase_steps,
        limit: a.eval_limit,
        echo_json: a.json,
        max_total_steps: None,
    };
    let evals = sleuth::curriculum::run_curriculum(
        &cfg,
        (m.model, m.config, m.tokenizer),
        retriever,
        &a.out,
        &opts,
        &device,
    )?;
    for line in sleuth::curriculum::before_after(&evals) {
        println!("{line}");
    }
    eprintln!(
        "curriculum finished in {:.0} s; metrics in {}",
        t0.elapsed().as_secs_f64(),
        a.out.join("metrics.jsonl").display()
    );
    Ok(())
}

fn cmd_retrieval_server(a: RetrievalServerArgs) -> Result<()> {
    let mut opts = sleuth::search::Bm25Options::default();
    if let Some(b) = a.title_boost {
        opts.title_boost = b;
    }
    let retriever: std::sync::Arc<dyn Retriever> = match &a.config {
        Some(c) => open_search(&load_config(c)?)?.into(),
        None => std::sync::Arc::new(
            Bm25Retriever::open_with(&a.index, opts)
                .with_context(|| format!("opening index {}", a.index.display()))?,
        ),
    };
    let addr = std::net::SocketAddr::new(a.host, a.port);
    let cfg = sleuth::search::ServerConfig::default();
    Ok(sleuth::search::server::run(
        retriever,
        addr,
        cfg,
        |bound| eprintln!("retrieval server listening on http://{bound}"),
    )?)
}

fn cmd_eval_retrieval(a: EvalArgs) -> Result<()> {
    use sleuth::eval::retrieval::{read_support, sweep, QueryRewrite};
    let data = a
        .data
        .unwrap_or_else(|| RunConfig::default().data.eval.clone());
    let mut examples = read_qa(&data)?;
    if let Some(n) = a.limit {
        examples.truncate(n);
    }
    let support_path = a.support.or_else(|| {
        let p = data.with_extension("support.jsonl");
        p.is_file().then_some(p)
    });
    let support = match &support_path {
        Some(p) => read_support(p)?,
        None => Default::default(),
    };
    let boost_given = !a.title_boost.is_empty();
    let boosts = if a.title_boost.is_empty() {
        vec![sleuth::search::DEFAULT_TITLE_BOOST]
    } else {
        a.title_boost
    };
    let mut rewrites = vec![QueryRewrite::None];
    if a.stop_words {
        rewrites.push(QueryRewrite::DropStopWords);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(config) = &a.config {
        // The backend a config names (graph kinds included), measured as configured.
        if boost_given {
            bail!(
                "--title-boost sweeps the BM25 index of --index; it does not apply with --config"
            );
        }
        let cfg = load_config(config)?;
        let retriever = open_search(&cfg)?;
        for rewrite in rewrites {
            let report = sleuth::eval::retrieval::evaluate_retrieval(
                retriever.as_ref(),
                &examples,
                &support,
                rewrite,
                threads,
            )?;
            println!(
                "{{\"data\":{},\"config\":{},\"backend\":{},\"support\":{},\"rewrite\":{},\"report\":{}}}",
                serde_json::to_string(&data)?,
                serde_json::to_string(config)?,
                serde_json::to_string(&cfg.search.backend)?,
                serde_json::to_string(&support_path)?,
                serde_json::to_string(&rewrite)?,
                serde_json::to_string(&report)?
            );
        }
        return Ok(());
    }
    for row in sweep(&a.index, &examples, &support, &boosts, &rewrites, threads)? {
        // Written field by field so the metrics keep their order (1, 5, 10).
        println!(
            "{{\"data\":{},\"index\":{},\"support\":{},\"row\":{}}}",
            serde_json::to_string(&data)?,
            serde_json::to_string(&a.index)?,
            serde_json::to_string(&support_path)?,
            serde_json::to_string(&row)?
        );
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if a.retrieval {
        return cmd_eval_retrieval(a);
    }
    if let Some(path) = a.rescore {
        let report = rescore(&path)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let Some(cfg_path) = a.config else {
        bail!("give --rescore FILE, or --config FILE to run the agent");
    };
    let mut cfg = load_config(&cfg_path)?;
    cfg.rollout.temperature = a.temperature;
    let data_path = a.data.unwrap_or_else(|| cfg.data.eval.clone());
    let mut examples = read_qa(&data_path)?;
    if let Some(n) = a.limit {
        examples.truncate(n);
    }
    let device = backend::device();
    let m = load_policy::<Inference>(&cfg, a.checkpoint.as_deref(), &device)?;
    let retriever = open_search(&cfg)?;
    let mut traj_file = match &a.out {
        Some(out) => {
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let p = out.with_file_name(format!(
                "{}.trajectories.jsonl",
                out.file_stem().and_then(|s| s.to_str()).unwrap_or("eval")
            ));
            Some((
                std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?,
                p,
            ))
        }
        None => None,
    };
    let bar = indicatif::ProgressBar::new(examples.len() as u64);
    let mut write_err = None;
    let (report, _) = evaluate(
        &m.model,
        &m.tokenizer,
        &retriever,
        &cfg.prompt,
        &cfg.rollout,
        0,
        &examples,
        a.batch,
        |rec| {
            bar.inc(1);
            if let Some((f, _)) = traj_file.as_mut() {
                if let Err(e) = serde_json::to_writer(&mut *f, rec)
                    .map_err(std::io::Error::from)
                    .and_then(|_| writeln!(f))
                {
                    write_err.get_or_insert(e);
                }
            }
        },
    )?;
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).context("writing trajectories");
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &a.out {
        let tmp = out.with_extension("json.tmp");
        std::fs::write(&tmp, &json)?;
        std::fs::rename(&tmp, out)?;
        eprintln!(
            "wrote {} and {}",
            out.display(),
            traj_file
                .map(|(_, p)| p.display().to_string())
                .unwrap_or_default()
        );
    }
    println!("{json}");
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let device = backend::device();
    let path = a
        .model
        .model
        .unwrap_or_else(|| RunConfig::default().model.path);
    let m = load_model::<Inference>(&path, &device)?;
    let prompt = PromptConfig::default();
    let base = m.tokenizer.encode(
        &prompt.render("Which stadium hosts the Kansas City Chiefs?")?,
        false,
    )?;
    let mut long = Vec::new();
    while long.len() < a.prefill_tokens {
        long.extend_from_slice(&base);
    }
    long.truncate(a.prefill_tokens);
    let short: Vec<u32> = base[..base.len().min(32)].to_vec();
    let cap = a.prefill_tokens.max(short.len()) + a.new_tokens + 8;
    // Prefill.
    let t0 = Instant::now();
    let _ = BatchGenerator::new(&m.model, &m.tokenizer, &[long.clone()], cap, vec![], vec![])?;
    let prefill_tok_s = long.len() as f64 / t0.elapsed().as_secs_f64();
    let decode = |g: usize| -> Result<f64> {
        let prompts: Vec<Vec<u32>> = (0..g).map(|_| short.clone()).collect();
        let mut gen = BatchGenerator::new(&m.model, &m.tokenizer, &prompts, cap, vec![], vec![])?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature: 1.0,
            seed: 1,
            ..Default::default()
        });
        let t = Instant::now();
        gen.generate(&mut sampler, &vec![a.new_tokens; g]);
        let n: usize = gen.rows().iter().map(|r| r.generated).sum();
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let b1 = decode(1)?;
    let bg = decode(a.g)?;
    println!(
        "{}",
        serde_json::json!({
            "system": "sleuth", "backend": backend::name(), "decode_tok_s_b1": (b1 * 10.0).round() / 10.0,
            "decode_tok_s_bG": (bg * 10.0).round() / 10.0, "G": a.g, "prefill_tok_s": (prefill_tok_s * 10.0).round() / 10.0,
            "new_tokens": a.new_tokens, "prefill_tokens": long.len()
        })
    );
    Ok(())
}

fn cmd_collect(a: CollectArgs) -> Result<()> {
    let mut cfg = load_config(&a.config)?;
    if let Some(g) = a.samples_per_question {
        cfg.rollout.samples_per_question = g;
    }
    if a.scripted && a.checkpoint.is_some() {
        bail!("--scripted runs no model; drop --checkpoint");
    }
    let require_correct = a
        .require_correct
        .unwrap_or(a.checkpoint.is_some() || cfg.reward.kind == sleuth::reward::RewardKind::Stage2);
    let retriever = open_search(&cfg)?;
    let mut data = cfg.data.read_train()?;
    if let Some(n) = a.limit {
        data.truncate(n);
    }
    let questions: Vec<Question> = data.into_iter().map(Question::from).collect();
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = a.out.with_extension("jsonl.part");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let bar = indicatif::ProgressBar::new(questions.len() as u64);
    let mut write_err = None;
    let mut done = 0;
    let keep = |ex: &sleuth::rl::sft::SftExample| {
        if let Err(e) = sleuth::rl::sft::write_example(&mut file, ex) {
            write_err.get_or_insert(e);
        }
        done += 1;
        bar.set_message(format!("kept {done}"));
    };
    let stats = if a.scripted {
        let tokenizer = load_tokenizer(&cfg.model.path)?;
        sleuth::rl::collect::scripted(
            &tokenizer,
            &retriever,
            &cfg.prompt,
            &cfg.rollout,
            &Default::default(),
            &questions,
            a.seed,
            keep,
        )?
    } else {
        let m = load_policy::<Inference>(&cfg, a.checkpoint.as_deref(), &backend::device())?;
        sleuth::rl::collect::collect(
            &m.model,
            &m.tokenizer,
            &retriever,
            &cfg.prompt,
            &cfg.rollout,
            &questions,
            a.batch,
            require_correct,
            a.min_searches,
            a.seed,
            keep,
        )?
    };
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, &a.out)?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

fn cmd_sft(a: SftArgs) -> Result<()> {
    let cfg = load_config(&a.config)?;
    let device = backend::device();
    let m = load_model::<Train>(&cfg.model.path, &device)?;
    let data = sleuth::rl::sft::read_examples(&a.data)?;
    let mut train_cfg = cfg.train.clone();
    if let Some(lr) = a.lr {
        train_cfg.learning_rate = lr;
    }
    if let Some(e) = a.stop_entropy {
        train_cfg.sft_stop_entropy = e;
    }
    let mut sft = sleuth::rl::sft::SftTrainer::new(m.model, m.config, train_cfg, data, device)?;
    if run::prepare_dir(&a.out, a.resume, |dir| {
        sft.resume_from(dir)?;
        Ok(sft.state.step)
    })? {
        eprintln!("resumed {} at step {}", a.out.display(), sft.state.step);
    }
    let opts = run::LoopOptions {
        steps: a.steps,
        checkpoint_every: cfg.train.checkpoint_every,
        echo_json: a.json,
        ..Default::default()
    };
    let out = run::run_steps(&mut sft, &a.out, &a.out.join("metrics.jsonl"), &opts)?;
    if out.stopped_early {
        eprintln!(
            "stopped at step {}: policy entropy fell below sft_stop_entropy {}",
            out.steps_done, sft.cfg.sft_stop_entropy
        );
    }
    Ok(())
}
