//! The two reward rules of R1-Searcher's curriculum (DESIGN §4) behind one trait.
//!
//! Both rules are pure functions of (solution text, gold answers): they run the
//! [format checks](super::format) once, score the extracted answer with the
//! [metrics](super::metrics), and return a [`RewardBreakdown`] whose components add up to the
//! total, so training logs can show what each part paid.
//!
//! - [`Stage1Reward`] teaches the policy to call search: answer ±1 by cover-EM, +0.5 for a
//!   well-formed retrieval *with at least one search*, +0.5 for the answer-side format
//!   (think/answer tags, language, role words). Range −1 … 2.
//! - [`Stage2Reward`] teaches it to answer: F1 of the answer when every format check holds,
//!   and a flat −2 otherwise. Range −2, or 0 … 1.
//!
//! [`RewardKind`] names a rule in configs (`reward = "stage1"`) and builds it.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::format::FormatReport;
use super::metrics::{score_answer, Metrics};

/// Scores one finished (or unfinished) rollout.
///
/// This is the seam between the rollout environment and the trainer: the trainer only needs a
/// scalar per trajectory (plus components to log), and the curriculum swaps the rule between
/// stages, tests can plug in a fixed reward, and new rules (an LLM judge, a length penalty)
/// can be added without touching the training loop. Implementations must be pure and cheap:
/// they run on every sample of every group, from several threads.
pub trait RewardFn: Send + Sync {
    /// Score a solution (the generated text after `Assistant: <think>`, with the inserted
    /// document blocks) against the acceptable gold answers.
    fn score(&self, solution: &str, golds: &[String]) -> RewardBreakdown;

    /// A short stable name for logs and configs, e.g. `"stage1"`.
    fn name(&self) -> &'static str;
}

/// A reward and where it came from.
///
/// The invariant `total == answer + retrieval_format + answer_format + penalty` holds for
/// every rule in this module.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardBreakdown {
    /// The scalar reward the trainer uses.
    pub total: f32,
    /// The part paid for the answer itself (stage 1: ±1; stage 2: F1, or 0 when penalized).
    pub answer: f32,
    /// The part paid for the retrieval format (stage 1: 0 or 0.5; stage 2: always 0).
    pub retrieval_format: f32,
    /// The part paid for the answer-side format (stage 1: 0 or 0.5; stage 2: always 0).
    pub answer_format: f32,
    /// The format penalty (stage 2: −2 when a check fails, else 0; stage 1: always 0).
    pub penalty: f32,
    /// Whether every format check held ([`FormatReport::all_ok`]).
    pub format_ok: bool,
    /// Number of searches in the solution.
    pub searches: usize,
    /// The extracted answer, `None` when the solution has no `<answer> … </answer>`.
    pub prediction: Option<String>,
    /// The answer metrics of the prediction against the golds; all zero without a prediction.
    pub metrics: Metrics,
}

/// Check the format and score the extracted answer: the work both rules share.
fn inspect(solution: &str, golds: &[String]) -> (FormatReport, Metrics) {
    let report = FormatReport::check(solution);
    let metrics = report
        .answer
        .as_deref()
        .map(|answer| score_answer(answer, golds))
        .unwrap_or_default();
    (report, metrics)
}

/// Stage 1 (learn to call search).
///
/// - answer: with [`AnswerTerm::CoverEm`] (the default, R1-Searcher's rule) +1 if the
///   prediction is cover-EM correct against some gold, else −1 (also when there is no answer
///   at all); with [`AnswerTerm::F1`], `2·F1 − 1` (−1 … +1), so a partly right answer earns
///   something (a wrong or missing answer still −1, a fully right one +1);
/// - retrieval format: +0.5 if the retrieval format holds **and** at least one search was made;
/// - answer format: +0.5 if the think/answer tags, the language check and the role-word check
///   all hold ([`FormatReport::answer_format_ok`]). Language and role words are format checks
///   about the policy's own text, so they belong with the answer-side part rather than with
///   retrieval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stage1Reward {
    /// How the answer part is graded. Default [`AnswerTerm::CoverEm`].
    pub answer: AnswerTerm,
}

/// How stage 1 grades the answer (`[reward] answer`).
///
/// Cover-EM pays all or nothing: on the 135M default 41 of 61 training questions drawn in
/// docs/learning.md round 4 were never answered right in 4 samples, so almost every group
/// differed only in format or search rewards. F1 grading lets a partial answer ("Seqenenre"
/// for "Seqenenre Tao") pay part of the way, as stage 2's F1 reward does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerTerm {
    /// ±1 by cover-EM (R1-Searcher's stage 1).
    #[default]
    CoverEm,
    /// `2·F1 − 1`: −1 for F1 = 0, +1 for F1 = 1.
    F1,
}

