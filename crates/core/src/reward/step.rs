//! Step-level retrieval reward (StepSearch, Wang et al. 2025, arXiv 2505.15107), optional.
//!
//! Stage 1's format reward pays +0.5 for *any* well-formed search, so it cannot tell a second
//! hop that fetches the missing paragraph from one that repeats the first. For data with gold
//! support titles (HotpotQA `support_titles`), this reward looks at each search of an episode
//! in order:
//!
//! - **new evidence**: `+new_support` for each search whose documents bring at least one gold
//!   support title that no earlier search of the episode returned;
//! - **repetition**: `repeat` (a negative weight) for each search after the first whose
//!   documents were *all* already returned by earlier searches of the episode (it brought
//!   nothing new). A search that returned nothing is not a repeat.
//!
//! The sum is added to the stage-1 / stage-2 rule reward by the trainer and logged as its own
//! component (`reward_retrieval_step`). Questions without support titles get only the
//! repetition rule.
//!
//! **An evidence-recall reward, paid only for a finished episode.** The sum is paid only when
//! the episode finished with every format check holding (`finished_in_format`); otherwise it
//! is 0 and only the counts are kept for the logs. A search is paid only for a gold title not
//! yet returned, so once every support title has been found no further search earns anything:
//! the most the reward can pay is `new_support × |support titles|`. This follows David-GRPO's
//! evidence-recall reward (arXiv 2601.21699) and answers what docs/learning.md round 4 measured:
//! paid per search and whatever the episode's end, the step reward made up about half of the
//! reward mean, episodes that never answered still collected it, and groups differed in it as
//! often as in the answer. Documents are identified by their title; the corpus holds one paragraph
//! per title, as HotpotQA's does. Like the rules in [`super::rules`] this is a pure function
//! (of the searches' returned titles and the gold titles).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// `[reward.step]`: weights of the step-level retrieval reward. Both 0 (the default) turns it
/// off. Defaults stated once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepRewardConfig {
    /// Reward per search that brings a gold support title not returned before in the episode.
    /// Default 0.0 (off).
    pub new_support: f32,
    /// Reward (use a negative number) per search whose documents all repeat earlier searches'.
    /// Default 0.0 (off).
    pub repeat: f32,
}

impl Default for StepRewardConfig {
    fn default() -> Self {
        Self {
            new_support: 0.0,
            repeat: 0.0,
        }
    }
}

impl StepRewardConfig {
    /// Whether any weight is set.
    pub fn enabled(&self) -> bool {
        self.new_support != 0.0 || self.repeat != 0.0
    }
}

/// The step reward of one episode and what it counted.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StepReward {
    /// `new_support · searches_with_new_support + repeat · repeated_searches`.
    pub total: f32,
    /// Searches that brought a gold title not returned before.
    pub searches_with_new_support: usize,
    /// Searches whose documents all repeated earlier ones.
    pub repeated_searches: usize,
    /// Distinct gold support titles returned by any search of the episode.
    pub support_found: usize,
}

