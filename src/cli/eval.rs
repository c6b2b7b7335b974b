//! `sleuth eval`: the agent over a QA set (EM, cover-EM, F1, format-valid rate, searches),
//! rescoring a predictions file, comparing two evaluations question by question, or
//! retrieval alone (support-title recall, answer hit).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args};

use super::open_search;
use sleuth::config::RunConfig;
use sleuth::env::Policy;
use sleuth::eval::{
    compare, evaluate, format_p_value, judge_all, read_outcomes, rescore_rows, Comparison,
    EvalRecord, EvalReport, JudgeItem,
};
use sleuth::llm::{LlmClient, LlmOptions};
use sleuth::qa::read_qa;
use sleuth::reward::AnswerRules;

/// Flags of `sleuth eval`.
#[derive(Args)]
#[command(group = ArgGroup::new("scored").args(["rescore", "compare"]).multiple(false))]
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
    /// Rescore an existing predictions JSONL (fields pred_ans, answer; R1-Searcher's files as
    /// they are) and print {n, em, cover_em, f1}, plus acc_l and judge_unparsed when rows carry
    /// a stored judge verdict (gpt4o_output or judge_verdict: "True"/"False") or --judge-url is
    /// given (then rows need `question` too).
    #[arg(long, conflicts_with_all = ["config", "data", "out"])]
    pub rescore: Option<PathBuf>,
    /// With --rescore or --compare: how answers are matched. r1-searcher (default) follows R1-Searcher's
    /// metric_calc_rule.py exactly (only the raw strings "True"/"False" map to yes/no); folded
    /// maps true/false after normalizing (" False ", "TRUE.") and never covers an empty gold.
    /// Live evaluation always uses r1-searcher.
    #[arg(
        long,
        requires = "scored",
        default_value = "r1-searcher",
        value_parser = PossibleValuesParser::new(["r1-searcher", "folded"]).map(|s| answer_rules(&s))
    )]
    pub answer_rules: AnswerRules,
    /// Compare two evaluations of the same questions, paired question by question (no model
    /// or index needed): A and B are trajectories JSONL files (<stem>.trajectories.jsonl, as
    /// --out and curriculum eval phases write them; any file with question, answer and
    /// pred_ans works), or two folders holding them (eval phases runs/NAME/NN-phase, or --out
    /// DIRs), whose files are paired by name. Rows pair by idx when every row has one, else by
    /// question. Prints per metric A and B ± one standard error, questions gained (wrong in A,
    /// right in B) and lost, and McNemar's exact p-value (cover-EM, EM); F1 means with the
    /// paired difference ± its standard error. Predictions are rescored under --answer-rules.
    #[arg(
        long,
        num_args = 2,
        value_names = ["A", "B"],
        conflicts_with_all = ["rescore", "retrieval", "config", "data", "out", "checkpoint", "limit", "url"]
    )]
    pub compare: Option<Vec<PathBuf>>,
    /// With --compare: print one JSON line per compared pair of files on stdout (the tables go
    /// to stderr).
    #[arg(long, requires = "compare")]
    pub json: bool,
    /// Env config (model, search, prompt, rollout settings). With --retrieval: measure the
    /// search backend it names (BM25, a graph kind, online) instead of --index.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long, conflicts_with = "checkpoint")]
    pub lora: Option<PathBuf>,
    /// QA JSONL to evaluate (default: the config's [data].eval). Repeat it to evaluate several
    /// sets in one run; a markdown table of all of them goes to stderr and, with --out, to
    /// DIR/table.md.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Evaluate (or with --rescore, score) only the first N questions of each set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the report here (JSON); trajectories go beside it as <stem>.trajectories.jsonl.
    /// An existing directory (or a path ending in /) gets DIR/<set stem>.json instead. With
    /// several --data sets this is always a directory: DIR/<set stem>.json, its trajectories,
    /// DIR/table.md and DIR/table.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Evaluate the policy saved in this run directory's checkpoint: a training run, a
    /// curriculum phase (runs/NAME/04-sft-hotpot) or a curriculum's folder (its last phase with
    /// a checkpoint).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Questions per batched rollout.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Sampling temperature (default 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// LLM judge (ACC_L) flags.
    #[command(flatten)]
    pub judge: JudgeArgs,
}

