//! all-MiniLM-L6-v2 as a sentence embedder: WordPiece ids from the model's own `tokenizer.json`
//! (the `tokenizers` crate), the [`Bert`] encoder in burn, mean pooling over real tokens and L2
//! normalisation: the recipe of sentence-transformers' `Transformer → Pooling(mean) →
//! Normalize` pipeline that the model folder's `modules.json` declares (Reimers & Gurevych
//! 2019, arXiv 1908.10084).
//!
//! Inputs are cut at [`MINILM_MAX_TOKENS`] tokens, `[CLS]` and `[SEP]` included: the model's
//! `max_seq_length`. The `tokenizer.json` shipped with the model pads and truncates to 128;
//! both are switched off and replaced by that cut, as sentence-transformers does.
//!
//! A batch is grouped by token count: each forward pass holds texts of one length, at most
//! `BATCH_TOKENS` tokens (and `BATCH_ROWS` rows) in all, so there is no padding, no
//! attention mask, and a text's embedding does not depend on what it was batched with (up to
//! float rounding). The 48k-passage corpus has every length from 4 to 256 tokens, a few hundred
//! passages each, so the groups stay large.
//!
//! Parity: `tests/embed_minilm.rs` compares ids and embeddings with transformers' `BertModel`
//! (fixture recorded by `scripts/reference/record_minilm_fixtures.py`).

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{Bert, BertConfig};
use super::{normalize, EmbedError, Embedder};
use sleuth_model::backend::{self, Inference};

/// Where `scripts/setup` installs the model folder (config.json, model.safetensors,
/// tokenizer.json), relative to the repository root.
pub const DEFAULT_MINILM_DIR: &str = "models/all-MiniLM-L6-v2";
/// Longest input in tokens, `[CLS]` and `[SEP]` included (sentence-transformers'
/// `max_seq_length` for all-MiniLM-L6-v2).
pub const MINILM_MAX_TOKENS: usize = 256;
/// Most tokens (rows × length) in one forward pass.
const BATCH_TOKENS: usize = 8192;
/// Most rows in one forward pass.
const BATCH_ROWS: usize = 64;

/// A BERT sentence embedder with mean pooling (all-MiniLM-L6-v2 by default), on
/// [`Inference`] (the CPU, or CUDA with the `cuda` feature).
pub struct MiniLmEmbedder {
    model: Bert<Inference>,
    tokenizer: Tokenizer,
    dims: usize,
    max_tokens: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("dir", &self.dir)
            .field("dims", &self.dims)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl MiniLmEmbedder {
    /// Loads the model folder `dir`: `config.json`, `model.safetensors`, `tokenizer.json` (a
    /// sentence-transformers folder of a BERT model, as `scripts/setup` installs).
    ///
    /// # Errors
    /// [`EmbedError::Model`] naming the file when the config or weights cannot be read or do
    /// not form a supported BERT; [`EmbedError::Tokenizer`] when `tokenizer.json` cannot.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let model_err = |path: &Path, reason: String| EmbedError::Model {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| model_err(&config_path, format!("{e} (install it with scripts/setup)")))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| model_err(&config_path, e.to_string()))?;
        let tok_path = dir.join("tokenizer.json");
        let tok_err = |reason: String| EmbedError::Tokenizer {
            path: tok_path.clone(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| tok_err(e.to_string()))?;
        let max_tokens = MINILM_MAX_TOKENS.min(config.max_position_embeddings);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| tok_err(e.to_string()))?;
        let model =
            Bert::from_safetensors(&config, &dir.join("model.safetensors"), &backend::device())?;
        Ok(Self {
            model,
            tokenizer,
            dims: config.hidden_size,
            max_tokens,
            dir: dir.to_path_buf(),
        })
    }

    /// The model folder this embedder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// WordPiece ids of `text` as the model sees it: `[CLS] … [SEP]`, at most
    /// [`MINILM_MAX_TOKENS`] ids. A text the tokenizer rejects (it does not happen for valid
    /// UTF-8 with this model's normaliser) gives `[CLS] [SEP]`, with a warning.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        match self.tokenizer.encode(text, true) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "tokenizer failed; embedding an empty text instead");
                self.tokenizer
                    .encode("", true)
                    .map(|e| e.get_ids().to_vec())
                    .unwrap_or_default()
            }
        }
    }

    /// Embeds rows of token ids that all have the same length (at least 1, at most the
    /// position table) into `out` (`rows.len() · D` values), one forward pass.
    fn forward_rows(&self, rows: &[&[u32]], out: &mut [f32]) {
        let b = rows.len();
        let t = rows[0].len();
        debug_assert!(rows.iter().all(|r| r.len() == t), "rows of unequal length");
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&id| i64::from(id)))
            .collect();
        let device = backend::device();
        let ids: Tensor<Inference, 2, Int> =
            Tensor::from_data(TensorData::new(ids, [b, t]), &device);
        // Mean over the tokens (all real: rows are unpadded).
        let pooled = self.model.forward(ids).mean_dim(1); // [b, 1, H]
        let values = pooled
            .into_data()
            .into_vec::<f32>()
            .expect("f32 hidden states");
        out.copy_from_slice(&values);
        out.chunks_exact_mut(self.dims).for_each(normalize);
    }
}

impl Embedder for MiniLmEmbedder {
    fn dims(&self) -> usize {
        self.dims
    }

    fn embed_into(&self, text: &str, out: &mut [f32]) {
        assert_eq!(out.len(), self.dims, "embedding buffer of the wrong length");
        let ids = self.token_ids(text);
        self.forward_rows(&[&ids], out);
    }

    fn embed_batch(&self, texts: &[&str], out: &mut [f32], progress: &mut dyn FnMut(usize)) {
        let d = self.dims;
        assert_eq!(
            out.len(),
            texts.len() * d,
            "embedding buffer of the wrong length"
        );
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.token_ids(t)).collect();
        // Group by token count, longest first: each forward pass holds equal-length rows, so
        // nothing is spent on padding and no attention mask is needed.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(ids[i].len()), i));
        let mut done = 0;
        let mut buf = Vec::new();
        while done < order.len() {
            let len = ids[order[done]].len();
            let same = order[done..]
                .iter()
                .take_while(|&&i| ids[i].len() == len)
                .count();
            let rows = (BATCH_TOKENS / len.max(1)).clamp(1, BATCH_ROWS).min(same);
            let batch = &order[done..done + rows];
            let slices: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            buf.resize(rows * d, 0.0);
            self.forward_rows(&slices, &mut buf);
            for (k, &i) in batch.iter().enumerate() {
                out[i * d..(i + 1) * d].copy_from_slice(&buf[k * d..(k + 1) * d]);
            }
            done += rows;
            progress(done);
        }
        progress(texts.len());
    }
}
