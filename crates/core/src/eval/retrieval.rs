//! Retrieval quality without a policy: the eval questions themselves are the queries, and the
//! top-k passages are scored two ways.
//!
//! - **Support recall@k** (only for questions with known gold titles, e.g.
//!   `hotpotqa_500.support.jsonl`): the fraction of a question's gold support titles found
//!   among the titles of the top-k hits, averaged over questions. `all@k` is the share of
//!   questions whose every support title is in the top k (what a two-hop question needs).
//! - **Answer hit@k** (every question): whether some gold answer, normalized as for EM
//!   (DESIGN §4), occurs as a whole-word span of a normalized top-k passage. It is measured on
//!   the passage as the policy sees it ([`Hit::render`], `"title" text`) and on the text alone,
//!   so the table shows what rendering the title adds.
//!
//! Queries can be rewritten before searching ([`QueryRewrite`]): dropping English stop words is
//! one of the tuning choices, done here on the query side so one index serves both variants.
//! The report is plain data (serde), so the CLI prints it as JSON and the tuning tables of
//! docs/retrieval.md are built from these numbers.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EvalError;
use crate::qa::QaExample;
use crate::reward::metrics::normalize_answer;
use crate::search::{Bm25Options, Bm25Retriever, Hit, Retriever, SearchError};

/// The cut-offs every metric is reported at.
pub const CUTOFFS: [usize; 3] = [1, 5, 10];

pub use crate::corpus::text::STOP_WORDS;

/// How a question is turned into a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryRewrite {
    /// The question as written. **The default.**
    #[default]
    None,
    /// Lowercased words with [`STOP_WORDS`] removed (words split on non-alphanumerics).
    DropStopWords,
}

impl QueryRewrite {
    /// Applies the rewrite to `question`.
    pub fn apply(self, question: &str) -> String {
        match self {
            QueryRewrite::None => question.to_string(),
            QueryRewrite::DropStopWords => {
                let stop: HashSet<&str> = STOP_WORDS.iter().copied().collect();
                question
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .filter(|w| !stop.contains(w.to_lowercase().as_str()))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }
}

/// Metrics at each of [`CUTOFFS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AtK {
    /// Value at k = 1.
    #[serde(rename = "1")]
    pub at1: f64,
    /// Value at k = 5.
    #[serde(rename = "5")]
    pub at5: f64,
    /// Value at k = 10.
    #[serde(rename = "10")]
    pub at10: f64,
}

impl AtK {
    fn from_sums(sums: [f64; 3], n: usize) -> Self {
        let d = n.max(1) as f64;
        let r = |x: f64| (x / d * 10_000.0).round() / 10_000.0;
        Self {
            at1: r(sums[0]),
            at5: r(sums[1]),
            at10: r(sums[2]),
        }
    }
}

/// Retrieval quality over one QA set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// Questions searched.
    pub questions: usize,
    /// Questions with known support titles (the recall denominators).
    pub with_support: usize,
    /// Mean fraction of support titles among the top-k titles.
    pub support_recall: AtK,
    /// Share of questions whose support titles are all in the top k.
    pub support_all: AtK,
    /// Share of questions with a gold answer inside a top-k rendered passage (`"title" text`).
    pub answer_hit: AtK,
    /// The same, searching only the passage text (title not shown).
    pub answer_hit_text_only: AtK,
    /// Seconds spent searching.
    pub seconds: f64,
}

/// Reads a support file: JSONL rows `{"idx": int, "support_titles": [str]}`. Rows with no titles
/// are skipped, so the map holds only questions whose support is known.
///
/// # Errors
/// [`EvalError`] naming the file, and the line and field at fault.
pub fn read_support(path: &Path) -> Result<HashMap<i64, Vec<String>>, EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let row: serde_json::Value =
            serde_json::from_str(&line).map_err(|source| EvalError::Json {
                path: path.to_path_buf(),
                line: n,
                source,
            })?;
        let invalid = |field, expected| EvalError::InvalidField {
            path: path.to_path_buf(),
            line: n,
            field,
            expected,
        };
        let idx = match row.get("idx") {
            None => {
                return Err(EvalError::MissingField {
                    path: path.to_path_buf(),
                    line: n,
                    field: "idx",
                })
            }
            Some(v) => v.as_i64().ok_or_else(|| invalid("idx", "an integer"))?,
        };
        let titles = match row.get("support_titles") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|t| t.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| invalid("support_titles", "a list of strings"))?,
        };
        if !titles.is_empty() {
            out.insert(idx, titles);
        }
    }
    Ok(out)
}

/// Whether a normalized answer occurs as whole words in a normalized passage.
fn contains_answer(norm_passage: &str, norm_answers: &[String]) -> bool {
    let hay = format!(" {norm_passage} ");
    norm_answers
        .iter()
        .filter(|a| !a.is_empty())
        .any(|a| hay.contains(&format!(" {a} ")))
}