/// Flags of the LLM judge (R1-Searcher's ACC_L; `sleuth::eval::judge`).
#[derive(Args)]
pub struct JudgeArgs {
    /// Judge every answer with this OpenAI-compatible chat endpoint (base URL, with or without
    /// /v1) and report acc_l: the percent the judge calls correct. An API key in
    /// SLEUTH_LLM_API_KEY is sent as a Bearer token.
    #[arg(long = "judge-url", requires = "judge_model")]
    pub url: Option<String>,
    /// The judge's model name (the request's `model` field).
    #[arg(long = "judge-model", requires = "url")]
    pub judge_model: Option<String>,
    /// Most judge requests in flight at once.
    #[arg(long = "judge-concurrency", default_value_t = 8)]
    pub concurrency: usize,
    /// Retries of a judge request after a connection error, timeout, 429 or 5xx, with
    /// exponential backoff from 500 ms.
    #[arg(long = "judge-retries", default_value_t = 3)]
    pub retries: u32,
    /// Append-only cache of judge replies, keyed by model, prompt version and (question, golds,
    /// prediction): a re-run sends nothing it already asked.
    #[arg(long = "judge-cache", default_value = "runs/judge-cache.jsonl")]
    pub cache: PathBuf,
}

impl JudgeArgs {
    /// The judge client, when --judge-url is given.
    fn client(&self) -> Result<Option<LlmClient>> {
        let (Some(url), Some(model)) = (&self.url, &self.judge_model) else {
            return Ok(None);
        };
        if let Some(parent) = self.cache.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let opts = LlmOptions {
            url: url.clone(),
            model: model.clone(),
            concurrency: self.concurrency,
            retries: self.retries,
            // A verdict is one word; a little room for a model that adds a full stop.
            max_tokens: 16,
            cache: Some(self.cache.clone()),
            ..LlmOptions::default()
        };
        Ok(Some(LlmClient::new(&opts)?))
    }
}

fn run_eval_retrieval(a: EvalArgs) -> Result<()> {
    use sleuth::eval::retrieval::{read_support, sweep, QueryRewrite};
    if a.data.len() > 1 {
        bail!("--retrieval measures one --data set at a time");
    }
    let data = a
        .data
        .first()
        .cloned()
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
        let cfg = RunConfig::load(config)?;
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

/// `--compare A B`: pairs two trajectories files (or the like-named files of two folders),
/// and prints a table per pair, on stdout, or with `json` on stderr with one JSON line per
/// pair on stdout.
fn run_eval_compare(sides: &[PathBuf], rules: AnswerRules, json: bool) -> Result<()> {
    let [a, b] = sides else {
        bail!("--compare takes two paths, A and B");
    };
    let pairs: Vec<(Option<String>, PathBuf, PathBuf)> = match (a.is_dir(), b.is_dir()) {
        (false, false) => vec![(None, a.clone(), b.clone())],
        (true, true) => {
            let (in_a, in_b) = (trajectories_in(a)?, trajectories_in(b)?);
            for (name, dir, other) in in_a
                .iter()
                .filter(|n| !in_b.contains(n))
                .map(|n| (n, a, b))
                .chain(in_b.iter().filter(|n| !in_a.contains(n)).map(|n| (n, b, a)))
            {
                eprintln!(
                    "{name}: in {} but not in {}, not compared",
                    dir.display(),
                    other.display()
                );
            }
            let common: Vec<_> = in_a
                .iter()
                .filter(|n| in_b.contains(n))
                .map(|n| (Some(set_name(n)), a.join(n), b.join(n)))
                .collect();
            if common.is_empty() {
                bail!(
                    "{} and {} hold no *.trajectories.jsonl of the same name",
                    a.display(),
                    b.display()
                );
            }
            common
        }
        _ => bail!("--compare takes two files or two folders, not one of each"),
    };
    for (set, pa, pb) in &pairs {
        let outcomes_a = read_outcomes(pa, rules)?;
        let outcomes_b = read_outcomes(pb, rules)?;
        let comparison = compare(&outcomes_a, &outcomes_b)
            .with_context(|| format!("comparing {} with {}", pa.display(), pb.display()))?;
        let mut table = String::new();
        if let Some(set) = set {
            table.push_str(&format!("## {set}\n\n"));
        }
        table.push_str(&compare_table(pa, pb, &comparison));
        if json {
            eprintln!("{table}");
            #[derive(serde::Serialize)]
            struct Line<'a> {
                set: Option<&'a str>,
                a: &'a std::path::Path,
                b: &'a std::path::Path,
                #[serde(flatten)]
                comparison: &'a Comparison,
            }
            let line = Line {
                set: set.as_deref(),
                a: pa,
                b: pb,
                comparison: &comparison,
            };
            println!("{}", serde_json::to_string(&line)?);
        } else {
            println!("{table}");
        }
    }
    Ok(())
}

