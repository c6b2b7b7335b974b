//! QA sets: JSONL rows with `question` and `answer` (a string or a list of strings), as in
//! R1-Searcher's `data/` folder and the HotpotQA / 2WikiMultiHopQA eval files. Optional
//! HotpotQA fields are kept when present: `support_titles` (gold paragraph titles, for the
//! step-level retrieval reward and multi-hop scripted episodes) and `type`
//! (`bridge` / `comparison`).
//!
//! Training (`rl`, the curriculum's collect phases) and evaluation (`eval`) both read these
//! files, so the type and its reader sit below both, with their own error ([`QaError`]) that
//! names the file and line at fault. [`QaSplit`] cuts a training set into disjoint parts
//! (cold start, rejection sampling, RL) by a seeded hash of each question.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

/// A QA file that cannot be read, or a `[data]` split that selects nothing valid. Each variant
/// names the file, and the line or field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QaError {
    /// Reading the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid JSON.
    #[error("{}:{line}: malformed JSON: {source}", path.display())]
    Json {
        /// The JSONL file.
        path: std::path::PathBuf,
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
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// The missing field's name.
        field: &'static str,
    },
    /// A row has a field of the wrong type.
    #[error("{}:{line}: field `{field}` must be {expected}", path.display())]
    InvalidField {
        /// The JSONL file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field's name.
        field: &'static str,
        /// What the field should hold, e.g. "a string or a list of strings".
        expected: &'static str,
    },
    /// `[data] part` / `[data.split]` do not select a valid part of the training questions.
    #[error("{reason}")]
    Split {
        /// What is wrong, naming the key.
        reason: String,
    },
}

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

/// A question's identity across files: lowercased, every run of non-alphanumeric characters
/// collapsed to one space, trimmed (the matching rule `../shared/data/README.md` uses to check
/// overlaps between sets).
pub fn question_key(question: &str) -> String {
    let mut out = String::with_capacity(question.len());
    let mut gap = false;
    for c in question.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    out
}

/// `[data.split]`: disjoint parts of the training questions, so that the phases of a
/// curriculum never train twice on one question (the cold start's questions are not RL's).
///
/// A question belongs to the part its **seeded hash of [`question_key`]** falls in: the hash,
/// as a fraction in [0, 1), is laid against the parts' fractions in the parts' name order
/// (`coldstart` 0.5, `rl` 0.5: the first half of the hash range is `coldstart`). So a question
/// lands in the same part whatever files a phase reads and in whatever order, and two phases
/// that read different parts share no question, by construction. Fractions are shares of
/// the hash range; the counts per part follow them up to sampling noise (recorded in the run's
/// `data-split.json`). Fractions that add up to less than 1 leave the rest of the questions in
/// no part.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSplit {
    /// Seed of the hash: another seed, another split. Default 0.
    pub seed: u64,
    /// Part name → share of the questions (≥ 0, adding up to ≤ 1). Default: none.
    pub parts: std::collections::BTreeMap<String, f64>,
}

impl QaSplit {
    /// Checks the fractions: each finite and ≥ 0, their sum ≤ 1.
    ///
    /// # Errors
    /// A sentence naming the bad part or the sum.
    pub fn validate(&self) -> Result<(), String> {
        let mut sum = 0.0;
        for (name, &f) in &self.parts {
            if !f.is_finite() || f < 0.0 {
                return Err(format!(
                    "[data.split] parts.{name} = {f}: a share must be ≥ 0"
                ));
            }
            sum += f;
        }
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "[data.split] parts add up to {sum}: the shares must add up to at most 1"
            ));
        }
        Ok(())
    }

    /// The part `question` belongs to, `None` when it falls past the last part's share.
    pub fn part_of(&self, question: &str) -> Option<&str> {
        let u = unit_hash(self.seed, &question_key(question));
        let mut upper = 0.0;
        for (name, &f) in &self.parts {
            upper += f;
            if u < upper {
                return Some(name.as_str());
            }
        }
        None
    }
}

/// FNV-1a over `text`, finished with SplitMix64's mixer under `seed`, as a fraction in [0, 1).
fn unit_hash(seed: u64, text: &str) -> f64 {
    use crate::hash::{fnv1a, splitmix64_mix, GOLDEN_GAMMA};
    let z = splitmix64_mix(fnv1a(text.as_bytes()) ^ seed.wrapping_mul(GOLDEN_GAMMA));
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads a QA JSONL file. Blank lines are skipped.
///
/// # Errors
/// [`QaError::Io`] when the file cannot be read; [`QaError::Json`],
/// [`QaError::MissingField`] or [`QaError::InvalidField`] naming file and 1-based line for
/// a bad row.
pub fn read_qa(path: &Path) -> Result<Vec<QaExample>, QaError> {
    let io_error = |source| QaError::Io {
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
            serde_json::from_str(&line).map_err(|source| QaError::Json {
                path: path.to_path_buf(),
                line: line_no,
                source,
            })?;
        let missing = |field| QaError::MissingField {
            path: path.to_path_buf(),
            line: line_no,
            field,
        };
        let invalid = |field, expected| QaError::InvalidField {
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
    fn question_key_ignores_case_and_punctuation() {
        assert_eq!(question_key("  Who wrote *Hamlet*?"), "who wrote hamlet");
        assert_eq!(question_key("who   wrote hamlet"), "who wrote hamlet");
        assert_ne!(
            question_key("Who wrote Hamlet?"),
            question_key("Who wrote Macbeth?")
        );
    }

    #[test]
    fn a_split_puts_each_question_in_one_part_by_its_text_alone() {
        let split = QaSplit {
            seed: 7,
            parts: [("coldstart".to_string(), 0.5), ("rl".to_string(), 0.3)]
                .into_iter()
                .collect(),
        };
        split.validate().unwrap();
        let questions: Vec<String> = (0..4000).map(|i| format!("Question number {i}?")).collect();
        let mut counts = std::collections::BTreeMap::<Option<&str>, usize>::new();
        for q in &questions {
            let part = split.part_of(q);
            // The same question in another spelling lands in the same part.
            assert_eq!(split.part_of(&q.to_uppercase()), part);
            *counts.entry(part).or_default() += 1;
        }
        // Shares follow the fractions (±3 % of 4,000), the rest (0.2) in no part.
        let near = |got: usize, share: f64| (got as f64 / 4000.0 - share).abs() < 0.03;
        assert!(near(counts[&Some("coldstart")], 0.5), "{counts:?}");
        assert!(near(counts[&Some("rl")], 0.3), "{counts:?}");
        assert!(near(counts[&None], 0.2), "{counts:?}");
        // Another seed moves questions between parts.
        let other = QaSplit {
            seed: 8,
            ..split.clone()
        };
        let moved = questions
            .iter()
            .filter(|q| other.part_of(q) != split.part_of(q))
            .count();
        assert!(moved > 1000, "{moved}");
        // Bad shares are refused with the part named.
        let bad = QaSplit {
            seed: 0,
            parts: [("a".to_string(), 0.7), ("b".to_string(), 0.6)]
                .into_iter()
                .collect(),
        };
        assert!(bad.validate().unwrap_err().contains("add up to 1.2"));
        let neg = QaSplit {
            seed: 0,
            parts: [("rl".to_string(), -0.1)].into_iter().collect(),
        };
        assert!(neg.validate().unwrap_err().contains("parts.rl"));
    }

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
            .join("../../../shared/data/qa/hotpotqa_train_100.jsonl");
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
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/qa/hotpotqa_500.jsonl");
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
