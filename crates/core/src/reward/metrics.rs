//! Answer metrics: exact match (EM), cover exact match (cover-EM, R1-Searcher's ACC_R) and
//! token-level F1, all on answers normalized the HotpotQA/SQuAD way (DESIGN §4).
//!
//! Every metric compares *normalized* strings, so the normalization is the contract that the
//! numbers in papers depend on. [`normalize_answer`] follows R1-Searcher's evaluation script
//! (`evaluation/metric_calc_rule.py`) step by step, in this order:
//!
//! 1. `_` becomes a space;
//! 2. lowercase (Unicode-aware, like Python's `str.lower`);
//! 3. every ASCII punctuation character (Python's `string.punctuation`) and the quote marks
//!    `‘` `’` `´` `` ` `` become a space;
//! 4. the articles `a`, `an`, `the` are dropped where they stand as whole words (a *word* is
//!    a maximal run of alphanumeric characters, which is what the regex `\b(a|an|the)\b`
//!    sees in Python);
//! 5. runs of whitespace collapse to one space, with none at either end.
//!
//! **Booleans.** The script maps the *raw* strings `"True"` and `"False"` — exactly those,
//! before any stripping or case folding — to `yes` / `no`, on prediction and gold alike, and
//! every metric here does the same by default ([`AnswerRules::R1Searcher`]), so `sleuth eval
//! --rescore` reproduces the script's figures on its published files (measured in
//! docs/evaluation.md). [`AnswerRules::Folded`] is the one departure we offer: it maps after
//! normalizing (`" False "`, `"true."` map too) and never counts an empty gold as covered;
//! `sleuth eval --answer-rules folded` selects it.
//!
//! Several gold answers are handled by taking each metric's maximum over the golds
//! ([`score_answer`]); an empty gold list scores zero everywhere.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Normalized answers that F1 treats as categorical: if either side is one of these and the
/// two sides differ, F1 is 0 (no partial credit for "yes it is" against "yes").
const CATEGORICAL: [&str; 3] = ["yes", "no", "noanswer"];

/// How answers that say true or false are matched against `yes` / `no` golds (and the one
/// other place the two rule sets differ: an empty gold). See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerRules {
    /// R1-Searcher's `metric_calc_rule.py`, exactly: only the raw strings `"True"` / `"False"`
    /// map to `yes` / `no`; an empty normalized gold is covered by an empty prediction.
    #[default]
    R1Searcher,
    /// sleuth's folded rules: `true` / `false` map after normalizing (`" False "`, `"TRUE."`);
    /// an empty normalized gold is never covered.
    Folded,
}

impl AnswerRules {
    /// Normalize `text` under these rules: [`normalize_answer`] plus the boolean mapping.
    pub fn normalize(self, text: &str) -> String {
        match self {
            AnswerRules::R1Searcher => normalize_answer(match text {
                "True" => "yes",
                "False" => "no",
                other => other,
            }),
            AnswerRules::Folded => {
                let normalized = normalize_answer(text);
                match normalized.as_str() {
                    "true" => "yes".to_owned(),
                    "false" => "no".to_owned(),
                    _ => normalized,
                }
            }
        }
    }

    /// Exact match: the normalized prediction equals the normalized gold.
    pub fn exact_match(self, prediction: &str, gold: &str) -> bool {
        self.normalize(prediction) == self.normalize(gold)
    }

    /// Cover exact match (R1-Searcher's ACC_R): every token of the normalized gold appears
    /// among the tokens of the normalized prediction, in any order and not necessarily
    /// contiguously (tokens split on single spaces, as the script's `split(" ")`).
    pub fn cover_exact_match(self, prediction: &str, gold: &str) -> bool {
        let gold = self.normalize(gold);
        if gold.is_empty() && self == AnswerRules::Folded {
            return false;
        }
        let prediction = self.normalize(prediction);
        let predicted: Vec<&str> = prediction.split(' ').collect();
        gold.split(' ').all(|token| predicted.contains(&token))
    }

    /// Token-level F1 between the normalized prediction and gold; see [`f1_score`].
    pub fn f1_score(self, prediction: &str, gold: &str) -> f64 {
        f1_normalized(&self.normalize(prediction), &self.normalize(gold))
    }

    /// The three metrics of one prediction, each the maximum over `golds` (the best EM and
    /// the best F1 may come from different golds). No golds gives all zero.
    pub fn score(self, prediction: &str, golds: &[String]) -> Metrics {
        golds.iter().fold(Metrics::default(), |best, gold| Metrics {
            em: best.em || self.exact_match(prediction, gold),
            cover_em: best.cover_em || self.cover_exact_match(prediction, gold),
            f1: best.f1.max(self.f1_score(prediction, gold)),
        })
    }
}