/// File names ending `.trajectories.jsonl` in `dir`, sorted.
fn trajectories_in(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            if name.ends_with(".trajectories.jsonl") && entry.path().is_file() {
                names.push(name.to_owned());
            }
        }
    }
    if names.is_empty() {
        bail!(
            "{} holds no *.trajectories.jsonl: give an eval phase folder (runs/NAME/NN-phase), \
             an --out folder of several sets, or two files",
            dir.display()
        );
    }
    names.sort();
    Ok(names)
}

/// The set a trajectories file name stands for: `eval-hotpotqa_500.trajectories.jsonl` →
/// `hotpotqa_500`.
fn set_name(file: &str) -> String {
    let stem = file.strip_suffix(".trajectories.jsonl").unwrap_or(file);
    stem.strip_prefix("eval-").unwrap_or(stem).to_owned()
}

/// A comparison as a markdown table, headed by the two files and how their rows paired:
/// cover-EM and EM with A and B ± one standard error, B − A, gained, lost and McNemar's p;
/// F1 means with the paired difference ± its standard error.
pub fn compare_table(a: &std::path::Path, b: &std::path::Path, c: &Comparison) -> String {
    let mut t = format!(
        "A: {}\nB: {}\n{} questions paired by {}",
        a.display(),
        b.display(),
        c.n,
        c.paired_by.as_str()
    );
    if c.only_a + c.only_b > 0 {
        t.push_str(&format!(
            " ({} only in A, {} only in B: not counted)",
            c.only_a, c.only_b
        ));
    }
    t.push_str(
        "\n\n| metric | A | B | B − A | gained | lost | McNemar p |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, m) in [("cover-EM", &c.cover_em), ("EM", &c.em)] {
        t.push_str(&format!(
            "| {name} | {:.1} ± {:.1} | {:.1} ± {:.1} | {:+.1} | {} | {} | {} |\n",
            m.a,
            m.se_a,
            m.b,
            m.se_b,
            m.b - m.a,
            m.gained,
            m.lost,
            format_p_value(m.p_value)
        ));
    }
    let f = &c.f1;
    t.push_str(&format!(
        "| F1 (mean) | {:.1} ± {:.1} | {:.1} ± {:.1} | {:+.1} ± {:.1} | – | – | – |\n",
        f.a, f.se_a, f.b, f.se_b, f.diff, f.diff_se
    ));
    t.push_str(
        "\n± is one standard error. gained: wrong in A, right in B; lost: right in A, wrong in B. \
         McNemar p: how often gains and losses this unequal would arise if A and B were equally \
         accurate (small: unlikely to be noise).\n",
    );
    t
}