/// Searches every question (top 10, after `rewrite`) on `threads` threads and scores the hits.
/// `support` maps a question's `idx` to its gold titles.
///
/// # Errors
/// The first [`SearchError`] the retriever returns.
pub fn evaluate_retrieval(
    retriever: &dyn Retriever,
    examples: &[QaExample],
    support: &HashMap<i64, Vec<String>>,
    rewrite: QueryRewrite,
    threads: usize,
) -> Result<RetrievalReport, SearchError> {
    let start = std::time::Instant::now();
    let [.., kmax] = CUTOFFS;
    let threads = threads.max(1);
    let chunk = examples.len().div_ceil(threads).max(1);
    let hits: Vec<Vec<Hit>> = std::thread::scope(|s| {
        let handles: Vec<_> = examples
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|ex| retriever.search(&rewrite.apply(&ex.question), kmax))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(examples.len());
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok::<_, SearchError>(all)
    })?;

    let mut recall = [0.0; 3];
    let mut all_found = [0.0; 3];
    let mut hit = [0.0; 3];
    let mut hit_text = [0.0; 3];
    let mut with_support = 0;
    for (ex, hits) in examples.iter().zip(&hits) {
        let answers: Vec<String> = ex.answers.iter().map(|a| normalize_answer(a)).collect();
        let rendered: Vec<bool> = hits
            .iter()
            .map(|h| contains_answer(&normalize_answer(&h.render()), &answers))
            .collect();
        let text_only: Vec<bool> = hits
            .iter()
            .map(|h| contains_answer(&normalize_answer(&h.text), &answers))
            .collect();
        let gold = ex.idx.and_then(|i| support.get(&i));
        if gold.is_some() {
            with_support += 1;
        }
        // One accumulator of each array per cut-off.
        let sums = hit
            .iter_mut()
            .zip(&mut hit_text)
            .zip(recall.iter_mut().zip(&mut all_found));
        for (&k, ((hit, hit_text), (recall, all_found))) in CUTOFFS.iter().zip(sums) {
            if rendered.iter().take(k).any(|&b| b) {
                *hit += 1.0;
            }
            if text_only.iter().take(k).any(|&b| b) {
                *hit_text += 1.0;
            }
            if let Some(gold) = gold {
                let titles: HashSet<&str> = hits.iter().take(k).map(|h| h.title.as_str()).collect();
                let found = gold.iter().filter(|t| titles.contains(t.as_str())).count();
                *recall += found as f64 / gold.len() as f64;
                if found == gold.len() {
                    *all_found += 1.0;
                }
            }
        }
    }
    Ok(RetrievalReport {
        questions: examples.len(),
        with_support,
        support_recall: AtK::from_sums(recall, with_support),
        support_all: AtK::from_sums(all_found, with_support),
        answer_hit: AtK::from_sums(hit, examples.len()),
        answer_hit_text_only: AtK::from_sums(hit_text, examples.len()),
        seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

/// One row of a tuning sweep: the settings and what they scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// Tokenizer recorded in the index manifest (`default`, `en_stem`), or `unknown`.
    pub tokenizer: String,
    /// [`Bm25Options::title_boost`] used.
    pub title_boost: f32,
    /// Query rewrite used.
    pub rewrite: QueryRewrite,
    /// The scores.
    pub report: RetrievalReport,
}

/// Evaluates the index in `index` under every combination of `title_boosts` and `rewrites`.
///
/// # Errors
/// [`SearchError`] when the index cannot be opened or searched.
pub fn sweep(
    index: &Path,
    examples: &[QaExample],
    support: &HashMap<i64, Vec<String>>,
    title_boosts: &[f32],
    rewrites: &[QueryRewrite],
    threads: usize,
) -> Result<Vec<SweepRow>, SearchError> {
    let mut rows = Vec::new();
    for &title_boost in title_boosts {
        let retriever = Bm25Retriever::open_with(
            index,
            Bm25Options {
                title_boost,
                ..Bm25Options::default()
            },
        )?;
        let tokenizer = retriever
            .manifest()
            .map_or("unknown", |m| m.tokenizer.name())
            .to_string();
        for &rewrite in rewrites {
            let report = evaluate_retrieval(&retriever, examples, support, rewrite, threads)?;
            rows.push(SweepRow {
                tokenizer: tokenizer.clone(),
                title_boost,
                rewrite,
                report,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_dropped_case_insensitively() {
        assert_eq!(
            QueryRewrite::DropStopWords.apply("What is the capital of France?"),
            "capital France"
        );
        assert_eq!(QueryRewrite::None.apply("The x"), "The x");
        assert_eq!(QueryRewrite::DropStopWords.apply("the of a"), "");
    }

    #[test]
    fn answers_match_whole_words_only() {
        let a = vec![normalize_answer("Paris")];
        assert!(contains_answer(&normalize_answer("\"Paris\" is big"), &a));
        assert!(!contains_answer(&normalize_answer("Parisian food"), &a));
        assert!(!contains_answer("anything", &[String::new()]));
    }
}
