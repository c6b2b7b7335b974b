//! `sleuth collect`: cold-start trajectories for SFT, sampled from a policy (rejection
//! sampling, DeepSeek-R1's cold start and second round) or scripted from real retrieval
//! ([`sleuth::rl::collect`]). Written to `OUT.jsonl.part`, renamed when complete.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{load_tokenizer, open_search};
use sleuth::config::RunConfig;
use sleuth::rl::Question;

/// Flags of `sleuth collect`.
#[derive(Args)]
pub struct CollectArgs {
    /// Env config: model, search, prompt (with demonstrations), rollout, reward, [data].train.
    #[arg(long)]
    pub config: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long, conflicts_with = "checkpoint")]
    pub lora: Option<PathBuf>,
    /// Output JSONL of kept trajectories (tokens, mask, prompt_len), prompts without demonstrations.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per question (default: the config's samples_per_question).
    #[arg(long)]
    pub samples_per_question: Option<usize>,
    /// Use only the first N training questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep only cover-EM correct answers (default: on with --checkpoint and for stage2
    /// configs, off otherwise).
    #[arg(long)]
    pub require_correct: Option<bool>,
    /// Keep only trajectories that searched at least N times (a cold start meant to teach
    /// searching must not keep episodes that never searched). With --scripted, 2 drops the
    /// episodes whose first search already found every support title.
    #[arg(long, default_value_t = 1)]
    pub min_searches: usize,
    /// Sample from the weights saved in this SFT/RL run directory (or a curriculum's folder: its
    /// last phase with a checkpoint) instead of the config's
    /// model (DeepSeek-R1's second SFT round: sample the cold-started policy, keep its correct
    /// well-formed trajectories, fine-tune again). Turns --require-correct on by default.
    #[arg(long, value_name = "RUN")]
    pub checkpoint: Option<PathBuf>,
    /// Questions per batched rollout.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// RNG seed (sampling; with --scripted, the choice of reasoning phrases).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write scripted episodes instead of sampling (no model run): per question, the question
    /// as the first query, then, when the question's gold support titles are not all among
    /// the hits, one search per missing title whose entity the question or the documents so
    /// far name (the bridge entity, or each compared entity; at most the config's
    /// max_searches; unseen ones are not searched), the retriever's real documents after each
    /// query, and a gold answer after quoting the documents sentence that holds it (questions
    /// with no such sentence are skipped; yes/no comparisons need both compared pages). The
    /// reasoning varies per question. For policies too weak for rejection sampling to keep
    /// anything.
    #[arg(long)]
    pub scripted: bool,
}

/// `sleuth collect`: writes the kept trajectories and prints the collection statistics.
pub fn run_collect(a: CollectArgs) -> Result<()> {
    let mut cfg = RunConfig::load(&a.config)?;
    super::lora_flag(&mut cfg, a.lora.as_deref());
    if let Some(g) = a.samples_per_question {
        cfg.rollout.samples_per_question = g;
    }
    if a.scripted && a.checkpoint.is_some() {
        bail!("--scripted runs no model; drop --checkpoint");
    }
    let require_correct = a
        .require_correct
        .unwrap_or(a.checkpoint.is_some() || cfg.reward.kind == sleuth::reward::RewardKind::Stage2);
    let retriever: std::sync::Arc<dyn sleuth::search::Retriever> =
        std::sync::Arc::from(open_search(&cfg)?);
    let env_with = |tokenizer: &sleuth::model::Tokenizer| sleuth::env::Env {
        tokenizer: tokenizer.clone(),
        retriever: retriever.clone(),
        prompt: cfg.prompt.clone(),
        rollout: cfg.rollout.clone(),
    };
    let mut data = cfg.data.read_train()?;
    if let Some(n) = a.limit {
        data.truncate(n);
    }
    let questions: Vec<Question> = data.into_iter().map(Question::from).collect();
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Episodes stream into a temporary file beside `--out`, renamed into place at the end: a
    // killed collect leaves no half file under the name.
    let bar = sleuth::progress::spinner(&format!("collect ({} questions)", questions.len()));
    let mut stats = None;
    sleuth::atomic::write_with(&a.out, |file| -> Result<()> {
        let mut write_err = None;
        let mut done = 0;
        let keep = |ex: &sleuth::rl::sft::SftExample| {
            if let Err(e) = sleuth::rl::sft::write_example(file, ex) {
                write_err.get_or_insert(e);
            }
            done += 1;
            bar.set_message(format!("kept {done}"));
        };
        stats = Some(if a.scripted {
            let tokenizer = load_tokenizer(&cfg.model.path)?;
            sleuth::rl::collect::scripted(
                &env_with(&tokenizer),
                &Default::default(),
                &questions,
                a.min_searches,
                a.seed,
                keep,
            )?
        } else {
            let policy = super::EvalPolicy::load(&cfg, a.checkpoint.as_deref())?;
            policy.with(cfg.rollout.weights, |policy, tokenizer| {
                let opts = sleuth::rl::collect::CollectOptions {
                    batch: a.batch,
                    require_correct,
                    min_searches: a.min_searches,
                    seed: a.seed,
                };
                sleuth::rl::collect::collect(policy, &env_with(tokenizer), &questions, &opts, keep)
            })?
        });
        match write_err {
            Some(e) => Err(e).with_context(|| format!("writing {}", a.out.display())),
            None => Ok(()),
        }
    })?;
    bar.finish_and_clear();
    if let Some(stats) = stats {
        println!("{}", serde_json::to_string(&stats)?);
    }
    Ok(())
}