/// `sleuth eval`: the agent over one or more QA sets (report JSON on stdout, optionally
/// written with its trajectories; a table of all sets on stderr), `--rescore`, `--compare`,
/// or `--retrieval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    if a.retrieval {
        return run_eval_retrieval(a);
    }
    if let Some(sides) = &a.compare {
        return run_eval_compare(sides, a.answer_rules, a.json);
    }
    let judge = a.judge.client()?;
    if let Some(path) = &a.rescore {
        // With a live judge, keep the rows the rescoring reads (the file is parsed once).
        let mut rows = Vec::new();
        let mut report = rescore_rows(path, a.answer_rules, a.limit, |row| {
            if judge.is_some() {
                rows.push(row.clone());
            }
        })?;
        if let Some(client) = &judge {
            let mut items = Vec::with_capacity(rows.len());
            for row in &rows {
                let Some(question) = &row.question else {
                    bail!(
                        "{}:{}: --judge-url needs a string field `question` in every row",
                        path.display(),
                        row.line
                    );
                };
                items.push(JudgeItem {
                    question,
                    golds: &row.golds,
                    prediction: &row.prediction,
                });
            }
            let verdicts = judge_all(client, &items)?;
            report = report.with_verdicts(&verdicts);
            eprintln!("judge: {}", serde_json::to_string(&client.stats())?);
        }
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let Some(cfg_path) = a.config.clone() else {
        bail!("give --rescore FILE, or --config FILE to run the agent");
    };
    let mut cfg = RunConfig::load(&cfg_path)?;
    super::lora_flag(&mut cfg, a.lora.as_deref());
    cfg.rollout.temperature = a.temperature;
    let sets = if a.data.is_empty() {
        vec![cfg.data.eval.clone()]
    } else {
        a.data.clone()
    };
    // Read every set first, so a bad file fails before any model time is spent.
    let mut examples_per_set = Vec::with_capacity(sets.len());
    for path in &sets {
        let mut examples = read_qa(path)?;
        if let Some(n) = a.limit {
            examples.truncate(n);
        }
        examples_per_set.push(examples);
    }
    let retriever: std::sync::Arc<dyn sleuth::search::Retriever> =
        std::sync::Arc::from(open_search(&cfg)?);
    let policy = super::EvalPolicy::load(&cfg, a.checkpoint.as_deref())?;
    policy.with(cfg.rollout.weights, |policy, tokenizer| {
        let env = sleuth::env::Env {
            tokenizer: tokenizer.clone(),
            retriever,
            prompt: cfg.prompt.clone(),
            rollout: cfg.rollout.clone(),
        };
        eval_sets(&a, &sets, &examples_per_set, policy, &env, judge.as_ref())
    })
}

