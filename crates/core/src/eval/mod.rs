//! Evaluation: scoring QA predictions and reporting EM, cover-EM and F1 (DESIGN §4).
//!
//! The metrics themselves live in [`crate::reward::metrics`], shared with the reward rules, so
//! a number logged during training and a number reported by evaluation mean the same thing.
//! This module adds the file formats and the aggregation around them:
//!
//! - [`rescore`]: recompute the metrics of an existing predictions file (JSONL rows with
//!   `pred_ans` and `answer`), e.g. one written by R1-Searcher's own evaluation scripts, so
//!   results from either side can be compared on one scale.
//!
//! - [`agent`]: running the search agent over a QA set ([`crate::qa`]) and reporting EM,
//!   cover-EM, F1, finished rate and searches per question.
//!
//! - [`mod@compare`]: two evaluations of the same questions, paired question by question: the
//!   standard error of each rate, questions gained and lost, McNemar's exact p-value.
//!
//! - [`judge`]: an LLM judge (ACC_L) over any OpenAI-compatible chat endpoint.
//!
//! - [`retrieval`]: retrieval quality alone (support-title recall@k, answer hit@k), the
//!   numbers behind the BM25 tuning table.
//!
//! Errors are one [`EvalError`] enum that names the file, and the line or field at fault.

use std::path::PathBuf;

pub mod agent;
pub mod compare;
pub mod judge;
mod rescore;
pub mod retrieval;

pub use agent::{evaluate, EvalRecord, EvalReport, EvalTally};
pub use compare::{
    compare, format_p_value, mcnemar_exact, read_outcomes, standard_error_points, CompareError,
    Comparison, Outcome, Paired, PairedBy, PairedMean,
};
pub use judge::{judge_all, JudgeItem};
pub use rescore::{parse_verdict, rescore, rescore_rows, PredictionRow, RescoreReport};
pub use retrieval::{evaluate_retrieval, read_support, QueryRewrite, RetrievalReport};

/// Everything that can go wrong while evaluating. Each variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSONL file is not valid JSON.
    #[error("{}:{line}: malformed JSON: {source}", path.display())]
    Json {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A row lacks a required field.
    #[error("{}:{line}: missing field `{field}`", path.display())]
    MissingField {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The missing field's name.
        field: &'static str,
    },
    /// A row has a field of the wrong type.
    #[error("{}:{line}: field `{field}` must be {expected}", path.display())]
    InvalidField {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field's name.
        field: &'static str,
        /// What the field should hold, e.g. "a string or a list of strings".
        expected: &'static str,
    },
}