impl RewardFn for Stage1Reward {
    fn score(&self, solution: &str, golds: &[String]) -> RewardBreakdown {
        let (report, metrics) = inspect(solution, golds);
        let answer = match self.answer {
            AnswerTerm::CoverEm => {
                if metrics.cover_em {
                    1.0
                } else {
                    -1.0
                }
            }
            AnswerTerm::F1 => 2.0 * metrics.f1 as f32 - 1.0,
        };
        let retrieval_format = if report.retrieval_format_ok && report.searches > 0 {
            0.5
        } else {
            0.0
        };
        let answer_format = if report.answer_format_ok() { 0.5 } else { 0.0 };
        RewardBreakdown {
            total: answer + retrieval_format + answer_format,
            answer,
            retrieval_format,
            answer_format,
            penalty: 0.0,
            format_ok: report.all_ok(),
            searches: report.searches,
            prediction: report.answer,
            metrics,
        }
    }

    fn name(&self) -> &'static str {
        "stage1"
    }
}

/// Stage 2 (learn to answer).
///
/// If every format check holds ([`FormatReport::all_ok`]) the reward is the best F1 of the
/// answer over the golds (0 without an answer, though a missing answer already fails the
/// format). If any check fails the reward is exactly −2, whatever the answer's F1: the
/// penalty replaces the answer reward rather than being added to it, so a malformed solution
/// never scores above a well-formed wrong one. Searching is not required at this stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stage2Reward;

/// The stage-2 reward of any solution that fails a format check.
pub const STAGE2_FORMAT_PENALTY: f32 = -2.0;

impl RewardFn for Stage2Reward {
    fn score(&self, solution: &str, golds: &[String]) -> RewardBreakdown {
        let (report, metrics) = inspect(solution, golds);
        let format_ok = report.all_ok();
        let (answer, penalty) = if format_ok {
            (metrics.f1 as f32, 0.0)
        } else {
            (0.0, STAGE2_FORMAT_PENALTY)
        };
        RewardBreakdown {
            total: answer + penalty,
            answer,
            retrieval_format: 0.0,
            answer_format: 0.0,
            penalty,
            format_ok,
            searches: report.searches,
            prediction: report.answer,
            metrics,
        }
    }

    fn name(&self) -> &'static str {
        "stage2"
    }
}

/// Which reward rule to use, as named in configs and on the command line (`stage1`,
/// `stage2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// [`Stage1Reward`]: learn to call search.
    Stage1,
    /// [`Stage2Reward`]: learn to answer.
    Stage2,
}

impl RewardKind {
    /// Every kind, in curriculum order.
    pub const ALL: [RewardKind; 2] = [RewardKind::Stage1, RewardKind::Stage2];

    /// Build the reward rule this kind names, with its default settings (the
    /// [`AnswerTerm::CoverEm`] answer term for stage 1).
    pub fn build(self) -> Box<dyn RewardFn> {
        self.build_with(AnswerTerm::default())
    }

    /// Build the reward rule this kind names; `answer` grades stage 1's answer part (stage 2
    /// always pays F1).
    pub fn build_with(self, answer: AnswerTerm) -> Box<dyn RewardFn> {
        match self {
            RewardKind::Stage1 => Box::new(Stage1Reward { answer }),
            RewardKind::Stage2 => Box::new(Stage2Reward),
        }
    }

    /// The name used in configs, equal to the built rule's [`RewardFn::name`].
    pub fn as_str(self) -> &'static str {
        match self {
            RewardKind::Stage1 => "stage1",
            RewardKind::Stage2 => "stage2",
        }
    }
}

impl fmt::Display for RewardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown reward name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reward `{0}`: expected `stage1` or `stage2`")]
pub struct UnknownRewardKind(pub String);

impl FromStr for RewardKind {
    type Err = UnknownRewardKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RewardKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownRewardKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correct, well-formed solution with one search.
    const GOOD: &str = "Let me search.<|begin_of_query|> Truman Sports Complex<|end_of_query|>\n\n\
        <|begin_of_documents|>\n(1)\"Arrowhead Stadium\" Arrowhead Stadium is an American \
        football stadium in Kansas City, Missouri, part of the Truman Sports Complex.\n\
        <|end_of_documents|>\n\nThe stadium is Arrowhead.</think>\n\
        <answer> Arrowhead Stadium </answer>";