/// Evaluates every set with `policy` in `env`, writes the outputs and prints the table.
fn eval_sets(
    a: &EvalArgs,
    sets: &[PathBuf],
    examples_per_set: &[Vec<sleuth::qa::QaExample>],
    policy: &dyn Policy,
    env: &sleuth::env::Env,
    judge: Option<&LlmClient>,
) -> Result<()> {
    let several = sets.len() > 1;
    let mut rows: Vec<(PathBuf, EvalReport)> = Vec::new();
    for (set, examples) in sets.iter().zip(examples_per_set) {
        let out = a.out.as_deref().map(|o| report_path(o, set, several));
        let traj_path = out.as_ref().map(|o| trajectories_path(o));
        let mut traj_file = match &traj_path {
            Some(p) => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                Some(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )
            }
            None => None,
        };
        let bar = sleuth::progress::bar(examples.len(), "eval");
        let mut tally = sleuth::eval::EvalTally::default();
        let mut write_err = None;
        let (mut report, mut records) = evaluate(policy, env, 0, examples, a.batch, |rec| {
            tally.add(rec);
            bar.set_message(tally.line());
            bar.inc(1);
            if let Some(f) = traj_file.as_mut() {
                if let Err(e) = serde_json::to_writer(&mut *f, rec)
                    .map_err(std::io::Error::from)
                    .and_then(|_| writeln!(f))
                {
                    write_err.get_or_insert(e);
                }
            }
        })?;
        bar.finish_and_clear();
        drop(traj_file);
        if let Some(e) = write_err {
            return Err(e).context("writing trajectories");
        }
        if let Some(client) = judge {
            judge_records(client, &mut report, &mut records)?;
            if let Some(p) = &traj_path {
                // Rewrite the streamed trajectories with each row's verdict, atomically.
                let mut text = String::new();
                for r in &records {
                    text.push_str(&serde_json::to_string(r)?);
                    text.push('\n');
                }
                write_atomic(p, text.as_bytes())?;
            }
        }
        let json = serde_json::to_string_pretty(&report)?;
        if let Some(out) = &out {
            write_atomic(out, json.as_bytes())?;
            eprintln!(
                "wrote {} and {}",
                out.display(),
                traj_path
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        if !several {
            println!("{json}");
        }
        rows.push((set.clone(), report));
    }
    let table = markdown_table(&rows);
    eprintln!("{table}");
    if several {
        let json = serde_json::to_string_pretty(
            &rows
                .iter()
                .map(|(set, report)| serde_json::json!({"data": set, "report": report}))
                .collect::<Vec<_>>(),
        )?;
        if let Some(dir) = &a.out {
            write_atomic(&dir.join("table.md"), table.as_bytes())?;
            write_atomic(&dir.join("table.json"), json.as_bytes())?;
        }
        println!("{json}");
    }
    Ok(())
}

/// Where the report of `set` goes for `--out OUT`: `OUT/<set stem>.json` when several sets
/// are evaluated or when `OUT` names a folder (an existing directory, or a path ending in
/// `/`), else `OUT` itself. Decided before any question is evaluated, so `--out runs/x/eval`
/// given an existing folder writes into it instead of failing after the whole run.
fn report_path(out: &std::path::Path, set: &std::path::Path, several: bool) -> PathBuf {
    let names_folder = out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/');
    if several || names_folder {
        let stem = set.file_stem().and_then(|s| s.to_str()).unwrap_or("eval");
        out.join(format!("{stem}.json"))
    } else {
        out.to_path_buf()
    }
}

/// `<stem>.trajectories.jsonl` beside a report path.
fn trajectories_path(out: &std::path::Path) -> PathBuf {
    out.with_file_name(format!(
        "{}.trajectories.jsonl",
        out.file_stem().and_then(|s| s.to_str()).unwrap_or("eval")
    ))
}

/// [`sleuth::atomic::write`], with the path in the error.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    sleuth::atomic::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Ask the judge about every record; adds ACC_L to the report and each row's verdict.
fn judge_records(
    client: &LlmClient,
    report: &mut EvalReport,
    records: &mut [EvalRecord],
) -> Result<()> {
    let items: Vec<JudgeItem> = records
        .iter()
        .map(|r| JudgeItem {
            question: &r.question,
            golds: &r.answer,
            prediction: &r.pred_ans,
        })
        .collect();
    let verdicts = judge_all(client, &items)?;
    report.set_verdicts(&verdicts);
    for (r, v) in records.iter_mut().zip(&verdicts) {
        r.judge_verdict = Some(
            match v {
                Some(true) => "True",
                Some(false) => "False",
                None => "unparsed",
            }
            .to_owned(),
        );
    }
    eprintln!("judge: {}", serde_json::to_string(&client.stats())?);
    Ok(())
}

/// One markdown table of per-set reports: n, EM, cover-EM, F1, ACC_L (when judged),
/// format-valid and finished rates, searches per question, ≥ 2 searches, seconds.
pub fn markdown_table(rows: &[(PathBuf, EvalReport)]) -> String {
    let judged = rows.iter().any(|(_, r)| r.acc_l.is_some());
    let mut t = String::from("| set | n | EM | cover-EM | F1 |");
    if judged {
        t.push_str(" ACC_L |");
    }
    t.push_str(
        " format-valid | finished | searches / q | ≥ 2 searches | seconds |\n|---|---|---|---|---|",
    );
    if judged {
        t.push_str("---|");
    }
    t.push_str("---|---|---|---|---|\n");
    for (set, r) in rows {
        let name = set.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        t.push_str(&format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            r.n, r.em, r.cover_em, r.f1
        ));
        if judged {
            match r.acc_l {
                Some(v) => t.push_str(&format!(" {v:.1} |")),
                None => t.push_str(" – |"),
            }
        }
        t.push_str(&format!(
            " {:.1} | {:.1} | {:.2} | {:.1} | {:.0} |\n",
            r.format_ok_rate, r.finished_rate, r.searches_mean, r.multi_search_rate, r.seconds
        ));
    }
    t
}

