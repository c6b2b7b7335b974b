//! Rescoring a predictions file: mean EM, cover-EM and F1 over JSONL rows.
//!
//! Each non-blank line is a JSON object with
//! - `answer`: the gold answer, a string or a list of acceptable strings (required);
//! - `pred_ans`: the predicted answer, a string; missing or `null` counts as an empty
//!   prediction (an unfinished episode), which scores zero against any non-empty gold.
//!
//! - `gpt4o_output` or `judge_verdict` (optional): a stored LLM-judge verdict, `"True"` or
//!   `"False"` (R1-Searcher's files store GPT-4o-mini's in `gpt4o_output`). When any row has
//!   one, the report adds `acc_l`, the percent of rows judged `True` ([`parse_verdict`]), and
//!   `judge_unparsed`, the rows whose verdict is neither.
//!
//! Other fields are ignored, so R1-Searcher's output files rescore as they are. Each row is
//! scored under the chosen [`AnswerRules`] (best over its golds; by default R1-Searcher's
//! `metric_calc_rule.py` exactly) and the report gives means in percent, rounded to one
//! decimal, the way papers print them. One difference from that script is deliberate: it
//! scores only a file's first 2,000 rows, we score every row (`--limit 2000` reproduces it). Rows are streamed, so a large file is
//! never held in memory; the first bad line stops the run with an error naming the file and
//! the 1-based line number, because a silently skipped row would change the mean.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::EvalError;
use crate::reward::{AnswerRules, Metrics};

/// Mean metrics over a predictions file, in percent rounded to one decimal.
///
/// Serializes as `{"n": .., "em": .., "cover_em": .., "f1": ..}`, plus `acc_l` and
/// `judge_unparsed` when the file carries judge verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RescoreReport {
    /// Number of rows scored.
    pub n: usize,
    /// Exact match, percent.
    pub em: f64,
    /// Cover exact match (ACC_R), percent.
    pub cover_em: f64,
    /// Token-level F1, percent.
    pub f1: f64,
    /// LLM-judge accuracy (ACC_L), percent of rows whose stored verdict is `True`; `None`
    /// when no row carries a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_l: Option<f64>,
    /// Rows whose stored verdict is neither `True` nor `False` (counted as not correct in
    /// `acc_l`); `None` when no row carries a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_unparsed: Option<usize>,
}

impl RescoreReport {
    /// Average per-row metrics into a report. No rows gives `n = 0` and zero means.
    pub fn from_metrics(metrics: impl IntoIterator<Item = Metrics>) -> Self {
        let (mut n, mut em, mut cover_em, mut f1) = (0usize, 0usize, 0usize, 0.0f64);
        for m in metrics {
            n += 1;
            em += usize::from(m.em);
            cover_em += usize::from(m.cover_em);
            f1 += m.f1;
        }
        let percent = |sum: f64| {
            if n == 0 {
                0.0
            } else {
                round1(100.0 * sum / n as f64)
            }
        };
        RescoreReport {
            n,
            em: percent(em as f64),
            cover_em: percent(cover_em as f64),
            f1: percent(f1),
            acc_l: None,
            judge_unparsed: None,
        }
    }

    /// Add ACC_L from per-row verdicts (`None`: the judge's answer could not be parsed).
    /// `verdicts` must hold one entry per scored row.
    pub fn with_verdicts(mut self, verdicts: &[Option<bool>]) -> Self {
        let (acc_l, unparsed) = super::judge::acc_l(verdicts);
        self.acc_l = Some(acc_l);
        self.judge_unparsed = Some(unparsed);
        self
    }
}

/// Parse an LLM judge's verdict strictly: `True` or `False`, after trimming whitespace and at
/// most one trailing full stop (`"True."`). Anything else — `"true"`, `"**True**"`,
/// `"True, because …"` — is `None` (unparseable), never guessed.
pub fn parse_verdict(text: &str) -> Option<bool> {
    let t = text.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    match t {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// Rescore a JSONL predictions file under `rules`, optionally only its first `limit` rows.
///
/// Each non-blank line is a JSON object with `answer` (a string or a list of acceptable
/// strings, required) and `pred_ans` (a string; missing or `null` is an empty prediction),
/// optionally a stored judge verdict (module docs); other fields are ignored. Blank lines are
/// skipped and do not count towards `limit`.
///
/// Errors name the file, and for a bad row its 1-based line number: [`EvalError::Json`] for
/// a line that is not a JSON object, [`EvalError::MissingField`] for a row without `answer`,
/// [`EvalError::InvalidField`] for a field of the wrong type, and [`EvalError::Io`] when the
/// file cannot be read.
pub fn rescore(
    path: &Path,
    rules: AnswerRules,
    limit: Option<usize>,
) -> Result<RescoreReport, EvalError> {
    rescore_rows(path, rules, limit, |_| {})
}

/// [`rescore`], handing each scored row to `on_row` as it is read (e.g. to collect the rows a
/// live judge should see), so the file is parsed once.
///
/// # Errors
/// As [`rescore`].
pub fn rescore_rows(
    path: &Path,
    rules: AnswerRules,
    limit: Option<usize>,
    mut on_row: impl FnMut(&PredictionRow),
) -> Result<RescoreReport, EvalError> {
    let io_error = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_error)?);
    let mut metrics = Vec::new();
    let mut verdicts = Vec::new();
    let mut any_verdict = false;
    for (index, line) in reader.lines().enumerate() {
        if limit.is_some_and(|n| metrics.len() >= n) {
            break;
        }
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(&line, path, index + 1)?;
        metrics.push(rules.score(&row.prediction, &row.golds));
        any_verdict |= row.verdict.is_some();
        verdicts.push(row.verdict.as_deref().and_then(parse_verdict));
        on_row(&row);
    }
    let report = RescoreReport::from_metrics(metrics);
    Ok(if any_verdict {
        report.with_verdicts(&verdicts)
    } else {
        report
    })
}

