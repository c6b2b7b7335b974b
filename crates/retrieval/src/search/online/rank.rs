//! In-memory BM25 over the handful of passages fetched for one query.
//!
//! The passages of one web search number in the tens to hundreds and live only for that query,
//! so a tantivy index would be all overhead: this is the textbook formula over lowercase
//! alphanumeric words, with statistics from the fetched passages themselves,
//!
//! ```text
//! score(d) = Σ_{t ∈ q} idf(t) · tf(t,d)·(k1+1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl))
//! idf(t)   = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))
//! ```
//!
//! with `k1 = 1.2`, `b = 0.75` (tantivy's constants, so local and online scores behave alike).
//! Title words count as passage words. Distinct query words count once.

use std::collections::{HashMap, HashSet};

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Lowercase alphanumeric words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// BM25 scores of `docs` for `query`: `(index, score)` with a positive score, best first (ties
/// in document order).
pub fn rank(query: &str, docs: &[String]) -> Vec<(usize, f32)> {
    let query: Vec<String> = {
        let mut seen = HashSet::new();
        words(query)
            .into_iter()
            .filter(|w| seen.insert(w.clone()))
            .collect()
    };
    if query.is_empty() || docs.is_empty() {
        return Vec::new();
    }
    let tokenized: Vec<Vec<String>> = docs.iter().map(|d| words(d)).collect();
    let n = docs.len() as f64;
    let avgdl = (tokenized.iter().map(Vec::len).sum::<usize>() as f64 / n).max(1.0);
    let mut df: HashMap<&str, usize> = HashMap::new();
    for doc in &tokenized {
        let distinct: HashSet<&str> = doc.iter().map(String::as_str).collect();
        for t in distinct {
            *df.entry(t).or_default() += 1;
        }
    }
    let mut scored: Vec<(usize, f32)> = tokenized
        .iter()
        .enumerate()
        .filter_map(|(i, doc)| {
            let mut tf: HashMap<&str, usize> = HashMap::new();
            for t in doc {
                *tf.entry(t.as_str()).or_default() += 1;
            }
            let len = doc.len() as f64;
            let score: f64 = query
                .iter()
                .filter_map(|t| {
                    let f = *tf.get(t.as_str())? as f64;
                    let d = *df.get(t.as_str())? as f64;
                    let idf = (1.0 + (n - d + 0.5) / (d + 0.5)).ln();
                    Some(idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * len / avgdl)))
                })
                .sum();
            (score > 0.0).then_some((i, score as f32))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_matching_passages_first() {
        let docs = vec![
            "Paris is the capital of France".to_string(),
            "Berlin is the capital of Germany".to_string(),
            "Nothing relevant here".to_string(),
        ];
        let r = rank("capital of France?", &docs);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(r[0].1 > r[1].1);
        assert!(rank("", &docs).is_empty());
        assert!(rank("!!! ???", &docs).is_empty());
    }
}
