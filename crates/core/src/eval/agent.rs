//! Running the search agent over a QA set and reporting its metrics (DESIGN §4).
//!
//! Questions run `batch` at a time through the same rollout loop as training (one sample
//! each, greedy unless the rollout config says otherwise). The prediction is the text of the
//! last `<answer>…</answer>` (or the forced "I don't know." on a search-budget overrun);
//! EM / cover-EM / F1 use [`crate::reward::score_answer`], so training and evaluation report
//! the same numbers. Every trajectory is kept for inspection.

use serde::{Deserialize, Serialize};

use crate::env::{Env, Episode, EpisodeEnd, Policy, RolloutConfig, SearchCall};
use crate::model::Sampler;
use crate::qa::QaExample;
use crate::reward::{extract_answer, score_answer, FormatReport};

/// Aggregate metrics of an evaluation run; rates and scores in percent, one decimal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Questions evaluated.
    pub n: usize,
    /// Exact match, %.
    pub em: f64,
    /// Cover exact match (ACC_R), %.
    pub cover_em: f64,
    /// Token F1, %.
    pub f1: f64,
    /// Episodes that closed `</answer>`, %.
    pub finished_rate: f64,
    /// Episodes whose format checks all hold, %.
    pub format_ok_rate: f64,
    /// Mean searches per question.
    pub searches_mean: f64,
    /// Questions whose episode searched twice or more, %.
    #[serde(default)]
    pub multi_search_rate: f64,
    /// Policy tokens sampled per second of generation.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// LLM-judge accuracy (ACC_L), %; present when a judge was asked
    /// ([`crate::eval::judge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_l: Option<f64>,
    /// Judge replies that were neither `True` nor `False`; present when a judge was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_unparsed: Option<usize>,
}

impl EvalReport {
    /// Add ACC_L from one verdict per record (`None`: unparseable, counted as not correct).
    pub fn set_verdicts(&mut self, verdicts: &[Option<bool>]) {
        let (acc_l, unparsed) = super::judge::acc_l(verdicts);
        self.acc_l = Some(acc_l);
        self.judge_unparsed = Some(unparsed);
    }
}

/// One evaluated question, as written to the trajectories JSONL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The row's `idx`, when the QA file has one.
    pub idx: Option<i64>,
    /// Question text.
    pub question: String,
    /// Gold answers.
    pub answer: Vec<String>,
    /// Extracted prediction (empty when none).
    pub pred_ans: String,
    /// Exact match (1 or 0).
    pub em: f64,
    /// Cover-EM (1 or 0).
    pub cover_em: f64,
    /// F1 in [0, 1].
    pub f1: f64,
    /// How the episode ended.
    pub end: EpisodeEnd,
    /// Whether every format check holds.
    pub format_ok: bool,
    /// Searches run.
    pub searches: Vec<SearchCall>,
    /// Full generated solution (policy text with inserted documents).
    pub solution: String,
    /// The LLM judge's verdict (`"True"`, `"False"`, or `"unparsed"`), when a judge was asked;
    /// `sleuth eval --rescore` reads it back as ACC_L.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_verdict: Option<String>,
}

/// Running figures over the records seen so far, for a progress line while an evaluation
/// runs (the final figures are the [`EvalReport`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalTally {
    /// Questions seen.
    pub n: usize,
    /// Sum of cover-EM (0 or 1 each).
    pub cover_em: f64,
    /// Format-valid solutions.
    pub format_ok: usize,
    /// Searches run.
    pub searches: usize,
}

impl EvalTally {
    /// Counts one record.
    pub fn add(&mut self, rec: &EvalRecord) {
        self.n += 1;
        self.cover_em += rec.cover_em;
        self.format_ok += rec.format_ok as usize;
        self.searches += rec.searches.len();
    }

    /// `cover-EM 12% · format-valid 80% · 1.4 searches/q` (zeros before the first record).
    pub fn line(&self) -> String {
        let n = self.n.max(1) as f64;
        format!(
            "cover-EM {:.0}% · format-valid {:.0}% · {:.1} searches/q",
            100.0 * self.cover_em / n,
            100.0 * self.format_ok as f64 / n,
            self.searches as f64 / n
        )
    }
}

fn pct(x: f64) -> f64 {
    (x * 1000.0).round() / 10.0
}

/// Evaluates `examples` in `env` (one episode per question, whatever
/// `env.rollout.samples_per_question` says; sampling seeded by `sampling_seed`), `batch`
/// questions per rollout; calls `on_record` after each question (for streaming output and
/// progress). Returns the report and all records.
///
/// # Errors
/// [`crate::env::rollout::RolloutError`] when a prompt cannot be built or does not fit.
pub fn evaluate<P: Policy + ?Sized>(
    model: &P,
    env: &Env,
    sampling_seed: u64,
    examples: &[QaExample],
    batch: usize,
    mut on_record: impl FnMut(&EvalRecord),
) -> Result<(EvalReport, Vec<EvalRecord>), crate::env::rollout::RolloutError> {
    let t0 = std::time::Instant::now();
    let env = Env {
        rollout: RolloutConfig {
            samples_per_question: 1,
            ..env.rollout.clone()
        },
        ..env.clone()
    };
    let mut sampler = Sampler::new(env.rollout.sampling(sampling_seed));
    let mut records = Vec::with_capacity(examples.len());
    let (mut tokens, mut gen_seconds) = (0usize, 0f64);
    for chunk in examples.chunks(batch.max(1)) {
        let questions: Vec<String> = chunk.iter().map(|e| e.question.clone()).collect();
        let (episodes, stats) = model.rollout(&env, &questions, &mut sampler)?;
        tokens += stats.sampled_tokens;
        gen_seconds += stats.seconds_generate;
        for ep in episodes {
            let ex = &chunk[ep.question_index];
            let rec = record(ex, ep);
            on_record(&rec);
            records.push(rec);
        }
    }
    let n = records.len().max(1) as f64;
    let mean = |f: &dyn Fn(&EvalRecord) -> f64| records.iter().map(f).sum::<f64>() / n;
    let report = EvalReport {
        n: records.len(),
        em: pct(mean(&|r| r.em)),
        cover_em: pct(mean(&|r| r.cover_em)),
        f1: pct(mean(&|r| r.f1)),
        finished_rate: pct(mean(&|r| (r.end == EpisodeEnd::Answered) as u8 as f64)),
        format_ok_rate: pct(mean(&|r| r.format_ok as u8 as f64)),
        searches_mean: (mean(&|r| r.searches.len() as f64) * 100.0).round() / 100.0,
        multi_search_rate: pct(mean(&|r| (r.searches.len() >= 2) as u8 as f64)),
        tokens_per_s: (tokens as f64 / gen_seconds.max(1e-9) * 10.0).round() / 10.0,
        seconds: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        acc_l: None,
        judge_unparsed: None,
    };
    Ok((report, records))
}

fn record(ex: &QaExample, ep: Episode) -> EvalRecord {
    let pred = ep
        .forced_prediction
        .clone()
        .or_else(|| extract_answer(&ep.solution).map(str::to_owned))
        .unwrap_or_default();
    let m = score_answer(&pred, &ex.answers);
    EvalRecord {
        idx: ex.idx,
        question: ex.question.clone(),
        answer: ex.answers.clone(),
        pred_ans: pred,
        em: m.em as u8 as f64,
        cover_em: m.cover_em as u8 as f64,
        f1: m.f1,
        end: ep.end,
        format_ok: FormatReport::check(&ep.solution).all_ok(),
        searches: ep.searches,
        solution: ep.solution,
        judge_verdict: None,
    }
}