/// One predictions row, as [`rescore_rows`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// The `idx` field, when the row has one as an integer (as `read_qa` reads it);
    /// a paired comparison ([`super::compare()`]) matches rows by it.
    pub idx: Option<i64>,
    /// The `question` field, when the row has one as a string.
    pub question: Option<String>,
    /// `pred_ans` (empty when missing or null).
    pub prediction: String,
    /// `answer`, as a list.
    pub golds: Vec<String>,
    /// The stored judge verdict, as written.
    pub verdict: Option<String>,
}

/// Parse one row.
fn parse_row(line: &str, path: &Path, line_no: usize) -> Result<PredictionRow, EvalError> {
    let row: Map<String, Value> = serde_json::from_str(line).map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        line: line_no,
        source,
    })?;
    let invalid = |field, expected| EvalError::InvalidField {
        path: path.to_path_buf(),
        line: line_no,
        field,
        expected,
    };

    let prediction = match row.get("pred_ans") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("pred_ans", "a string or null")),
    };

    const GOLD_TYPE: &str = "a string or a list of strings";
    let golds = match row.get("answer") {
        None => {
            return Err(EvalError::MissingField {
                path: path.to_path_buf(),
                line: line_no,
                field: "answer",
            })
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("answer", GOLD_TYPE))?,
        Some(_) => return Err(invalid("answer", GOLD_TYPE)),
    };
    let mut verdict = None;
    for field in VERDICT_FIELDS {
        match row.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                verdict = Some(s.clone());
                break;
            }
            Some(_) => return Err(invalid(field, "a string (True or False)")),
        }
    }
    // Only a live judge and a paired comparison need it, and they say so when a row lacks it.
    let question = row
        .get("question")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(PredictionRow {
        line: line_no,
        idx: row.get("idx").and_then(Value::as_i64),
        question,
        prediction,
        golds,
        verdict,
    })
}

/// Fields a stored judge verdict may sit in: R1-Searcher's, then ours.
const VERDICT_FIELDS: [&str; 2] = ["gpt4o_output", "judge_verdict"];