/// Scores the searches of one episode: `searches[i]` holds the titles the i-th search returned
/// (in rank order), `support` the gold titles (exact title match), `finished_in_format` whether
/// the episode closed `</answer>` with every format check holding
/// ([`crate::reward::FormatReport::all_ok`]). The counts are always filled; `total` is 0 unless
/// `finished_in_format`.
pub fn step_retrieval_reward(
    searches: &[Vec<String>],
    support: &[String],
    finished_in_format: bool,
    cfg: &StepRewardConfig,
) -> StepReward {
    let gold: HashSet<&str> = support.iter().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut gold_seen: HashSet<&str> = HashSet::new();
    let mut out = StepReward::default();
    for (i, titles) in searches.iter().enumerate() {
        let brings_new_gold = titles
            .iter()
            .any(|t| gold.contains(t.as_str()) && !gold_seen.contains(t.as_str()));
        let repeats =
            i > 0 && !titles.is_empty() && titles.iter().all(|t| seen.contains(t.as_str()));
        if brings_new_gold {
            out.searches_with_new_support += 1;
        }
        if repeats {
            out.repeated_searches += 1;
        }
        for t in titles {
            seen.insert(t);
            if gold.contains(t.as_str()) {
                gold_seen.insert(t);
            }
        }
    }
    out.support_found = gold_seen.len();
    if finished_in_format {
        out.total = cfg.new_support * out.searches_with_new_support as f32
            + cfg.repeat * out.repeated_searches as f32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| t.to_string()).collect()
    }

    const CFG: StepRewardConfig = StepRewardConfig {
        new_support: 0.5,
        repeat: -0.25,
    };

    #[test]
    fn each_search_bringing_new_gold_is_paid_once() {
        let gold = titles(&["A", "B"]);
        // Search 1 brings A, search 2 brings B: two paid searches.
        let r = step_retrieval_reward(
            &[titles(&["A", "x"]), titles(&["B", "y"])],
            &gold,
            true,
            &CFG,
        );
        assert_eq!((r.searches_with_new_support, r.repeated_searches), (2, 0));
        assert_eq!(r.support_found, 2);
        assert_eq!(r.total, 1.0);
        // Both golds in one search: paid once (per search, not per title).
        let r = step_retrieval_reward(&[titles(&["A", "B"])], &gold, true, &CFG);
        assert_eq!((r.searches_with_new_support, r.support_found), (1, 2));
        assert_eq!(r.total, 0.5);
    }

    #[test]
    fn gold_seen_before_is_not_new() {
        let gold = titles(&["A", "B"]);
        // The second search returns A again plus a new non-gold passage: no new gold, no repeat.
        let r = step_retrieval_reward(&[titles(&["A"]), titles(&["A", "z"])], &gold, true, &CFG);
        assert_eq!((r.searches_with_new_support, r.repeated_searches), (1, 0));
        assert_eq!(r.total, 0.5);
    }

    #[test]
    fn a_search_returning_only_earlier_documents_is_penalized() {
        let gold = titles(&["A", "B"]);
        let r = step_retrieval_reward(
            &[titles(&["x", "y"]), titles(&["y", "x"]), titles(&["x"])],
            &gold,
            true,
            &CFG,
        );
        assert_eq!((r.searches_with_new_support, r.repeated_searches), (0, 2));
        assert_eq!(r.total, -0.5);
        // The first search is never a repeat; an empty result is not one either.
        let r = step_retrieval_reward(&[titles(&["x"]), vec![]], &gold, true, &CFG);
        assert_eq!(r.repeated_searches, 0);
    }

    #[test]
    fn without_gold_titles_only_repetition_counts_and_zero_weights_are_off() {
        let r = step_retrieval_reward(&[titles(&["x"]), titles(&["x"])], &[], true, &CFG);
        assert_eq!((r.searches_with_new_support, r.repeated_searches), (0, 1));
        assert_eq!(r.total, -0.25);
        let off = StepRewardConfig::default();
        assert!(!off.enabled());
        let r = step_retrieval_reward(&[titles(&["A"])], &titles(&["A"]), true, &off);
        assert_eq!(r.total, 0.0);
        assert_eq!(r.searches_with_new_support, 1);
        // No search, nothing to pay.
        assert_eq!(
            step_retrieval_reward(&[], &titles(&["A"]), true, &CFG),
            StepReward::default()
        );
    }

    #[test]
    fn unfinished_or_malformed_episodes_earn_no_step_reward() {
        let gold = titles(&["A", "B"]);
        let searches = [titles(&["A"]), titles(&["B"])];
        let paid = step_retrieval_reward(&searches, &gold, true, &CFG);
        let unpaid = step_retrieval_reward(&searches, &gold, false, &CFG);
        assert_eq!(paid.total, 1.0);
        assert_eq!(unpaid.total, 0.0);
        // The counts are the same either way (they feed the logs).
        assert_eq!(
            (unpaid.searches_with_new_support, unpaid.support_found),
            (2, 2)
        );
        // Nor is a repeat charged to an episode that did not finish.
        let rep = [titles(&["x"]), titles(&["x"])];
        assert_eq!(step_retrieval_reward(&rep, &gold, false, &CFG).total, 0.0);
    }

    #[test]
    fn the_reward_stops_once_every_support_title_is_found() {
        let gold = titles(&["A", "B"]);
        // Both golds found by search 2; searches 3 and 4 bring new non-gold passages and the
        // golds again: nothing more is paid, so the total is capped at 2 × new_support.
        let searches = [
            titles(&["A", "x"]),
            titles(&["B", "y"]),
            titles(&["A", "B", "z"]),
            titles(&["w", "B"]),
        ];
        let r = step_retrieval_reward(&searches, &gold, true, &CFG);
        assert_eq!(r.searches_with_new_support, 2);
        assert_eq!(r.total, 2.0 * CFG.new_support);
        // More searching never raises it past that.
        let mut more = searches.to_vec();
        more.extend((0..4).map(|i| titles(&[&format!("n{i}"), "A"])));
        assert!(step_retrieval_reward(&more, &gold, true, &CFG).total <= 2.0 * CFG.new_support);
    }
}