    fn golds(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn arrowhead() -> Vec<String> {
        golds(&["Arrowhead Stadium"])
    }

    fn with_answer(answer: &str) -> String {
        GOOD.replace(
            "Arrowhead Stadium </answer>",
            &format!("{answer} </answer>"),
        )
    }

    /// The total equals the sum of the parts, for every rule.
    fn assert_parts_add_up(b: &RewardBreakdown) {
        let sum = b.answer + b.retrieval_format + b.answer_format + b.penalty;
        assert!((b.total - sum).abs() < 1e-6, "{b:?}");
    }

    #[test]
    fn stage1_pays_two_for_a_correct_well_formed_search() {
        let b = Stage1Reward::default().score(GOOD, &arrowhead());
        assert_eq!(
            (b.total, b.answer, b.retrieval_format, b.answer_format),
            (2.0, 1.0, 0.5, 0.5)
        );
        assert!(b.format_ok);
        assert_eq!(b.searches, 1);
        assert_eq!(b.prediction.as_deref(), Some("Arrowhead Stadium"));
        assert!(b.metrics.em && b.metrics.cover_em);
    }

    #[test]
    fn stage1_answer_part_uses_cover_em() {
        // Not an exact match, but every gold token is covered.
        let b = Stage1Reward::default().score(
            &with_answer("the Arrowhead Stadium in Kansas City"),
            &arrowhead(),
        );
        assert!(!b.metrics.em);
        assert_eq!(b.answer, 1.0);
        assert_eq!(b.total, 2.0);
    }

    #[test]
    fn stage1_wrong_answer_costs_one() {
        let b = Stage1Reward::default().score(&with_answer("Kauffman"), &arrowhead());
        assert_eq!((b.answer, b.total), (-1.0, 0.0));
    }

    #[test]
    fn stage1_missing_answer_costs_one() {
        let s = GOOD.replace("<answer> Arrowhead Stadium </answer>", "Arrowhead Stadium");
        let b = Stage1Reward::default().score(&s, &arrowhead());
        assert_eq!(b.prediction, None);
        assert_eq!(b.metrics, Metrics::default());
        assert_eq!(b.answer, -1.0);
        assert_eq!(b.answer_format, 0.0);
        assert_eq!(b.retrieval_format, 0.5);
        assert_eq!(b.total, -0.5);
    }

    #[test]
    fn stage1_retrieval_bonus_needs_a_search() {
        let s = "I recall it.</think>\n<answer> Arrowhead Stadium </answer>";
        let b = Stage1Reward::default().score(s, &arrowhead());
        assert!(b.format_ok);
        assert_eq!(b.searches, 0);
        assert_eq!(b.retrieval_format, 0.0);
        assert_eq!(b.total, 1.5);
    }

    #[test]
    fn stage1_retrieval_bonus_needs_a_valid_retrieval_format() {
        // The policy wrote its own documents block after the real one.
        let s = GOOD.replace(
            "The stadium is",
            "<|begin_of_documents|>\nmade up<|end_of_documents|>\n\nThe stadium is",
        );
        let b = Stage1Reward::default().score(&s, &arrowhead());
        assert_eq!(b.retrieval_format, 0.0);
        assert_eq!(b.answer_format, 0.5);
        assert_eq!(b.total, 1.5);
    }

    #[test]
    fn stage1_answer_format_bonus_covers_tags_language_and_role_words() {
        let too_long = with_answer("Arrowhead Stadium which is in Kansas City Missouri in the USA");
        let chinese = GOOD.replace("The stadium is Arrowhead.", "体育场是箭头体育场。");
        let role = GOOD.replace("The stadium is Arrowhead.", "\nUser: thanks\nAssistant: ok");
        let reopened = GOOD.replace("Let me search.", "<think>Let me search.");
        for s in [too_long, chinese, role, reopened] {
            let b = Stage1Reward::default().score(&s, &arrowhead());
            assert_eq!(b.answer_format, 0.0, "{s}");
            assert_eq!(b.retrieval_format, 0.5, "{s}");
            assert_eq!(b.answer, 1.0, "{s}");
            assert_eq!(b.total, 1.5, "{s}");
        }
    }

    #[test]
    fn stage2_pays_f1_when_the_format_holds() {
        let b = Stage2Reward.score(GOOD, &arrowhead());
        assert_eq!((b.total, b.answer, b.penalty), (1.0, 1.0, 0.0));

        // pred "arrowhead" vs gold "arrowhead stadium": p = 1, r = 0.5, F1 = 2/3.
        let b = Stage2Reward.score(&with_answer("Arrowhead"), &arrowhead());
        assert!((b.total - 2.0 / 3.0).abs() < 1e-6, "{}", b.total);

        let b = Stage2Reward.score(&with_answer("Kauffman"), &arrowhead());
        assert_eq!(b.total, 0.0);
    }

    #[test]
    fn stage2_takes_the_best_gold() {
        let b = Stage2Reward.score(&with_answer("Arrowhead"), &golds(&["Lambeau", "Arrowhead"]));
        assert_eq!(b.total, 1.0);
    }

    #[test]
    fn stage2_does_not_require_a_search() {
        let s = "I recall it.</think>\n<answer> Arrowhead Stadium </answer>";
        let b = Stage2Reward.score(s, &arrowhead());
        assert_eq!(b.total, 1.0);
    }

    #[test]
    fn stage2_format_failure_is_exactly_minus_two() {
        // A correct answer does not soften the penalty.
        let unclosed_query = GOOD.replace("The stadium is", "<|begin_of_query|> more");
        let chinese = GOOD.replace("The stadium is Arrowhead.", "是的");
        let no_answer = GOOD.replace("<answer> Arrowhead Stadium </answer>", "");
        for s in [unclosed_query, chinese, no_answer] {
            let b = Stage2Reward.score(&s, &arrowhead());
            assert!(!b.format_ok, "{s}");
            assert_eq!(b.total, -2.0, "{s}");
            assert_eq!((b.answer, b.penalty), (0.0, -2.0), "{s}");
        }
    }

    #[test]
    fn stage2_keeps_metrics_of_a_penalized_answer_for_logging() {
        let s = GOOD.replace("The stadium is Arrowhead.", "\nAssistant: Arrowhead.");
        let b = Stage2Reward.score(&s, &arrowhead());
        assert_eq!(b.total, -2.0);
        assert_eq!(b.metrics.f1, 1.0);
    }

    /// The contract every `RewardFn` must keep, run against every kind.
    #[test]
    fn every_rule_is_pure_and_its_parts_add_up() {
        let solutions = [
            GOOD.to_owned(),
            with_answer("Kauffman"),
            GOOD.replace("<answer> Arrowhead Stadium </answer>", ""),
            GOOD.replace("The stadium is", "Assistant: 体育场"),
            String::new(),
        ];
        for kind in RewardKind::ALL {
            let rule = kind.build();
            assert_eq!(rule.name(), kind.as_str());
            for s in &solutions {
                let first = rule.score(s, &arrowhead());
                assert_eq!(first, rule.score(s, &arrowhead()), "{kind}: {s}");
                assert_parts_add_up(&first);
                assert!(first.total >= -2.0 && first.total <= 2.0, "{first:?}");
            }
        }
    }

    #[test]
    fn reward_kind_reads_lowercase_names() {
        #[derive(Deserialize)]
        struct Config {
            reward: RewardKind,
        }
        let config: Config = serde_json::from_str(r#"{"reward": "stage2"}"#).unwrap();
        assert_eq!(config.reward, RewardKind::Stage2);
        assert_eq!(
            serde_json::to_string(&RewardKind::Stage1).unwrap(),
            r#""stage1""#
        );
        assert!(serde_json::from_str::<RewardKind>(r#""Stage1""#).is_err());

        assert_eq!("stage1".parse::<RewardKind>(), Ok(RewardKind::Stage1));
        let err = "stage3".parse::<RewardKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown reward `stage3`: expected `stage1` or `stage2`"
        );
        assert_eq!(RewardKind::Stage2.to_string(), "stage2");
    }

    #[test]
    fn reward_kind_builds_the_matching_rule() {
        let solution = with_answer("Kauffman");
        assert_eq!(
            RewardKind::Stage1
                .build()
                .score(&solution, &arrowhead())
                .total,
            0.0
        );
        assert_eq!(
            RewardKind::Stage2
                .build()
                .score(&solution, &arrowhead())
                .total,
            0.0
        );
        // Distinguish them on a solution where they disagree.
        assert_eq!(
            RewardKind::Stage1.build().score(GOOD, &arrowhead()).total,
            2.0
        );
        assert_eq!(
            RewardKind::Stage2.build().score(GOOD, &arrowhead()).total,
            1.0
        );
    }

    #[test]
    fn stage1_f1_answer_term_pays_partial_answers() {
        let f1 = Stage1Reward {
            answer: AnswerTerm::F1,
        };
        // Right: +1, the same as cover-EM.
        assert_eq!(f1.score(GOOD, &arrowhead()).answer, 1.0);
        // Half right ("Arrowhead" against "Arrowhead Stadium": P = 1, R = 1/2, F1 = 2/3).
        let partial = f1.score(&with_answer("Arrowhead"), &arrowhead());
        assert!(
            (partial.answer - (2.0 * 2.0 / 3.0 - 1.0)).abs() < 1e-6,
            "{partial:?}"
        );
        assert_parts_add_up(&partial);
        // Cover-EM grading gives the same partial answer the full −1.
        let cem = Stage1Reward::default().score(&with_answer("Arrowhead"), &arrowhead());
        assert_eq!(cem.answer, -1.0);
        // Wrong or missing: −1 either way.
        assert_eq!(
            f1.score(&with_answer("Kauffman"), &arrowhead()).answer,
            -1.0
        );
        assert_eq!(f1.score("", &arrowhead()).answer, -1.0);
        assert_eq!(
            RewardKind::Stage1
                .build_with(AnswerTerm::F1)
                .score(&with_answer("Arrowhead"), &arrowhead()),
            partial
        );
    }
}
