//! Paired comparison of two evaluations of the same questions: is a difference more than noise?
//!
//! Two models evaluated on the same 100 questions differ by a few points of cover-EM from
//! noise alone: the standard error of a rate near 15% over 100 questions is 3.6 points
//! ([`standard_error_points`]). Comparing the two rates as if they came from independent
//! samples wastes what a paired design knows: most questions are answered right (or wrong) by
//! both models, and only the questions whose outcome *changed* carry evidence of a
//! difference. So the comparison pairs the two evaluations question by question and counts
//!
//! - **gained**: wrong in A, right in B;
//! - **lost**: right in A, wrong in B;
//!
//! and tests whether gains and losses are equally likely with McNemar's test
//! ([`mcnemar_exact`]), in its exact (binomial) form because the changed questions are few.
//!
//! **Pairing.** Rows are matched by `idx` when every row on both sides has one (the QA files'
//! row id, copied into the trajectories), else by the question text; the k-th row with a key
//! in A is paired with the k-th row with that key in B, so a repeated question pairs one to
//! one. Rows of one side without a partner are counted ([`Comparison::only_a`],
//! [`Comparison::only_b`]), never dropped silently. When pairing by `idx`, a pair whose
//! questions differ is an error: the two files are not the same eval set (hotpotqa_500 and
//! 2wiki_500 share their idx values).
//!
//! **Reading.** [`read_outcomes`] reads a trajectories JSONL (or any predictions file with
//! `question`, `answer` and `pred_ans`, R1-Searcher's included) through the same row parser
//! as `sleuth eval --rescore`, and scores each prediction again under the given rules, so both
//! sides are measured on one scale whatever wrote them; under the default rules the scores
//! equal the `em` / `cover_em` / `f1` a sleuth evaluation stored.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{rescore_rows, EvalError, EvalRecord};
use crate::reward::{AnswerRules, Metrics};

/// The exact two-sided McNemar p-value for a paired comparison of two binary outcomes.
///
/// `gained` (b) and `lost` (c) are the discordant pairs: questions wrong in A and right in B,
/// and the reverse. Under the null hypothesis that both models are equally accurate, each
/// discordant question is a fair coin, so X ~ Binomial(b + c, 1/2) and
///
/// p = min(1, 2 · P[X ≤ min(b, c)]),
///
/// with p = 1 when b + c = 0 (no question changed: no evidence either way). Concordant pairs
/// do not enter the test.
///
/// The test is McNemar's (Q. McNemar, "Note on the sampling error of the difference between
/// correlated proportions or percentages", Psychometrika 12(2), 1947); this exact binomial
/// form is the one statsmodels computes with `mcnemar(table, exact=True)`. The binomial
/// probabilities are summed in log space (each term relative to the largest), so the value is
/// accurate to about 1e-12 relative error for any b + c, including several thousand, where
/// 2^-(b+c) underflows.
///
/// ```
/// use sleuth::eval::mcnemar_exact;
/// assert!((mcnemar_exact(0, 6) - 0.03125).abs() < 1e-12); // 2 · (1/2)^6
/// assert!((mcnemar_exact(7, 10) - 0.629058837890625).abs() < 1e-12);
/// assert_eq!(mcnemar_exact(4, 4), 1.0);
/// ```
pub fn mcnemar_exact(gained: usize, lost: usize) -> f64 {
    let n = gained + lost;
    if n == 0 {
        return 1.0;
    }
    let k = gained.min(lost);
    // ln C(n, i) for i = 0..=k, built up one factor at a time: C(n, i+1) = C(n, i)·(n−i)/(i+1).
    let mut log_choose = Vec::with_capacity(k + 1);
    let mut current = 0.0f64;
    log_choose.push(current);
    for i in 0..k {
        current += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        log_choose.push(current);
    }
    // The terms grow with i up to n/2 and k ≤ n/2, so the last one is the largest.
    let largest = current;
    let sum_relative: f64 = log_choose.iter().map(|l| (l - largest).exp()).sum();
    let log_tail = largest + sum_relative.ln() - n as f64 * std::f64::consts::LN_2;
    (2.0 * log_tail.exp()).min(1.0)
}

