//! `sleuth`: a thin CLI over the library crates. It parses the command line and hands each
//! subcommand's flags to its body in [`cli`], which builds the library objects and prints
//! results (JSON Lines for machine-readable output).

use clap::{Parser, Subcommand};

mod cli;

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
    Index(cli::index::IndexCmd),
    /// Search an index (or the backend a config names) and print the top passages with their
    /// scores.
    Search(cli::search::SearchArgs),
    /// Generate text from the policy model (no search).
    Generate(cli::model::GenerateArgs),
    /// Run the search agent on one question and print the trajectory readably.
    Rollout(cli::rollout::RolloutArgs),
    /// Train the policy with GRPO / Reinforce++ (writes metrics.jsonl and checkpoints).
    Train(cli::train::TrainArgs),
    /// Evaluate the agent on a QA set, or rescore an existing predictions file.
    Eval(cli::eval::EvalArgs),
    /// Write a policy (a run's checkpoint, a GGUF file, or an HF directory) as a Hugging
    /// Face model directory: config.json, tokenizer files, safetensors.
    Export(cli::model::ExportArgs),
    /// Measure decode throughput (tokens/s) of the policy at batch 1 and batch G.
    Bench(cli::model::BenchArgs),
    /// Serve a BM25 index over HTTP with R1-Searcher's (POST /queries) and Search-R1's
    /// (POST /retrieve) APIs.
    RetrievalServer(cli::search::RetrievalServerArgs),
    /// Serve the agent as an OpenAI-compatible chat endpoint (POST /v1/chat/completions).
    Serve(cli::serve::ServeArgs),
    /// Chat with a running `sleuth serve` in the terminal, seeing each search as it happens.
    Chat(cli::serve::ChatArgs),
    /// Collect format-valid trajectories (demonstration prompt) for a supervised cold start.
    Collect(cli::collect::CollectArgs),
    /// Supervised fine-tuning on collected trajectories (loss on policy tokens only).
    Sft(cli::train::SftArgs),
    /// Render training curves (reward ± std, format-valid rate, searches, response length,
    /// KL, entropy) of one or more runs' metrics.jsonl to a PNG.
    Plot(cli::plot::PlotArgs),
    /// Download the public data files (QA sets, HotpotQA dev, a Wikipedia dump) that a
    /// manifest lists: resumable, checksummed.
    #[command(subcommand)]
    Data(cli::data::DataCmd),
    /// Prepare a passage corpus from a downloaded dump (DPR TSV, HotpotQA JSON, JSONL).
    #[command(subcommand)]
    Corpus(cli::data::CorpusCmd),
}

fn main() -> std::process::ExitCode {
    sleuth::model::backend::retain_freed_memory();
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
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each cause once: most of the library's errors
/// already print their cause in their own message (`"{path}: {source}"`), which anyhow's `{:#}`
/// would print a second time.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Index(c) => cli::index::run_index(c),
        Command::Search(a) => cli::search::run_search(a),
        Command::Generate(a) => cli::model::run_generate(a),
        Command::Rollout(a) => cli::rollout::run_rollout(a),
        Command::Train(a) => cli::train::run_train(a),
        Command::Eval(a) => cli::eval::run_eval(a),
        Command::Bench(a) => cli::model::run_bench(a),
        Command::Export(a) => cli::model::run_export(a),
        Command::RetrievalServer(a) => cli::search::run_retrieval_server(a),
        Command::Serve(a) => Ok(cli::serve::run_serve(a)?),
        Command::Chat(a) => Ok(cli::serve::run_chat(a)?),
        Command::Collect(a) => cli::collect::run_collect(a),
        Command::Sft(a) => cli::train::run_sft(a),
        Command::Plot(a) => cli::plot::run_plot(a),
        Command::Data(c) => cli::data::run_data(c),
        Command::Corpus(c) => cli::data::run_corpus(c),
    }
}