/// Normalize an answer the HotpotQA/SQuAD way; see the [module docs](self) for the steps.
/// The boolean mapping is not part of it: it belongs to the [`AnswerRules`].
///
/// ```
/// use sleuth::reward::normalize_answer;
/// assert_eq!(normalize_answer("The  Arrowhead_Stadium!"), "arrowhead stadium");
/// assert_eq!(normalize_answer("True."), "true");
/// ```
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.replace('_', " ").to_lowercase();
    let unpunctuated: String = lowered
        .chars()
        .map(|c| if is_punctuation(c) { ' ' } else { c })
        .collect();
    let without_articles = remove_articles(&unpunctuated);
    without_articles
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match under the default [`AnswerRules`] (R1-Searcher's).
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    AnswerRules::default().exact_match(prediction, gold)
}

/// Cover exact match under the default [`AnswerRules`] (R1-Searcher's).
pub fn cover_exact_match(prediction: &str, gold: &str) -> bool {
    AnswerRules::default().cover_exact_match(prediction, gold)
}

/// Token-level F1 under the default [`AnswerRules`] (R1-Searcher's), counting shared tokens
/// as a multiset (a token shared twice needs to appear twice on both sides).
///
/// If either side normalizes to `yes`, `no` or `noanswer` and the two sides differ, the score
/// is 0. Two empty sides also score 0 (no shared token).
pub fn f1_score(prediction: &str, gold: &str) -> f64 {
    AnswerRules::default().f1_score(prediction, gold)
}

/// F1 of two already-normalized answers.
fn f1_normalized(prediction: &str, gold: &str) -> f64 {
    let categorical = |s: &str| CATEGORICAL.contains(&s);
    if (categorical(prediction) || categorical(gold)) && prediction != gold {
        return 0.0;
    }
    let predicted: Vec<&str> = prediction.split_whitespace().collect();
    let expected: Vec<&str> = gold.split_whitespace().collect();
    let mut remaining: HashMap<&str, usize> = HashMap::new();
    for token in &expected {
        *remaining.entry(token).or_default() += 1;
    }
    let mut shared = 0usize;
    for token in &predicted {
        if let Some(count) = remaining.get_mut(token) {
            if *count > 0 {
                *count -= 1;
                shared += 1;
            }
        }
    }
    if shared == 0 {
        return 0.0;
    }
    let precision = shared as f64 / predicted.len() as f64;
    let recall = shared as f64 / expected.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The three answer metrics of one prediction, each the maximum over the gold answers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Exact match against at least one gold.
    pub em: bool,
    /// Cover exact match (ACC_R) against at least one gold.
    pub cover_em: bool,
    /// Best token-level F1 over the golds, in `[0, 1]`.
    pub f1: f64,
}

/// Score a prediction against several acceptable gold answers under the default
/// [`AnswerRules`] (R1-Searcher's), taking the best of each metric independently.
///
/// An empty `golds` slice gives [`Metrics::default`] (all zero).
pub fn score_answer(prediction: &str, golds: &[String]) -> Metrics {
    AnswerRules::default().score(prediction, golds)
}

/// ASCII punctuation (exactly Python's `string.punctuation`) plus the quote marks
/// `‘` (U+2018), `’` (U+2019) and `´` (U+00B4); `` ` `` is already ASCII.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || matches!(c, '\u{2018}' | '\u{2019}' | '\u{00B4}')
}