/// The standard error of a proportion, in percentage points: sqrt(p (1 − p) / n) · 100 for a
/// rate of `rate_percent` % over `n` questions. About 3.6 points at 15% over 100 questions,
/// 1.6 over 500. `n = 0` gives NaN (no questions, no estimate).
///
/// ```
/// use sleuth::eval::standard_error_points;
/// assert!((standard_error_points(50.0, 100) - 5.0).abs() < 1e-12);
/// ```
pub fn standard_error_points(rate_percent: f64, n: usize) -> f64 {
    if n == 0 {
        return f64::NAN;
    }
    let p = rate_percent / 100.0;
    (p * (1.0 - p) / n as f64).sqrt() * 100.0
}

/// A p-value for people: two significant digits (`0.63`, `0.031`, `0.0054`), scientific
/// below 0.0001 (`1.9e-12`).
pub fn format_p_value(p: f64) -> String {
    if p >= 1e-4 {
        let decimals = (1 - p.log10().floor() as i64).max(2) as usize;
        format!("{p:.decimals$}")
    } else {
        format!("{p:.1e}")
    }
}

/// One question's outcome, the unit a paired comparison counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The QA row's `idx`, when it has one.
    pub idx: Option<i64>,
    /// The question text.
    pub question: String,
    /// EM, cover-EM and F1 of the prediction.
    pub metrics: Metrics,
}

impl From<&EvalRecord> for Outcome {
    /// The outcome a record stored (its `em`, `cover_em` and `f1`).
    fn from(r: &EvalRecord) -> Self {
        Outcome {
            idx: r.idx,
            question: r.question.clone(),
            metrics: Metrics {
                em: r.em > 0.5,
                cover_em: r.cover_em > 0.5,
                f1: r.f1,
            },
        }
    }
}

/// Reads the outcomes of a trajectories JSONL (or any predictions file whose rows have
/// `question`, `answer` and `pred_ans`), scoring each prediction under `rules`.
///
/// # Errors
/// As [`super::rescore`] (file and line of a malformed row), and
/// [`EvalError::MissingField`] naming the line of a row without a string `question`.
pub fn read_outcomes(path: &Path, rules: AnswerRules) -> Result<Vec<Outcome>, EvalError> {
    let mut rows = Vec::new();
    rescore_rows(path, rules, None, |row| rows.push(row.clone()))?;
    rows.into_iter()
        .map(|row| {
            let question = row.question.ok_or_else(|| EvalError::MissingField {
                path: path.to_path_buf(),
                line: row.line,
                field: "question",
            })?;
            Ok(Outcome {
                idx: row.idx,
                metrics: rules.score(&row.prediction, &row.golds),
                question,
            })
        })
        .collect()
}

/// What matched the rows of the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairedBy {
    /// The `idx` field (every row on both sides had one).
    Idx,
    /// The question text.
    Question,
}

impl PairedBy {
    /// `idx` or `question`.
    pub fn as_str(self) -> &'static str {
        match self {
            PairedBy::Idx => "idx",
            PairedBy::Question => "question",
        }
    }
}

/// A binary metric compared over the paired questions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// A's rate over the paired questions, %.
    pub a: f64,
    /// B's rate over the paired questions, %.
    pub b: f64,
    /// Standard error of `a`, percentage points ([`standard_error_points`]).
    pub se_a: f64,
    /// Standard error of `b`, percentage points.
    pub se_b: f64,
    /// Questions wrong in A and right in B.
    pub gained: usize,
    /// Questions right in A and wrong in B.
    pub lost: usize,
    /// Exact McNemar p-value of `gained` against `lost` ([`mcnemar_exact`]).
    pub p_value: f64,
}

impl Paired {
    /// Counts the pairs `(right in A, right in B)`.
    fn from_pairs(pairs: impl Iterator<Item = (bool, bool)>) -> Self {
        let (mut n, mut right_a, mut right_b, mut gained, mut lost) = (0usize, 0, 0, 0, 0);
        for (a, b) in pairs {
            n += 1;
            right_a += usize::from(a);
            right_b += usize::from(b);
            gained += usize::from(!a && b);
            lost += usize::from(a && !b);
        }
        let rate = |right: usize| 100.0 * right as f64 / n as f64;
        let (a, b) = (rate(right_a), rate(right_b));
        Paired {
            a,
            b,
            se_a: standard_error_points(a, n),
            se_b: standard_error_points(b, n),
            gained,
            lost,
            p_value: mcnemar_exact(gained, lost),
        }
    }
}

