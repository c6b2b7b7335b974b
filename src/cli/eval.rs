//! `sleuth eval`: the agent over a QA set (EM, cover-EM, F1, format-valid rate, searches),
//! rescoring a predictions file, or retrieval alone (support-title recall, answer hit).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{load_config, load_policy, open_search};
use crate::config::RunConfig;
use crate::eval::{evaluate, read_qa, rescore};
use crate::model::backend::{self, Inference};

/// Flags of `sleuth eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Measure retrieval alone: support-title recall@1/5/10 and answer hit@1/5/10 of the
    /// questions used as queries (no model needed); the BM25 index of --index, or the backend
    /// --config names.
    #[arg(long, conflicts_with_all = ["rescore", "checkpoint"])]
    pub retrieval: bool,
    /// With --retrieval: the BM25 index to search (ignored with --config).
    #[arg(long, requires = "retrieval", default_value = "index/wiki")]
    pub index: PathBuf,
    /// With --retrieval: gold support titles JSONL (default: <data stem>.support.jsonl when it exists).
    #[arg(long, requires = "retrieval")]
    pub support: Option<PathBuf>,
    /// With --retrieval: title boost(s) to evaluate, comma-separated (default: the BM25 default).
    #[arg(long, requires = "retrieval", value_delimiter = ',')]
    pub title_boost: Vec<f32>,
    /// With --retrieval: also evaluate with English stop words dropped from the queries.
    #[arg(long, requires = "retrieval")]
    pub stop_words: bool,
    /// Rescore an existing predictions JSONL (fields pred_ans, answer) and print {n, em, cover_em, f1}.
    #[arg(long, conflicts_with_all = ["config", "data", "out"])]
    pub rescore: Option<PathBuf>,
    /// Env config (model, search, prompt, rollout settings). With --retrieval: measure the
    /// search backend it names (BM25, a graph kind, online) instead of --index.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// QA JSONL to evaluate (default: the config's [data].eval).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the report here (JSON); trajectories go beside it as <stem>.trajectories.jsonl.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Evaluate the policy saved in this run directory's checkpoint.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Questions per batched rollout.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Sampling temperature (default 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
}

fn run_eval_retrieval(a: EvalArgs) -> Result<()> {
    use crate::eval::retrieval::{read_support, sweep, QueryRewrite};
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
        vec![crate::search::DEFAULT_TITLE_BOOST]
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
            let report = crate::eval::retrieval::evaluate_retrieval(
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

/// `sleuth eval`: the agent over a QA set (report JSON on stdout, optionally written with
/// its trajectories), `--rescore`, or `--retrieval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    if a.retrieval {
        return run_eval_retrieval(a);
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
    let bar = crate::progress::bar(examples.len(), "eval");
    let mut tally = crate::eval::EvalTally::default();
    let mut write_err = None;
    let engine = crate::model::Engine::new(&m.model, cfg.rollout.weights);
    let (report, _) = evaluate(
        &engine,
        &m.tokenizer,
        &retriever,
        &cfg.prompt,
        &cfg.rollout,
        0,
        &examples,
        a.batch,
        |rec| {
            tally.add(rec);
            bar.set_message(tally.line());
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