/// Replace every whole word `a`, `an` or `the` by a space. A word is a maximal run of
/// alphanumeric characters (or `_`), matching Python's `\b` boundaries on Unicode text.
fn remove_articles(text: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_word) {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find(|c: char| !is_word(c)).unwrap_or(after.len());
        let word = &after[..end];
        if matches!(word, "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalize_lowercases() {
        assert_eq!(normalize_answer("Kansas City CHIEFS"), "kansas city chiefs");
        assert_eq!(normalize_answer("ÉCOLE"), "école");
    }

    #[test]
    fn normalize_turns_underscore_into_space() {
        assert_eq!(normalize_answer("Arrowhead_Stadium"), "arrowhead stadium");
    }

    #[test]
    fn normalize_turns_ascii_punctuation_into_space() {
        assert_eq!(normalize_answer("St.Louis,Missouri"), "st louis missouri");
        assert_eq!(normalize_answer("(1960–present)"), "1960–present");
        assert_eq!(normalize_answer("O'Neil-Smith"), "o neil smith");
    }

    #[test]
    fn normalize_turns_typographic_quotes_into_space() {
        assert_eq!(normalize_answer("‘Hey’ Jude"), "hey jude");
        assert_eq!(normalize_answer("Rock´n`Roll"), "rock n roll");
        // Double typographic quotes are not in the list, as in the reference script.
        assert_eq!(normalize_answer("“Hey”"), "“hey”");
    }

    #[test]
    fn normalize_drops_articles_as_whole_words_only() {
        assert_eq!(normalize_answer("The Beatles"), "beatles");
        assert_eq!(normalize_answer("a Tale of an Apple"), "tale of apple");
        assert_eq!(normalize_answer("Theater Anatomy"), "theater anatomy");
        // Punctuation becomes a space first, so "a-ha" loses its "a".
        assert_eq!(normalize_answer("a-ha"), "ha");
        // A non-alphanumeric, non-punctuation character still bounds a word, as `\b` does.
        assert_eq!(normalize_answer("a–b"), "–b");
    }

    #[test]
    fn normalize_collapses_whitespace() {
        assert_eq!(normalize_answer("  New\t\nYork   City \n"), "new york city");
        assert_eq!(normalize_answer(" the "), "");
    }

    #[test]
    fn r1_searcher_rules_map_only_the_raw_strings_true_and_false() {
        let r1 = AnswerRules::R1Searcher;
        assert_eq!(r1.normalize("True"), "yes");
        assert_eq!(r1.normalize("False"), "no");
        // No stripping or case folding before the mapping, as in metric_calc_rule.py: this is
        // the row of R1-Searcher's hotpotqa_qwen.jsonl whose prediction is " False ".
        assert_eq!(r1.normalize(" False "), "false");
        assert_eq!(r1.normalize("TRUE."), "true");
        assert!(!exact_match(" False ", "no"));
        assert_eq!(f1_score(" False ", "no"), 0.0);
        assert!(exact_match("True", "yes"));
        assert!(exact_match("False", "No."));
    }

    #[test]
    fn folded_rules_map_true_false_after_normalizing() {
        let folded = AnswerRules::Folded;
        assert_eq!(folded.normalize("True"), "yes");
        assert_eq!(folded.normalize(" FALSE. "), "no");
        assert_eq!(folded.normalize("the true"), "yes");
        // Only the whole string maps, not a token inside a longer answer.
        assert_eq!(folded.normalize("True Detective"), "true detective");
        assert!(folded.exact_match(" False ", "no"));
        assert_eq!(folded.f1_score(" False ", "no"), 1.0);
    }

    #[test]
    fn exact_match_compares_normalized_strings() {
        assert!(exact_match("the Arrowhead Stadium.", "Arrowhead stadium"));
        assert!(!exact_match("Arrowhead", "Arrowhead Stadium"));
    }

    #[test]
    fn cover_em_needs_every_gold_token_in_any_order() {
        assert!(cover_exact_match(
            "It is Arrowhead Stadium in Kansas City",
            "Arrowhead Stadium"
        ));
        assert!(cover_exact_match("Stadium Arrowhead", "Arrowhead Stadium"));
        assert!(!cover_exact_match("Arrowhead", "Arrowhead Stadium"));
        // Tokens, not substrings: "stadiums" does not cover "stadium".
        assert!(!cover_exact_match(
            "arrowhead stadiums",
            "Arrowhead Stadium"
        ));
    }

    #[test]
    fn an_empty_gold_is_covered_only_as_the_script_covers_it() {
        // R1-Searcher: "".split(" ") == [""], so an empty gold is covered exactly when the
        // prediction normalizes to nothing too.
        assert!(cover_exact_match("", "The"));
        assert!(!cover_exact_match("anything", "The"));
        // Folded: never covered.
        assert!(!AnswerRules::Folded.cover_exact_match("", ""));
        assert!(!AnswerRules::Folded.cover_exact_match("anything", "The"));
    }

    #[test]
    fn f1_counts_shared_tokens_as_a_multiset() {
        // pred: new york new york (4), gold: new york city (3); shared: new, york = 2.
        let f1 = f1_score("New York New York", "New York City");
        let (p, r) = (2.0 / 4.0, 2.0 / 3.0);
        assert!((f1 - 2.0 * p * r / (p + r)).abs() < 1e-12, "{f1}");
        assert_eq!(f1_score("Arrowhead Stadium", "the arrowhead stadium"), 1.0);
        assert_eq!(f1_score("Lambeau Field", "Arrowhead Stadium"), 0.0);
        assert_eq!(f1_score("", ""), 0.0);
    }

    #[test]
    fn f1_is_zero_when_a_categorical_side_differs() {
        // Partial overlap would give 0.5 without the rule.
        assert_eq!(f1_score("yes it is", "yes"), 0.0);
        assert_eq!(f1_score("no", "no way"), 0.0);
        assert_eq!(f1_score("noanswer", "noanswer today"), 0.0);
        assert_eq!(f1_score("Yes.", "yes"), 1.0);
        assert_eq!(f1_score("True", "yes"), 1.0);
        assert_eq!(f1_score("False", "yes"), 0.0);
    }

    #[test]
    fn score_answer_takes_the_max_over_golds_per_metric() {
        let m = score_answer(
            "Arrowhead Stadium in Kansas City",
            &golds(&["Arrowhead Stadium, Missouri", "Kansas"]),
        );
        // EM from neither; cover-EM only from "Kansas" (F1 = 2 * 0.2 * 1 / 1.2 = 1/3);
        // best F1 from the first gold, which is not covered: p = 2/5, r = 2/3, F1 = 1/2.
        assert!(!m.em);
        assert!(m.cover_em);
        assert!((m.f1 - 0.5).abs() < 1e-12, "{}", m.f1);

        let m = score_answer("Arrowhead", &golds(&["Lambeau Field", "arrowhead"]));
        assert_eq!(
            m,
            Metrics {
                em: true,
                cover_em: true,
                f1: 1.0
            }
        );
    }

    #[test]
    fn score_answer_with_no_golds_is_zero() {
        assert_eq!(score_answer("Arrowhead", &[]), Metrics::default());
    }
}