/// Round to one decimal place, halves away from zero.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn jsonl(content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        file
    }

    #[test]
    fn rescore_averages_rows_in_percent() {
        let file = jsonl(concat!(
            r#"{"question": "q1", "pred_ans": "Arrowhead Stadium", "answer": "Arrowhead Stadium"}"#,
            "\n",
            // cover-EM but not EM; F1 = 2 * 0.5 * 1 / 1.5 = 2/3 against the first gold.
            r#"{"pred_ans": "The stadium is Arrowhead Stadium", "answer": ["Arrowhead Stadium", "GEHA Field"]}"#,
            "\n",
            r#"{"pred_ans": null, "answer": ["yes"]}"#,
            "\n\n   \n",
            r#"{"answer": "no"}"#,
            "\n",
            r#"{"pred_ans": "True", "answer": "yes"}"#,
            "\n",
        ));
        let report = rescore(file.path(), AnswerRules::default(), None).unwrap();
        assert_eq!(
            report,
            RescoreReport {
                n: 5,
                em: 40.0,
                cover_em: 60.0,
                // (1 + 2/3 + 0 + 0 + 1) / 5 = 53.33…%
                f1: 53.3,
                acc_l: None,
                judge_unparsed: None,
            }
        );
    }

    #[test]
    fn report_serializes_to_exactly_four_fields() {
        let report = RescoreReport {
            n: 3,
            em: 33.3,
            cover_em: 66.7,
            f1: 50.0,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"n":3,"em":33.3,"cover_em":66.7,"f1":50.0}"#
        );
    }

    #[test]
    fn from_metrics_rounds_to_one_decimal() {
        let hit = Metrics {
            em: true,
            cover_em: true,
            f1: 1.0,
        };
        let report = RescoreReport::from_metrics([hit, Metrics::default(), Metrics::default()]);
        assert_eq!(
            (report.n, report.em, report.cover_em, report.f1),
            (3, 33.3, 33.3, 33.3)
        );
        let report = RescoreReport::from_metrics([hit, hit, Metrics::default()]);
        assert_eq!(report.em, 66.7);
    }

    #[test]
    fn an_empty_file_gives_zero_rows() {
        let file = jsonl("\n\n");
        assert_eq!(
            rescore(file.path(), AnswerRules::default(), None).unwrap(),
            RescoreReport::default()
        );
    }

    #[test]
    fn a_malformed_line_names_the_file_and_line() {
        let file = jsonl(concat!(
            r#"{"pred_ans": "a", "answer": "a"}"#,
            "\n\n",
            r#"{"pred_ans": "b", "answer": "#,
            "\n",
        ));
        let err = rescore(file.path(), AnswerRules::default(), None).unwrap_err();
        assert!(matches!(err, EvalError::Json { line: 3, .. }), "{err:?}");
        let message = err.to_string();
        let prefix = format!("{}:3: malformed JSON: ", file.path().display());
        assert!(message.starts_with(&prefix), "{message}");
    }

    #[test]
    fn a_row_that_is_not_an_object_is_malformed() {
        let file = jsonl("[\"a\", \"b\"]\n");
        let err = rescore(file.path(), AnswerRules::default(), None).unwrap_err();
        assert!(matches!(err, EvalError::Json { line: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_missing_answer_names_the_field_and_line() {
        let file = jsonl(concat!(
            r#"{"pred_ans": "a", "answer": "a"}"#,
            "\n",
            r#"{"pred_ans": "b", "golden_answers": ["b"]}"#,
            "\n",
        ));
        let err = rescore(file.path(), AnswerRules::default(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:2: missing field `answer`", file.path().display())
        );
        assert!(matches!(
            err,
            EvalError::MissingField {
                line: 2,
                field: "answer",
                ..
            }
        ));
    }

    #[test]
    fn fields_of_the_wrong_type_are_rejected() {
        for (row, field) in [
            (r#"{"pred_ans": "a", "answer": 42}"#, "answer"),
            (r#"{"pred_ans": "a", "answer": ["a", 1]}"#, "answer"),
            (r#"{"pred_ans": "a", "answer": null}"#, "answer"),
            (r#"{"pred_ans": 7, "answer": "a"}"#, "pred_ans"),
        ] {
            let file = jsonl(row);
            let err = rescore(file.path(), AnswerRules::default(), None).unwrap_err();
            assert!(
                matches!(err, EvalError::InvalidField { line: 1, field: f, .. } if f == field),
                "{row}: {err:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.jsonl");
        let err = rescore(&path, AnswerRules::default(), None).unwrap_err();
        assert!(
            matches!(&err, EvalError::Io { path: p, .. } if p == &path),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&path.display().to_string()));
    }

    #[test]
    fn stored_verdicts_give_acc_l_and_count_the_unparseable() {
        let file = jsonl(concat!(
            r#"{"pred_ans": "Paris", "answer": "Paris", "gpt4o_output": "True"}"#,
            "\n",
            r#"{"pred_ans": "Lyon", "answer": "Paris", "gpt4o_output": "False"}"#,
            "\n",
            r#"{"pred_ans": "Paris, France", "answer": "Paris", "judge_verdict": "True."}"#,
            "\n",
            r#"{"pred_ans": "Nice", "answer": "Paris", "gpt4o_output": "I think so"}"#,
            "\n",
        ));
        let report = rescore(file.path(), AnswerRules::default(), None).unwrap();
        assert_eq!(report.acc_l, Some(50.0));
        assert_eq!(report.judge_unparsed, Some(1));
        assert_eq!(report.cover_em, 50.0);
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.ends_with(r#""acc_l":50.0,"judge_unparsed":1}"#),
            "{json}"
        );
    }

    #[test]
    fn limit_scores_only_the_first_rows_and_rules_switch_the_boolean_mapping() {
        let file = jsonl(concat!(
            r#"{"pred_ans": " False ", "answer": "no"}"#,
            "\n\n",
            r#"{"pred_ans": "x", "answer": "y"}"#,
            "\n",
        ));
        let r1 = rescore(file.path(), AnswerRules::R1Searcher, Some(1)).unwrap();
        assert_eq!((r1.n, r1.em), (1, 0.0));
        let folded = rescore(file.path(), AnswerRules::Folded, Some(1)).unwrap();
        assert_eq!((folded.n, folded.em), (1, 100.0));
        assert_eq!(
            rescore(file.path(), AnswerRules::Folded, None).unwrap().n,
            2
        );
    }

    #[test]
    fn verdicts_parse_strictly() {
        assert_eq!(parse_verdict("True"), Some(true));
        assert_eq!(parse_verdict(" False.\n"), Some(false));
        for bad in ["true", "**True**", "True, because", "Yes", "", "False.."] {
            assert_eq!(parse_verdict(bad), None, "{bad:?}");
        }
    }
}
