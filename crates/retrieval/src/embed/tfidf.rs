//! Hashed TF-IDF: the tree's embedder that needs no model file (the fallback issue 4 names next
//! to all-MiniLM-L6-v2).
//!
//! TF-IDF over [`crate::index::graph::text_terms`], reduced to `D` dimensions by signed feature
//! hashing (Weinberger et al. 2009, "Feature hashing for large scale multitask learning"): a
//! seeded random projection that needs no stored matrix, only the fitted idf table.

use std::collections::{HashMap, HashSet};

use super::{normalize, Embedder};
use crate::corpus::text::text_terms;

/// TF-IDF reduced to `D` dense dimensions by signed feature hashing.
///
/// A text's terms are [`crate::index::graph::text_terms`] (lowercase alphanumeric words of two or more
/// characters, English stop words dropped). Term `t` with count `tf` in the text weighs
/// `(1 + ln tf) · idf(t)`, with the smoothed `idf(t) = ln((P + 1) / (df(t) + 1)) + 1` over the
/// `P` fitted documents; terms outside the vocabulary are ignored. The weight is added to
/// dimension `h(t) mod D` with sign `+` or `−` by the top bit of `h(t)`, `h` being 64-bit FNV-1a
/// of the term's UTF-8 bytes (so the projection is fixed by the algorithm, not stored). The
/// result is scaled to unit length.
#[derive(Debug, Clone, PartialEq)]
pub struct TfidfEmbedder {
    dims: usize,
    idf: HashMap<String, f32>,
}

impl TfidfEmbedder {
    /// Fits document frequencies on `documents`.
    ///
    /// # Panics
    /// When `dims` is 0.
    pub fn fit<'a>(documents: impl IntoIterator<Item = &'a str>, dims: usize) -> Self {
        assert!(dims > 0, "an embedding needs at least one dimension");
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut docs = 0u64;
        let mut seen = HashSet::new();
        for d in documents {
            docs += 1;
            seen.clear();
            for t in text_terms(d) {
                if seen.insert(t.clone()) {
                    *df.entry(t).or_default() += 1;
                }
            }
        }
        let idf = df
            .into_iter()
            .map(|(t, n)| {
                let idf = ((docs as f64 + 1.0) / (f64::from(n) + 1.0)).ln() + 1.0;
                (t, idf as f32)
            })
            .collect();
        Self { dims, idf }
    }

    /// Rebuilds an embedder from its vocabulary (as stored in a tree file).
    ///
    /// # Panics
    /// When `dims` is 0.
    pub fn from_vocabulary(terms: impl IntoIterator<Item = (String, f32)>, dims: usize) -> Self {
        assert!(dims > 0, "an embedding needs at least one dimension");
        Self {
            dims,
            idf: terms.into_iter().collect(),
        }
    }

    /// `(term, idf)` pairs, terms ascending.
    pub fn vocabulary(&self) -> Vec<(&str, f32)> {
        let mut v: Vec<(&str, f32)> = self.idf.iter().map(|(t, &x)| (t.as_str(), x)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The idf of `term`, if it is in the vocabulary.
    pub fn idf(&self, term: &str) -> Option<f32> {
        self.idf.get(term).copied()
    }
}

/// The dimension (`h mod dims`) and sign (`−` when the top bit of `h` is set) of `term` under
/// [`TfidfEmbedder`]'s feature hashing, `h` being 64-bit FNV-1a of the term's bytes.
pub fn hashed_feature(term: &str, dims: usize) -> (usize, f32) {
    let h = crate::hash::fnv1a(term.as_bytes());
    let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
    ((h % dims as u64) as usize, sign)
}

impl Embedder for TfidfEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_into(&self, text: &str, out: &mut [f32]) {
        assert_eq!(out.len(), self.dims, "embedding buffer of the wrong length");
        out.fill(0.0);
        let mut tf: HashMap<String, u32> = HashMap::new();
        for t in text_terms(text) {
            *tf.entry(t).or_default() += 1;
        }
        for (t, n) in tf {
            if let Some(&idf) = self.idf.get(&t) {
                let (d, sign) = hashed_feature(&t, self.dims);
                out[d] += sign * (1.0 + (n as f32).ln()) * idf;
            }
        }
        normalize(out);
    }
}