/// A graded metric (F1) compared over the paired questions: the two means and their paired
/// difference, each with its standard error; no test.
///
/// Standard errors are sqrt(variance / n) with the plug-in (divide-by-n) variance, the same
/// estimator [`standard_error_points`] is for a 0/1 metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedMean {
    /// A's mean, %.
    pub a: f64,
    /// B's mean, %.
    pub b: f64,
    /// Standard error of `a`, percentage points.
    pub se_a: f64,
    /// Standard error of `b`, percentage points.
    pub se_b: f64,
    /// Mean of B − A over the pairs, percentage points (equals `b − a`).
    pub diff: f64,
    /// Standard error of `diff` from the per-question differences, percentage points: smaller
    /// than `se_a` and `se_b` combined when the two models succeed on the same questions.
    pub diff_se: f64,
}

impl PairedMean {
    /// From the pairs `(A's score, B's score)`, scores in `[0, 1]`.
    fn from_pairs(pairs: &[(f64, f64)]) -> Self {
        let n = pairs.len() as f64;
        let mean_se = |values: &mut dyn Iterator<Item = f64>| {
            let values: Vec<f64> = values.collect();
            let mean = values.iter().sum::<f64>() / n;
            let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (100.0 * mean, 100.0 * (variance / n).sqrt())
        };
        let (a, se_a) = mean_se(&mut pairs.iter().map(|p| p.0));
        let (b, se_b) = mean_se(&mut pairs.iter().map(|p| p.1));
        let (diff, diff_se) = mean_se(&mut pairs.iter().map(|p| p.1 - p.0));
        PairedMean {
            a,
            b,
            se_a,
            se_b,
            diff,
            diff_se,
        }
    }
}

/// Two evaluations compared question by question (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Questions paired (present on both sides).
    pub n: usize,
    /// What matched them.
    pub paired_by: PairedBy,
    /// Rows of A with no partner in B.
    pub only_a: usize,
    /// Rows of B with no partner in A.
    pub only_b: usize,
    /// Cover-EM (ACC_R), the primary metric.
    pub cover_em: Paired,
    /// Exact match.
    pub em: Paired,
    /// Token F1.
    pub f1: PairedMean,
}

/// Why two evaluations could not be compared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// No row of A has a partner in B.
    #[error("no question is on both sides (paired by {}; A has {a} rows, B has {b})", paired_by.as_str())]
    NothingPaired {
        /// What the rows were matched by.
        paired_by: PairedBy,
        /// Rows in A.
        a: usize,
        /// Rows in B.
        b: usize,
    },
    /// Pairing by `idx` matched two different questions: the sides are not the same eval set.
    #[error("idx {idx} is {a:?} in A but {b:?} in B: not the same eval set")]
    QuestionMismatch {
        /// The shared idx.
        idx: i64,
        /// A's question.
        a: String,
        /// B's question.
        b: String,
    },
}

/// The key a row is paired by.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    Idx(i64),
    Question(&'a str),
}

impl<'a> Key<'a> {
    fn of(o: &'a Outcome, paired_by: PairedBy) -> Self {
        match (paired_by, o.idx) {
            (PairedBy::Idx, Some(idx)) => Key::Idx(idx),
            _ => Key::Question(&o.question),
        }
    }
}

