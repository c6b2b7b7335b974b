//! Format checks on a generated solution (DESIGN §4).
//!
//! The *solution* is everything after the prompt's `Assistant: <think>`: the policy's
//! reasoning, its queries, the document blocks the environment inserted, and the final
//! `</think>` and `<answer> … </answer>`. [`FormatReport::check`] runs every check once and
//! keeps each verdict separately, so the reward rules can weigh them differently (stage 1 pays
//! for retrieval format and answer format separately; stage 2 only asks whether all hold) and
//! training logs can report per-check rates.
//!
//! # Document blocks are not the policy's text
//!
//! A *document block* runs from `<|begin_of_documents|>` to the next `<|end_of_documents|>`,
//! markers included. The environment wrote it from retrieved passages, which may hold any
//! language, the word "Assistant", even literal tags. So every check about what the policy
//! *wrote* (think/answer tags, answer extraction, CJK characters, role words) looks only at the
//! text outside closed document blocks. An unclosed `<|begin_of_documents|>` is not a block:
//! its tail stays in view (and the retrieval check fails anyway). Only the retrieval check,
//! whose job is to count the markers, reads the whole text.
//!
//! # The checks
//!
//! - **retrieval format**: the counts of `<|begin_of_query|>`, `<|end_of_query|>`,
//!   `<|begin_of_documents|>`, `<|end_of_documents|>`, of well-formed openings
//!   `<|end_of_query|>\n\n<|begin_of_documents|>\n` and of well-formed closings
//!   `<|end_of_documents|>\n\n` are all equal. A solution without any search passes (all zero);
//!   stage 1 asks for a search separately.
//! - **think/answer format**: no `<think>` (the prompt opened it), exactly one `</think>`,
//!   exactly one `<answer>` and one `</answer>` with the opening first; the answer holds no
//!   query or document marker and is at most [`MAX_ANSWER_WORDS`] whitespace-separated words.
//! - **language**: no CJK character ([`is_cjk`]) outside document blocks.
//! - **role words**: none of [`ROLE_WORDS`] outside document blocks. They are the turn markers
//!   `Assistant:` / `User:` (and their lowercase forms), matched case-sensitively with the
//!   colon, because what the check is after is a policy that starts writing the next dialogue
//!   turn. The bare word is allowed, so "Assistant Secretary of the Navy" is fine.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde::{Deserialize, Serialize};

use crate::env::protocol::{
    BEGIN_ANSWER, BEGIN_DOCS, BEGIN_QUERY, BEGIN_THINK, DOCUMENTS_CLOSING, DOCUMENTS_OPENING,
    END_ANSWER, END_DOCS, END_QUERY, END_THINK,
};

/// The longest accepted answer, in whitespace-separated words.
pub const MAX_ANSWER_WORDS: usize = 10;
/// Dialogue turn markers that must not appear in the policy's own text (case-sensitive).
pub const ROLE_WORDS: [&str; 4] = ["Assistant:", "assistant:", "User:", "user:"];

const PROTOCOL_MARKERS: [&str; 4] = [BEGIN_QUERY, END_QUERY, BEGIN_DOCS, END_DOCS];

/// The verdict of every format check on one solution, plus what the checks extracted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FormatReport {
    /// Query and document markers, well-formed openings and closings all have equal counts.
    pub retrieval_format_ok: bool,
    /// No `<think>`, one `</think>`, one `<answer>` before one `</answer>`, and the answer is
    /// marker-free and at most [`MAX_ANSWER_WORDS`] words.
    pub think_answer_format_ok: bool,
    /// No CJK character outside document blocks.
    pub language_ok: bool,
    /// No [`ROLE_WORDS`] outside document blocks.
    pub no_role_words: bool,
    /// Number of searches: occurrences of `<|begin_of_query|>`.
    pub searches: usize,
    /// The text inside the last complete `<answer> … </answer>` outside document blocks,
    /// trimmed; `None` when there is none.
    pub answer: Option<String>,
}

