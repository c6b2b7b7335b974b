//! Text embedders: the seam between the RAPTOR tree (its builder and its retriever) and the
//! model that turns text into vectors.
//!
//! Two embedders implement [`Embedder`]:
//! - [`MiniLmEmbedder`]: all-MiniLM-L6-v2 (Wang et al. 2020 MiniLM, fine-tuned by
//!   sentence-transformers), the dense sentence embedder RAPTOR-style trees are usually built
//!   with. A 6-layer, 384-wide BERT ([`bert`]) run in burn, mean-pooled and L2-normalised,
//!   from the model folder `scripts/setup` installs at `models/all-MiniLM-L6-v2`.
//! - [`TfidfEmbedder`]: hashed TF-IDF, the fallback that needs no model file and builds the
//!   48k-passage tree in seconds.
//!
//! **Why a batch method.** A dense model costs one transformer forward per text; run one text at
//! a time, the GEMMs are `T × 384` and the CPU idles. [`Embedder::embed_batch`] lets the model
//! sort a level's texts by length and run them in padded micro-batches, which is where its
//! throughput comes from; TF-IDF keeps the per-text default.

pub mod bert;
pub mod minilm;
pub mod tfidf;

use std::path::PathBuf;

pub use minilm::{MiniLmEmbedder, DEFAULT_MINILM_DIR, MINILM_MAX_TOKENS};
pub use tfidf::{hashed_feature, TfidfEmbedder};

/// Which embedder a RAPTOR tree is built with; the tree file records it (as [`Self::code`]) so
/// the retriever embeds queries the same way. As a config value: `"minilm"` or `"tfidf"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 ([`MiniLmEmbedder`]), 384 dimensions: the embedder issue 4 names for
    /// the tree, and the default.
    #[default]
    Minilm,
    /// Hashed TF-IDF ([`TfidfEmbedder`]), no model file; the fallback.
    Tfidf,
}

impl EmbedderKind {
    /// The code stored in a tree file: 1 = hashed TF-IDF, 2 = all-MiniLM-L6-v2.
    pub fn code(self) -> u32 {
        match self {
            Self::Tfidf => 1,
            Self::Minilm => 2,
        }
    }

    /// The kind stored as `code`, if any.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Tfidf),
            2 => Some(Self::Minilm),
            _ => None,
        }
    }

    /// The config / command-line name: `minilm` or `tfidf`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minilm => "minilm",
            Self::Tfidf => "tfidf",
        }
    }
}

/// Errors raised while loading an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model's weights or config cannot be read or do not form a supported model.
    #[error("embedding model {path}: {reason}")]
    Model {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's `tokenizer.json` cannot be read or parsed.
    #[error("embedding tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Turns text into a fixed-length vector whose dot products rank texts by similarity.
///
/// The tree builder embeds nodes and summary sentences, the tree retriever embeds queries, and
/// both must use the same embedder (the tree file records which one; see
/// [`crate::index::graph::TreeIndex`]).
pub trait Embedder: Send + Sync {
    /// Output dimensions `D`.
    fn dims(&self) -> usize;

    /// Writes the embedding of `text` into `out` (`D` values): unit length, or all zeros when
    /// the text has nothing the embedder knows.
    ///
    /// # Panics
    /// When `out.len() != self.dims()`.
    fn embed_into(&self, text: &str, out: &mut [f32]);

    /// The embedding of `text` as a new vector (see [`Embedder::embed_into`]).
    fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0; self.dims()];
        self.embed_into(text, &mut v);
        v
    }

    /// Embeds many texts into `out` (row `i`, `D` values, is `texts[i]`'s embedding, equal to
    /// what [`Embedder::embed_into`] gives up to float rounding). `progress` is called with the
    /// number of texts finished so far, now and then, for progress bars.
    ///
    /// # Panics
    /// When `out.len() != texts.len() · D`.
    fn embed_batch(&self, texts: &[&str], out: &mut [f32], progress: &mut dyn FnMut(usize)) {
        let d = self.dims();
        assert_eq!(
            out.len(),
            texts.len() * d,
            "embedding buffer of the wrong length"
        );
        for (i, (t, row)) in texts.iter().zip(out.chunks_exact_mut(d)).enumerate() {
            self.embed_into(t, row);
            if (i + 1) % 4096 == 0 {
                progress(i + 1);
            }
        }
        progress(texts.len());
    }
}

/// Scales `v` to unit length in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