/// Compares two evaluations of the same questions, paired by `idx` or question text (module
/// docs): cover-EM and EM with gained / lost and McNemar's exact p, F1 means with their
/// paired difference.
///
/// # Errors
/// [`CompareError::NothingPaired`] when no question is on both sides;
/// [`CompareError::QuestionMismatch`] when an `idx` names different questions in A and B.
pub fn compare(a: &[Outcome], b: &[Outcome]) -> Result<Comparison, CompareError> {
    let paired_by = if a.iter().chain(b).all(|o| o.idx.is_some()) {
        PairedBy::Idx
    } else {
        PairedBy::Question
    };
    let key = |o| Key::of(o, paired_by);
    let mut in_b: HashMap<Key<'_>, VecDeque<&Outcome>> = HashMap::new();
    for o in b {
        in_b.entry(key(o)).or_default().push_back(o);
    }
    let mut pairs: Vec<(&Outcome, &Outcome)> = Vec::new();
    let mut only_a = 0usize;
    for oa in a {
        match in_b.get_mut(&key(oa)).and_then(VecDeque::pop_front) {
            Some(ob) => {
                if let (PairedBy::Idx, Some(idx)) = (paired_by, oa.idx) {
                    if oa.question != ob.question {
                        return Err(CompareError::QuestionMismatch {
                            idx,
                            a: oa.question.clone(),
                            b: ob.question.clone(),
                        });
                    }
                }
                pairs.push((oa, ob));
            }
            None => only_a += 1,
        }
    }
    if pairs.is_empty() {
        return Err(CompareError::NothingPaired {
            paired_by,
            a: a.len(),
            b: b.len(),
        });
    }
    let f1: Vec<(f64, f64)> = pairs
        .iter()
        .map(|(x, y)| (x.metrics.f1, y.metrics.f1))
        .collect();
    Ok(Comparison {
        n: pairs.len(),
        paired_by,
        only_a,
        only_b: b.len() - pairs.len(),
        cover_em: Paired::from_pairs(
            pairs
                .iter()
                .map(|(x, y)| (x.metrics.cover_em, y.metrics.cover_em)),
        ),
        em: Paired::from_pairs(pairs.iter().map(|(x, y)| (x.metrics.em, y.metrics.em))),
        f1: PairedMean::from_pairs(&f1),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() <= 1e-12 * y.abs().max(1e-300)
    }

    #[test]
    fn mcnemar_matches_hand_worked_tables() {
        // 2 · Σ_{k≤7} C(17,k) / 2^17 = 2 · 41226 / 131072.
        assert!(close(mcnemar_exact(7, 10), 82452.0 / 131072.0));
        assert!(close(mcnemar_exact(10, 7), 0.629058837890625));
        // 2 · (1/2)^6, either way round.
        assert!(close(mcnemar_exact(0, 6), 0.03125));
        assert!(close(mcnemar_exact(6, 0), 0.03125));
        assert!(close(mcnemar_exact(3, 0), 0.25));
        // 2 · (1 + 3) / 8 = 1, and balanced tables are never evidence.
        assert!(close(mcnemar_exact(1, 2), 1.0));
        for b in [1, 5, 50, 500] {
            assert_eq!(mcnemar_exact(b, b), 1.0, "b = c = {b}");
        }
        assert_eq!(mcnemar_exact(0, 0), 1.0);
    }

    #[test]
    fn mcnemar_is_accurate_for_large_tables() {
        // Each computed independently with Python 3: min(1, 2 * sum(math.comb(n, i) for i
        // in range(min(b, c) + 1)) / 2**n).
        for (b, c, expected) in [
            (40, 70, 0.005447429511444482),
            (450, 550, 0.0017305360849763176),
            (0, 1000, 1.8665272370064378e-301),
        ] {
            let p = mcnemar_exact(b, c);
            assert!(
                (p - expected).abs() <= 1e-10 * expected,
                "b={b} c={c}: {p} vs {expected}"
            );
        }
        // Past where 2^-n underflows, still a probability and monotone in the imbalance.
        let (p1, p2) = (mcnemar_exact(2400, 2600), mcnemar_exact(2300, 2700));
        assert!(p1 > 0.0 && p1 < 1.0 && p2 < p1, "{p1} {p2}");
    }

    #[test]
    fn standard_errors_in_points() {
        assert!(close(standard_error_points(50.0, 100), 5.0));
        // The figures docs/evaluation.md quotes: 15% of 100 and of 500 questions.
        assert!((standard_error_points(15.0, 100) - 3.5707).abs() < 1e-4);
        assert!((standard_error_points(15.0, 500) - 1.5969).abs() < 1e-4);
        assert_eq!(standard_error_points(0.0, 100), 0.0);
        assert!(standard_error_points(10.0, 0).is_nan());
    }

    #[test]
    fn p_values_print_with_two_significant_digits() {
        assert_eq!(format_p_value(0.629058837890625), "0.63");
        assert_eq!(format_p_value(1.0), "1.00");
        assert_eq!(format_p_value(0.03125), "0.031");
        assert_eq!(format_p_value(0.005447429511444482), "0.0054");
        assert_eq!(format_p_value(1.8665272370064378e-301), "1.9e-301");
    }

    fn outcome(idx: Option<i64>, question: &str, cover_em: bool, em: bool, f1: f64) -> Outcome {
        Outcome {
            idx,
            question: question.into(),
            metrics: Metrics { em, cover_em, f1 },
        }
    }

    #[test]
    fn pairs_by_idx_and_counts_unmatched_rows() {
        let a = vec![
            outcome(Some(0), "q0", true, true, 1.0),
            outcome(Some(1), "q1", true, false, 0.5),
            outcome(Some(2), "q2", false, false, 0.0),
            outcome(Some(3), "q3", false, false, 0.0), // not in B
        ];
        // B in another order, with one row A lacks.
        let b = vec![
            outcome(Some(2), "q2", true, true, 1.0),
            outcome(Some(9), "q9", true, true, 1.0),
            outcome(Some(1), "q1", false, false, 0.0),
            outcome(Some(0), "q0", true, false, 0.5),
        ];
        let c = compare(&a, &b).unwrap();
        assert_eq!(
            (c.n, c.paired_by, c.only_a, c.only_b),
            (3, PairedBy::Idx, 1, 1)
        );
        // cover-EM over q0..q2: A = [1, 1, 0], B = [1, 0, 1].
        assert_eq!((c.cover_em.gained, c.cover_em.lost), (1, 1));
        assert!(close(c.cover_em.a, 200.0 / 3.0) && close(c.cover_em.b, 200.0 / 3.0));
        assert_eq!(c.cover_em.p_value, 1.0);
        assert!(close(
            c.cover_em.se_a,
            standard_error_points(200.0 / 3.0, 3)
        ));
        // EM: A = [1, 0, 0], B = [0, 0, 1].
        assert_eq!((c.em.gained, c.em.lost), (1, 1));
        assert!(close(c.em.a, 100.0 / 3.0));
        // F1: A = [1, .5, 0], B = [.5, 0, 1]: means 50 and 50, differences [−.5, −.5, 1].
        assert!(close(c.f1.a, 50.0) && close(c.f1.b, 50.0));
        assert!(c.f1.diff.abs() < 1e-12);
        // Var(d) = (0.25 + 0.25 + 1) / 3 = 0.5; SE = sqrt(0.5 / 3) · 100.
        assert!(close(c.f1.diff_se, 100.0 * (0.5f64 / 3.0).sqrt()));
    }

    #[test]
    fn pairs_by_question_when_an_idx_is_missing() {
        let a = vec![
            outcome(Some(0), "same", false, false, 0.0),
            outcome(Some(1), "twice", false, false, 0.0),
            outcome(Some(2), "twice", false, false, 0.0),
            outcome(None, "only in a", true, true, 1.0),
        ];
        // idx differs from A's (B was cut from another file), questions agree.
        let b = vec![
            outcome(Some(7), "twice", true, true, 1.0),
            outcome(Some(8), "same", true, true, 1.0),
        ];
        let c = compare(&a, &b).unwrap();
        assert_eq!(c.paired_by, PairedBy::Question);
        // "twice" pairs once: the second copy in A has no partner left.
        assert_eq!((c.n, c.only_a, c.only_b), (2, 2, 0));
        assert_eq!((c.cover_em.gained, c.cover_em.lost), (2, 0));
        assert!(close(c.cover_em.p_value, 0.5));
    }

    #[test]
    fn different_questions_under_one_idx_or_no_overlap_are_errors() {
        let a = vec![outcome(Some(0), "Who?", true, true, 1.0)];
        let b = vec![outcome(Some(0), "Where?", true, true, 1.0)];
        assert!(matches!(
            compare(&a, &b),
            Err(CompareError::QuestionMismatch { idx: 0, .. })
        ));
        let b = vec![outcome(None, "Where?", true, true, 1.0)];
        let err = compare(&a, &b).unwrap_err();
        assert!(matches!(
            err,
            CompareError::NothingPaired {
                paired_by: PairedBy::Question,
                a: 1,
                b: 1
            }
        ));
        assert!(
            err.to_string().contains("no question is on both sides"),
            "{err}"
        );
    }

    #[test]
    fn reads_outcomes_rescored_and_names_a_row_without_a_question() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"{{"idx": 4, "question": "Q?", "answer": ["Arrowhead Stadium"], "pred_ans": "the Arrowhead Stadium", "em": 0.0}}"#
        )
        .unwrap();
        writeln!(file, r#"{{"answer": "x", "pred_ans": "x"}}"#).unwrap();
        let err = read_outcomes(file.path(), AnswerRules::default()).unwrap_err();
        assert!(
            matches!(
                err,
                EvalError::MissingField {
                    line: 2,
                    field: "question",
                    ..
                }
            ),
            "{err}"
        );

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"{{"idx": 4, "question": "Q?", "answer": ["Arrowhead Stadium"], "pred_ans": "the Arrowhead Stadium"}}"#
        )
        .unwrap();
        writeln!(file, r#"{{"question": "R?", "answer": "no"}}"#).unwrap();
        let got = read_outcomes(file.path(), AnswerRules::default()).unwrap();
        assert_eq!(
            got,
            vec![
                outcome(Some(4), "Q?", true, true, 1.0),
                outcome(None, "R?", false, false, 0.0)
            ]
        );
    }
}
