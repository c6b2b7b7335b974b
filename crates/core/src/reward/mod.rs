//! Answer metrics and the reward rules of R1-Searcher's two-stage curriculum (DESIGN §4).
//!
//! Three layers, each usable on its own:
//!
//! - [`metrics`]: answer normalization (HotpotQA/SQuAD) and EM, cover-EM, F1 against several
//!   gold answers. Evaluation ([`crate::eval`]) uses these directly.
//! - [`format`](mod@format): the format checks on a generated solution (retrieval markers,
//!   think/answer tags, answer length, language, role words), each reported separately in a
//!   [`FormatReport`], together with the extracted answer and the number of searches.
//! - [`rules`]: the [`RewardFn`] seam and its two rules, [`Stage1Reward`] (learn to search)
//!   and [`Stage2Reward`] (learn to answer), picked in configs by [`RewardKind`].
//! - [`step`]: the optional step-level retrieval reward (StepSearch): paid per search that
//!   brings a new gold support paragraph, charged per search that only repeats earlier ones.
//!
//! Everything here is a pure function of the solution text and the gold answers: no model, no
//! retriever, no I/O. That keeps rewards unit-testable rule by rule and lets the trainer score
//! samples from any thread.
//!
//! ```
//! use sleuth::reward::{RewardFn, RewardKind};
//!
//! let solution = "Let me search.<|begin_of_query|> Truman Sports Complex<|end_of_query|>\n\n\
//!     <|begin_of_documents|>\n(1)\"Arrowhead Stadium\" Arrowhead Stadium is in the Truman \
//!     Sports Complex.\n<|end_of_documents|>\n\nThe stadium is Arrowhead.</think>\n\
//!     <answer> Arrowhead Stadium </answer>";
//! let golds = vec!["Arrowhead Stadium".to_string()];
//!
//! let stage1 = RewardKind::Stage1.build().score(solution, &golds);
//! assert_eq!(stage1.total, 2.0); // +1 answer, +0.5 retrieval format, +0.5 answer format
//! let stage2 = RewardKind::Stage2.build().score(solution, &golds);
//! assert_eq!(stage2.total, 1.0); // F1 = 1, format holds
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod format;
pub mod metrics;
pub mod rules;
pub mod step;

pub use format::{extract_answer, is_cjk, FormatReport};
pub use metrics::{
    cover_exact_match, exact_match, f1_score, normalize_answer, score_answer, AnswerRules, Metrics,
};
pub use rules::{
    AnswerTerm, RewardBreakdown, RewardFn, RewardKind, Stage1Reward, Stage2Reward,
    UnknownRewardKind,
};
pub use step::{step_retrieval_reward, StepReward, StepRewardConfig};

/// What an RL episode is paid: the rule reward plus the step-level retrieval reward (off at
/// [`StepRewardConfig`]'s default). One value, so a trainer is never built with one and
/// left without the other.
pub struct Rewards {
    /// The rule reward ([`RewardKind`]'s stage rules).
    pub rule: Box<dyn RewardFn>,
    /// `[reward.step]`: paid per search that brings a new gold title ([`step_retrieval_reward`]).
    pub step: StepRewardConfig,
}

/// An episode's pay: the rule reward, the step-level retrieval reward, and their sum.
#[derive(Debug, Clone)]
pub struct Paid {
    /// The rule reward's parts (format, answer, penalty) and the answer metrics.
    pub rule: RewardBreakdown,
    /// The step-level retrieval reward's parts.
    pub step: StepReward,
    /// `rule.total + step.total`: what the advantage is computed from.
    pub total: f32,
}

impl Rewards {
    /// Scores one episode of a question: its final `solution` text against the gold
    /// `answers` (the rule reward), and the titles each of its searches returned, in order,
    /// against the question's gold `support_titles` (the step reward, paid only when the
    /// rule reward found the format valid).
    pub fn score(
        &self,
        solution: &str,
        searched_titles: &[Vec<String>],
        answers: &[String],
        support_titles: &[String],
    ) -> Paid {
        let rule = self.rule.score(solution, answers);
        let step =
            step_retrieval_reward(searched_titles, support_titles, rule.format_ok, &self.step);
        let total = rule.total + step.total;
        Paid { rule, step, total }
    }
}
