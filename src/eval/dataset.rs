//! QA sets: JSONL rows with `question` and `answer` (a string or a list of strings), as in
//! R1-Searcher's `data/` folder and the HotpotQA / 2WikiMultiHopQA eval files. Optional
//! HotpotQA fields are kept when present: `support_titles` (gold paragraph titles, for the
//! step-level retrieval reward and multi-hop scripted episodes) and `type`
//! (`bridge` / `comparison`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use super::EvalError;

/// One question with its acceptable answers.
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    /// The row's `idx` field when present.
    pub idx: Option<i64>,
    /// The question text.
    pub question: String,
    /// Acceptable answers (at least one).
    pub answers: Vec<String>,
    /// Gold support-paragraph titles (`support_titles`), in order of first mention; empty
    /// when the row has none.
    pub support_titles: Vec<String>,
    /// HotpotQA question type (`type`: `bridge` or `comparison`) when present.
    pub kind: Option<String>,
}

/// Reads a QA JSONL file. Blank lines are skipped.
///
/// # Errors
/// [`EvalError::Io`] when the file cannot be read; [`EvalError::Json`],
/// [`EvalError::MissingField`] or [`EvalError::InvalidField`] naming file and 1-based line for
/// a bad row.
pub fn read_qa(path: &Path) -> Result<Vec<QaExample>, EvalError> {
    let io_error = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_error)?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let row: Map<String, Value> =
            serde_json::from_str(&line).map_err(|source| EvalError::Json {
                path: path.to_path_buf(),
                line: line_no,
                source,
            })?;
        let missing = |field| EvalError::MissingField {
            path: path.to_path_buf(),
            line: line_no,
            field,
        };
        let invalid = |field, expected| EvalError::InvalidField {
            path: path.to_path_buf(),
            line: line_no,
            field,
            expected,
        };
        let question = match row.get("question") {
            None => return Err(missing("question")),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("question", "a string")),
        };
        let answers = match row.get("answer") {
            None => return Err(missing("answer")),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid("answer", "a string or a non-empty list of strings"))?,
            Some(_) => return Err(invalid("answer", "a string or a non-empty list of strings")),
        };
        let support_titles = match row.get("support_titles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("support_titles", "a list of strings"))?,
            Some(_) => return Err(invalid("support_titles", "a list of strings")),
        };
        let kind = match row.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("type", "a string")),
        };
        out.push(QaExample {
            idx: row.get("idx").and_then(Value::as_i64),
            question,
            answers,
            support_titles,
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_string_and_list_answers_and_names_bad_lines() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, r#"{{"idx": 3, "question": "Q1?", "answer": "A"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"question": "Q2?", "answer": ["B", "C"]}}"#).unwrap();
        let rows = read_qa(f.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].idx, Some(3));
        assert_eq!(rows[1].answers, vec!["B".to_string(), "C".to_string()]);

        writeln!(f, r#"{{"question": "Q3?"}}"#).unwrap();
        let err = read_qa(f.path()).unwrap_err().to_string();
        assert!(err.contains(":4:") && err.contains("answer"), "{err}");
    }

    #[test]
    fn support_titles_and_type_are_read_and_checked() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            r#"{{"question": "Q?", "answer": "A", "type": "bridge", "support_titles": ["X", "Y"]}}"#
        )
        .unwrap();
        let rows = read_qa(f.path()).unwrap();
        assert_eq!(
            rows[0].support_titles,
            vec!["X".to_string(), "Y".to_string()]
        );
        assert_eq!(rows[0].kind.as_deref(), Some("bridge"));
        writeln!(
            f,
            r#"{{"question": "Q?", "answer": "A", "support_titles": "X"}}"#
        )
        .unwrap();
        let err = read_qa(f.path()).unwrap_err().to_string();
        assert!(
            err.contains(":2:") && err.contains("support_titles"),
            "{err}"
        );
    }

    #[test]
    fn real_training_set_with_evidence_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/qa/hotpotqa_train_100.jsonl");
        if !path.exists() {
            eprintln!("skipping: {} not found", path.display());
            return;
        }
        let rows = read_qa(&path).unwrap();
        assert_eq!(rows.len(), 100);
        assert!(rows.iter().all(|r| r.support_titles.len() == 2));
        let comparison = rows
            .iter()
            .filter(|r| r.kind.as_deref() == Some("comparison"))
            .count();
        assert_eq!(comparison, 22);
    }

    #[test]
    fn real_eval_set_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/qa/hotpotqa_500.jsonl");
        if !path.exists() {
            eprintln!("skipping: {} not found", path.display());
            return;
        }
        let rows = read_qa(&path).unwrap();
        assert_eq!(rows.len(), 500);
        assert!(rows
            .iter()
            .all(|r| !r.question.is_empty() && !r.answers.is_empty()));
    }
}