/// The [`AnswerRules`] named on the command line (the names its serde form uses).
fn answer_rules(name: &str) -> AnswerRules {
    match name {
        "folded" => AnswerRules::Folded,
        _ => AnswerRules::R1Searcher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize, cover_em: f64, acc_l: Option<f64>) -> EvalReport {
        EvalReport {
            n,
            em: 10.0,
            cover_em,
            f1: 12.5,
            finished_rate: 90.0,
            format_ok_rate: 80.0,
            searches_mean: 1.5,
            multi_search_rate: 40.0,
            seconds: 61.4,
            acc_l,
            ..EvalReport::default()
        }
    }

    #[test]
    fn out_names_a_file_or_a_folder_before_the_eval_runs() {
        let dir = tempfile::tempdir().unwrap();
        let set = std::path::Path::new("../shared/data/qa/hotpotqa_500.jsonl");
        let file = dir.path().join("hotpot.json");
        // One set: a file path is the report itself.
        assert_eq!(report_path(&file, set, false), file);
        // An existing folder, or a path written with a trailing slash, gets <stem>.json.
        assert_eq!(
            report_path(dir.path(), set, false),
            dir.path().join("hotpotqa_500.json")
        );
        let slash = PathBuf::from(format!("{}/new/", dir.path().display()));
        assert_eq!(
            report_path(&slash, set, false),
            slash.join("hotpotqa_500.json")
        );
        // Several sets: always a folder.
        assert_eq!(
            report_path(&file, set, true),
            file.join("hotpotqa_500.json")
        );
        assert_eq!(
            trajectories_path(&dir.path().join("hotpotqa_500.json")),
            dir.path().join("hotpotqa_500.trajectories.jsonl")
        );
    }

    #[test]
    fn table_has_one_row_per_set_and_acc_l_only_when_judged() {
        let rows = vec![
            (
                PathBuf::from("qa/hotpotqa_500.jsonl"),
                report(100, 20.0, None),
            ),
            (PathBuf::from("qa/2wiki_500.jsonl"), report(50, 14.0, None)),
        ];
        let t = markdown_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(!lines[0].contains("ACC_L"));
        assert_eq!(
            lines[2],
            "| hotpotqa_500 | 100 | 10.0 | 20.0 | 12.5 | 80.0 | 90.0 | 1.50 | 40.0 | 61 |"
        );
        assert!(lines[3].starts_with("| 2wiki_500 | 50 | 10.0 | 14.0 |"));
        // Every line has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{t}");

        let judged = vec![
            (PathBuf::from("a.jsonl"), report(10, 20.0, Some(30.0))),
            (PathBuf::from("b.jsonl"), report(10, 20.0, None)),
        ];
        let t = markdown_table(&judged);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("| F1 | ACC_L | format-valid |"), "{t}");
        assert!(lines[2].contains("| 12.5 | 30.0 | 80.0 |"), "{t}");
        assert!(lines[3].contains("| 12.5 | – | 80.0 |"), "{t}");
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{t}");
    }
}
