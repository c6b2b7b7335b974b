//! Text analysis shared across the pipeline: the English stop-word list and the term splitter
//! that graph builders (KG keywords), graph retrievers (query-to-description matching), the
//! TF-IDF embedder and retrieval evaluation all use. Kept here, at the bottom of the
//! dependency order, so none of those modules imports another for it.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// English stop words: articles, auxiliaries, pronouns, prepositions and question words,
/// which carry no topic in a QA question. Dropped by retrieval evaluation's
/// `QueryRewrite::DropStopWords` and by [`text_terms`].
pub const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "at", "by", "for", "with", "about",
    "against", "between", "into", "through", "during", "before", "after", "above", "below", "to",
    "from", "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then",
    "once", "here", "there", "when", "where", "why", "how", "all", "any", "both", "each", "few",
    "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so",
    "than", "too", "very", "can", "will", "just", "should", "now", "is", "are", "was", "were",
    "be", "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "i", "me",
    "my", "we", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they",
    "them", "their", "what", "which", "who", "whom", "whose", "this", "that", "these", "those",
    "as", "until", "while", "s",
];

/// The lowercased terms of `text` used for RKG keywords and for matching queries against
/// descriptions: alphanumeric words of at least two characters that are not English stop words
/// ([`STOP_WORDS`]), in text order, repeats kept.
pub fn text_terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
}