impl FormatReport {
    /// Run every check on a solution (the text after `Assistant: <think>`).
    pub fn check(solution: &str) -> Self {
        let policy_text = outside_documents(solution);
        let answer = extract_answer(&policy_text);
        let answer_ok = answer.is_some_and(|a| {
            !PROTOCOL_MARKERS.iter().any(|m| a.contains(m))
                && a.split_whitespace().count() <= MAX_ANSWER_WORDS
        });
        let think_answer_format_ok = policy_text.matches(BEGIN_THINK).count() == 0
            && policy_text.matches(END_THINK).count() == 1
            && policy_text.matches(BEGIN_ANSWER).count() == 1
            && policy_text.matches(END_ANSWER).count() == 1
            && answer_ok;

        let searches = solution.matches(BEGIN_QUERY).count();
        let retrieval_format_ok = [
            END_QUERY,
            BEGIN_DOCS,
            END_DOCS,
            DOCUMENTS_OPENING,
            DOCUMENTS_CLOSING,
        ]
        .iter()
        .all(|marker| solution.matches(marker).count() == searches);

        FormatReport {
            retrieval_format_ok,
            think_answer_format_ok,
            language_ok: !policy_text.chars().any(is_cjk),
            no_role_words: !ROLE_WORDS.iter().any(|w| policy_text.contains(w)),
            searches,
            answer: answer.map(str::to_owned),
        }
    }

    /// The answer-side format: think/answer tags, language and role words. Stage 1 pays its
    /// answer-format bonus on this.
    pub fn answer_format_ok(&self) -> bool {
        self.think_answer_format_ok && self.language_ok && self.no_role_words
    }

    /// Every check holds (retrieval format and [`answer_format_ok`](Self::answer_format_ok)).
    /// Says nothing about whether a search was made.
    pub fn all_ok(&self) -> bool {
        self.retrieval_format_ok && self.answer_format_ok()
    }
}

/// The text inside the last complete `<answer> … </answer>` pair, trimmed: the last
/// `</answer>` and the last `<answer>` before it. `None` when there is no such pair.
///
/// This reads the text as given; [`FormatReport::check`] applies it to the text outside
/// document blocks.
pub fn extract_answer(text: &str) -> Option<&str> {
    let close = text.rfind(END_ANSWER)?;
    let open = text[..close].rfind(BEGIN_ANSWER)?;
    Some(text[open + BEGIN_ANSWER.len()..close].trim())
}

/// Whether a character belongs to a CJK script or CJK punctuation block, by code point range:
/// unified and compatibility ideographs (all extensions), radicals, CJK symbols and
/// punctuation, kana, Bopomofo, Hangul, and half/full-width forms.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF       // Hangul Jamo
        | 0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3000..=0x303F     // CJK symbols and punctuation (、。「」)
        | 0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3100..=0x312F     // Bopomofo
        | 0x3130..=0x318F     // Hangul compatibility Jamo
        | 0x31A0..=0x31FF     // Bopomofo extended, CJK strokes, Katakana extensions
        | 0x3200..=0x33FF     // enclosed CJK letters, CJK compatibility
        | 0x3400..=0x4DBF     // CJK unified ideographs extension A
        | 0x4E00..=0x9FFF     // CJK unified ideographs
        | 0xA960..=0xA97F     // Hangul Jamo extended-A
        | 0xAC00..=0xD7FF     // Hangul syllables, Jamo extended-B
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0xFE30..=0xFE4F     // CJK compatibility forms
        | 0xFF00..=0xFFEF     // half-width and full-width forms (，：！)
        | 0x20000..=0x323AF   // ideograph extensions B–H, compatibility supplement
    )
}

