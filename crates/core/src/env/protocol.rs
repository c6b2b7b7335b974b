//! Protocol tags and the text operations on them (DESIGN §3): the one place the tags are
//! written. The environment inserts documents with them and the reward rules
//! (`crate::reward::format`) check the policy's text against the same constants, so changing a
//! tag here changes both.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::search::Hit;

/// Opens a search query written by the policy.
pub const BEGIN_QUERY: &str = "<|begin_of_query|>";
/// Closes a search query; generation stops here so the environment can search.
pub const END_QUERY: &str = "<|end_of_query|>";
/// Opens the inserted documents.
pub const BEGIN_DOCS: &str = "<|begin_of_documents|>";
/// Closes the inserted documents.
pub const END_DOCS: &str = "<|end_of_documents|>";
/// Opens the final answer.
pub const BEGIN_ANSWER: &str = "<answer>";
/// Closes the final answer; the episode ends here.
pub const END_ANSWER: &str = "</answer>";
/// Opens the reasoning; the prompt writes it (`Assistant: <think>`), never the policy.
pub const BEGIN_THINK: &str = "<think>";
/// Closes the reasoning.
pub const END_THINK: &str = "</think>";
/// A well-formed document block's opening as it appears in an episode: the policy's
/// [`END_QUERY`], then the start of [`documents_block`].
pub const DOCUMENTS_OPENING: &str = "<|end_of_query|>\n\n<|begin_of_documents|>\n";
/// A well-formed document block's closing, the end of [`documents_block`].
pub const DOCUMENTS_CLOSING: &str = "<|end_of_documents|>\n\n";
/// Prediction recorded when the search budget is exceeded.
pub const NO_ANSWER: &str = "I don't know.";

/// Extracts the query from a generated segment that ended with [`END_QUERY`]: the text after
/// the last [`BEGIN_QUERY`], with double/single quotes, tabs and `...` removed and whitespace
/// trimmed (R1-Searcher's cleaning). `None` when there is no opening tag or nothing is left.
pub fn extract_query(segment: &str) -> Option<String> {
    let body = segment.strip_suffix(END_QUERY).unwrap_or(segment);
    let start = body.rfind(BEGIN_QUERY)? + BEGIN_QUERY.len();
    let q = body[start..]
        .replace("...", " ")
        .replace(['"', '\'', '\t'], " ");
    let q = q.split_whitespace().collect::<Vec<_>>().join(" ");
    (!q.is_empty()).then_some(q)
}

/// The text inserted after a query: `\n\n<|begin_of_documents|>\n(1)doc\n(2)doc\n…
/// <|end_of_documents|>\n\n`, or `None` in place of the list when nothing was found. The
/// policy already wrote `<|end_of_query|>`, so the block starts with the blank line.
/// Each passage is rendered `"title" text` and cut to `max_words` words (0 = no cut).
pub fn documents_block(hits: &[Hit], max_words: usize) -> String {
    let mut s = DOCUMENTS_OPENING
        .strip_prefix(END_QUERY)
        .unwrap_or(DOCUMENTS_OPENING)
        .to_string();
    if hits.is_empty() {
        s.push_str("None\n");
    }
    for (i, h) in hits.iter().enumerate() {
        let doc = h.render();
        let doc = if max_words > 0 {
            let words: Vec<&str> = doc.split_whitespace().take(max_words).collect();
            words.join(" ")
        } else {
            doc
        };
        s.push_str(&format!("({}){}\n", i + 1, doc));
    }
    s.push_str(DOCUMENTS_CLOSING);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_the_environment_inserts_is_the_block_the_reward_accepts() {
        assert_eq!(DOCUMENTS_OPENING, format!("{END_QUERY}\n\n{BEGIN_DOCS}\n"));
        assert_eq!(DOCUMENTS_CLOSING, format!("{END_DOCS}\n\n"));
        for hits in [
            vec![],
            vec![Hit {
                id: "1".into(),
                title: "T".into(),
                text: "x y".into(),
                score: 1.0,
            }],
        ] {
            let episode = format!("{END_QUERY}{}", documents_block(&hits, 0));
            assert!(episode.starts_with(DOCUMENTS_OPENING), "{episode:?}");
            assert!(episode.ends_with(DOCUMENTS_CLOSING), "{episode:?}");
        }
    }

    #[test]
    fn query_is_text_after_last_open_tag_cleaned() {
        let seg = "think <|begin_of_query|> old <|begin_of_query|> \"Truman\tSports\" Complex... <|end_of_query|>";
        assert_eq!(extract_query(seg).as_deref(), Some("Truman Sports Complex"));
        assert_eq!(extract_query("no tag here<|end_of_query|>"), None);
        assert_eq!(
            extract_query("<|begin_of_query|> \"\" ... <|end_of_query|>"),
            None
        );
    }

    #[test]
    fn documents_block_is_well_formed() {
        let hits = vec![Hit {
            id: "1".into(),
            title: "Arrowhead Stadium".into(),
            text: "a stadium in Kansas City Missouri".into(),
            score: 1.0,
        }];
        let block = documents_block(&hits, 4);
        assert_eq!(
            block,
            "\n\n<|begin_of_documents|>\n(1)\"Arrowhead Stadium\" a stadium\n<|end_of_documents|>\n\n"
        );
        let text = format!("q{END_QUERY}{}", documents_block(&[], 0));
        assert!(text.contains(
            "<|end_of_query|>\n\n<|begin_of_documents|>\nNone\n<|end_of_documents|>\n\n"
        ));
    }
}