/// The solution with every closed document block (markers included) replaced by a newline.
fn outside_documents(solution: &str) -> String {
    let mut out = String::with_capacity(solution.len());
    let mut rest = solution;
    while let Some(start) = rest.find(BEGIN_DOCS) {
        let after_open = &rest[start + BEGIN_DOCS.len()..];
        let Some(end) = after_open.find(END_DOCS) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push('\n');
        rest = &after_open[end + END_DOCS.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One search, documents inserted by the environment, a short answer.
    const GOOD: &str = "Let me search.<|begin_of_query|> Truman Sports Complex<|end_of_query|>\n\n\
        <|begin_of_documents|>\n(1)\"Arrowhead Stadium\" Arrowhead Stadium is an American \
        football stadium in Kansas City, Missouri, part of the Truman Sports Complex.\n\
        (2)\"Kauffman Stadium\" Kauffman Stadium is a baseball park in the Truman Sports \
        Complex.\n<|end_of_documents|>\n\nThe stadium is Arrowhead.</think>\n\
        <answer> Arrowhead Stadium </answer>";

    fn with_documents(docs: &str) -> String {
        format!(
            "Let me search.<|begin_of_query|> Arrowhead<|end_of_query|>\n\n\
             <|begin_of_documents|>\n{docs}\n<|end_of_documents|>\n\nSo it is Arrowhead.</think>\n\
             <answer> Arrowhead Stadium </answer>"
        )
    }

    #[test]
    fn a_well_formed_solution_passes_every_check() {
        let report = FormatReport::check(GOOD);
        assert_eq!(
            report,
            FormatReport {
                retrieval_format_ok: true,
                think_answer_format_ok: true,
                language_ok: true,
                no_role_words: true,
                searches: 1,
                answer: Some("Arrowhead Stadium".to_owned()),
            }
        );
        assert!(report.all_ok());
    }

    #[test]
    fn retrieval_counts_queries_and_documents() {
        let two = GOOD.replace(
            "The stadium is",
            "Check again.<|begin_of_query|> Arrowhead Stadium owner<|end_of_query|>\n\n\
             <|begin_of_documents|>\nNone<|end_of_documents|>\n\nThe stadium is",
        );
        let report = FormatReport::check(&two);
        assert!(report.retrieval_format_ok);
        assert_eq!(report.searches, 2);
    }

    #[test]
    fn retrieval_fails_on_an_unanswered_query() {
        // A query closed but no documents inserted.
        let s = "<|begin_of_query|> x<|end_of_query|> ok</think>\n<answer> y </answer>";
        let report = FormatReport::check(s);
        assert!(!report.retrieval_format_ok);
        assert_eq!(report.searches, 1);
    }

    #[test]
    fn retrieval_fails_on_documents_written_by_the_policy() {
        let s = GOOD.replace(
            "The stadium is",
            "<|begin_of_documents|>\nfake<|end_of_documents|>\n\nThe stadium is",
        );
        assert!(!FormatReport::check(&s).retrieval_format_ok);
    }

    #[test]
    fn retrieval_fails_on_a_malformed_opening_or_closing() {
        let bad_open = GOOD.replace("<|end_of_query|>\n\n", "<|end_of_query|>\n");
        assert!(!FormatReport::check(&bad_open).retrieval_format_ok);
        let bad_close = GOOD.replace("<|end_of_documents|>\n\n", "<|end_of_documents|>The");
        assert!(!FormatReport::check(&bad_close).retrieval_format_ok);
    }

    #[test]
    fn no_search_is_a_valid_retrieval_format() {
        let report = FormatReport::check("I know this.</think>\n<answer> Paris </answer>");
        assert!(report.retrieval_format_ok);
        assert_eq!(report.searches, 0);
        assert!(report.all_ok());
    }

    #[test]
    fn think_tags_need_no_open_and_one_close() {
        let reopened = GOOD.replace("Let me search.", "<think>Let me search.");
        assert!(!FormatReport::check(&reopened).think_answer_format_ok);
        let unclosed = GOOD.replace("</think>", "");
        assert!(!FormatReport::check(&unclosed).think_answer_format_ok);
        let twice = GOOD.replace("</think>", "</think></think>");
        assert!(!FormatReport::check(&twice).think_answer_format_ok);
    }

    #[test]
    fn answer_tags_need_exactly_one_pair_in_order() {
        let none = GOOD.replace("<answer> Arrowhead Stadium </answer>", "Arrowhead");
        let report = FormatReport::check(&none);
        assert!(!report.think_answer_format_ok);
        assert_eq!(report.answer, None);

        let two = format!("{GOOD}\n<answer> Kauffman </answer>");
        let report = FormatReport::check(&two);
        assert!(!report.think_answer_format_ok);
        // The last answer is still extracted for scoring.
        assert_eq!(report.answer.as_deref(), Some("Kauffman"));

        let reversed = GOOD.replace(
            "<answer> Arrowhead Stadium </answer>",
            "</answer> Arrowhead Stadium <answer>",
        );
        let report = FormatReport::check(&reversed);
        assert!(!report.think_answer_format_ok);
        assert_eq!(report.answer, None);
    }

    #[test]
    fn answer_must_hold_no_protocol_marker() {
        let s = "Hmm.</think>\n<answer> <|begin_of_query|> Arrowhead </answer>";
        let report = FormatReport::check(s);
        assert!(!report.think_answer_format_ok);
        assert_eq!(
            report.answer.as_deref(),
            Some("<|begin_of_query|> Arrowhead")
        );
    }

    #[test]
    fn answer_may_have_ten_words_but_not_eleven() {
        let ten =
            "Ok.</think>\n<answer> one two three four five six seven eight nine ten </answer>";
        assert!(FormatReport::check(ten).think_answer_format_ok);
        let eleven = ten.replace("ten", "ten eleven");
        assert!(!FormatReport::check(&eleven).think_answer_format_ok);
    }

    #[test]
    fn cjk_outside_documents_fails_language_check() {
        for text in ["体育场", "アロー", "경기장", "，"] {
            let s = GOOD.replace("The stadium is Arrowhead.", text);
            let report = FormatReport::check(&s);
            assert!(!report.language_ok, "{text}");
            assert!(!report.all_ok());
        }
        assert!(!FormatReport::check("Ok.</think>\n<answer> 东京 </answer>").language_ok);
    }

    #[test]
    fn cjk_inside_documents_is_allowed() {
        let report = FormatReport::check(&with_documents("(1)\"東京\" 東京都は日本の首都です。"));
        assert!(report.language_ok);
        assert!(report.all_ok());
    }

    #[test]
    fn accented_latin_text_is_not_cjk() {
        let s = GOOD.replace("The stadium is Arrowhead.", "Café Zürich – “déjà vu”.");
        assert!(FormatReport::check(&s).language_ok);
    }

    #[test]
    fn role_turn_markers_fail_case_sensitively() {
        for text in [
            "\nAssistant: sure",
            "\nUser: and",
            "assistant: ok",
            "user: hi",
        ] {
            let s = GOOD.replace("The stadium is Arrowhead.", text);
            let report = FormatReport::check(&s);
            assert!(!report.no_role_words, "{text:?}");
            assert!(!report.all_ok());
        }
        // The bare word and other casings are prose, not a turn marker.
        for text in ["He was Assistant Secretary of the Navy.", "ASSISTANT: no"] {
            let s = GOOD.replace("The stadium is Arrowhead.", text);
            assert!(FormatReport::check(&s).no_role_words, "{text:?}");
        }
    }

    #[test]
    fn role_words_inside_documents_are_allowed() {
        let report =
            FormatReport::check(&with_documents("(1)\"Chatbot\" User: hi Assistant: hello"));
        assert!(report.no_role_words);
        assert!(report.all_ok());
    }

    #[test]
    fn tags_inside_documents_do_not_count() {
        let report = FormatReport::check(&with_documents(
            "(1)\"HTML\" Tags like <think> and <answer>42</answer> are examples.",
        ));
        assert!(report.think_answer_format_ok);
        assert_eq!(report.answer.as_deref(), Some("Arrowhead Stadium"));
    }

    #[test]
    fn an_unclosed_document_block_stays_in_view() {
        let s = "Hmm<|begin_of_documents|>\n体育场</think>\n<answer> x </answer>";
        let report = FormatReport::check(s);
        assert!(!report.language_ok);
        assert!(!report.retrieval_format_ok);
    }

    #[test]
    fn extract_answer_takes_the_last_complete_pair() {
        assert_eq!(
            extract_answer("<answer> a </answer><answer>b</answer>"),
            Some("b")
        );
        assert_eq!(extract_answer("<answer>a</answer> <answer>b"), Some("a"));
        assert_eq!(
            extract_answer("<answer>\n Paris \n</answer>"),
            Some("Paris")
        );
        assert_eq!(extract_answer("no answer"), None);
        assert_eq!(extract_answer("</answer><answer>"), None);
    }

    #[test]
    fn is_cjk_covers_the_main_blocks_only() {
        for c in ['中', '㐀', 'あ', 'ア', 'ㄅ', '한', '，', '。', '𠀀'] {
            assert!(is_cjk(c), "{c}");
        }
        for c in ['a', 'é', 'ß', 'Ж', 'ا', '–', '“', '€'] {
            assert!(!is_cjk(c), "{c}");
        }
    }
}
