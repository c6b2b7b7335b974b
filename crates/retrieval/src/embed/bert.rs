//! A BERT encoder in burn (Devlin et al. 2019, arXiv 1810.04805): token + position + segment
//! embeddings, post-norm transformer blocks with full bidirectional attention, exact-erf GELU.
//!
//! Fields are named after Hugging Face's `BertModel` tensors (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, …) so [`Bert::from_safetensors`] needs no remap table;
//! the reference implementation is `transformers`' `modeling_bert.py`. Linear weights are kept
//! `[in, out]` (burn's `y = x · W`), so the loader transposes HF's `[out, in]` once.
//!
//! Only what sentence embedding needs is here: no pooler, no heads, dropout off, and every
//! token of segment 0 (`token_type_ids` all zero, as sentence-transformers feeds single texts).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::EmbedError;
use sleuth_model::llama::Linear;
use sleuth_model::load::transpose;

/// The hyper-parameters of a BERT checkpoint, read from its Hugging Face `config.json`
/// (the fields sleuth uses; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// WordPiece vocabulary size (30,522 for the uncased English models).
    pub vocab_size: usize,
    /// Hidden width `H` (384 for all-MiniLM-L6-v2).
    pub hidden_size: usize,
    /// Transformer blocks (6 for all-MiniLM-L6-v2).
    pub num_hidden_layers: usize,
    /// Attention heads; `hidden_size` must divide evenly.
    pub num_attention_heads: usize,
    /// Feed-forward width (1,536 for all-MiniLM-L6-v2).
    pub intermediate_size: usize,
    /// Rows of the position table: the longest input in tokens (512).
    pub max_position_embeddings: usize,
    /// Segment types (2).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (exact, erf-based) is supported.
    pub hidden_act: String,
}

impl BertConfig {
    fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 || self.type_vocab_size == 0 || self.vocab_size == 0 {
            return Err("zero layers, segment types or vocabulary".into());
        }
        Ok(())
    }
}

/// LayerNorm with gain and bias over the last dimension (Ba et al. 2016).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Gain `[H]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Bias `[H]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Epsilon added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// `x`: `[B, T, H]` → same shape: `(x − mean) / sqrt(var + eps) · weight + bias`, with the
    /// biased variance, as PyTorch's `nn.LayerNorm`. Runs as the backend's fused layer-norm op:
    /// on burn-flex the same formula spelled as broadcast tensor ops took six times longer.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            Some(self.bias.val().into_primitive().tensor()),
            self.eps,
        )))
    }
}

/// Token, position and segment embeddings followed by LayerNorm.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// `[vocab, H]`.
    pub word_embeddings: Param<Tensor<B, 2>>,
    /// `[max_positions, H]`.
    pub position_embeddings: Param<Tensor<B, 2>>,
    /// `[type_vocab, H]`; row 0 is added to every token.
    pub token_type_embeddings: Param<Tensor<B, 2>>,
    /// Norm after the sum.
    pub layer_norm: LayerNorm<B>,
}

/// Self-attention projections.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `[H, H]`.
    pub query: Linear<B>,
    /// `[H, H]`.
    pub key: Linear<B>,
    /// `[H, H]`.
    pub value: Linear<B>,
}

/// One post-norm BERT block: attention, add & norm, feed-forward, add & norm.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// q/k/v projections.
    pub attention: SelfAttention<B>,
    /// Attention output projection `[H, H]`.
    pub attention_output: Linear<B>,
    /// Norm after the attention residual.
    pub attention_norm: LayerNorm<B>,
    /// `[H, intermediate]`.
    pub intermediate: Linear<B>,
    /// `[intermediate, H]`.
    pub output: Linear<B>,
    /// Norm after the feed-forward residual.
    pub output_norm: LayerNorm<B>,
}

/// The BERT encoder (no pooler).
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// Input embeddings.
    pub embeddings: Embeddings<B>,
    /// Blocks, bottom first.
    pub layers: Vec<BertLayer<B>>,
    /// Attention heads.
    pub heads: usize,
}

impl<B: Backend> Bert<B> {
    /// The last hidden states of a batch of equal-length sequences (no padding, so no
    /// attention mask: callers group texts by token count).
    ///
    /// `ids`: `[B, T]` token ids, `T` at most the position table. Returns `[B, T, H]`.
    ///
    /// **Heads without permutes.** The usual `[B, T, heads, hd] → [B, heads, T, hd]` transpose
    /// is a strided copy that burn-flex walks element by element, a quarter of the run time
    /// when measured. Instead each head's q/k/v come from its own column slice of the
    /// projection weight (one GEMM each, output already `[B, T, hd]`), attention runs per head
    /// through burn's fused `attention` op, and the output projection is accumulated as
    /// `Σ_h ctx_h · W_o[h·hd..(h+1)·hd, :]`, which is the same product as concatenating heads.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let e = &self.embeddings;
        let h = e.word_embeddings.dims()[1];
        let words = e
            .word_embeddings
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, h]);
        let positions = e
            .position_embeddings
            .val()
            .slice([0..t, 0..h])
            .unsqueeze::<3>();
        let segment = e
            .token_type_embeddings
            .val()
            .slice([0..1, 0..h])
            .unsqueeze::<3>();
        let mut x = e.layer_norm.forward(words + positions + segment);
        let hd = h / self.heads;
        for layer in &self.layers {
            let a = &layer.attention;
            let x2 = x.clone().reshape([b * t, h]);
            let head = |lin: &Linear<B>, i: usize| -> Tensor<B, 4> {
                let cols = i * hd..(i + 1) * hd;
                let w = lin.weight.val().slice([0..h, cols.clone()]);
                let y = x2.clone().matmul(w);
                let y = match &lin.bias {
                    Some(bias) => y + bias.val().slice([cols]).unsqueeze::<2>(),
                    None => y,
                };
                y.reshape([b, 1, t, hd])
            };
            let wo = layer.attention_output.weight.val();
            let mut out: Option<Tensor<B, 2>> = None;
            for i in 0..self.heads {
                let ctx = attention(
                    head(&a.query, i),
                    head(&a.key, i),
                    head(&a.value, i),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                );
                let part = ctx
                    .reshape([b * t, hd])
                    .matmul(wo.clone().slice([i * hd..(i + 1) * hd, 0..h]));
                out = Some(match out {
                    Some(o) => o + part,
                    None => part,
                });
            }
            let mut attn = out.expect("at least one head");
            if let Some(bias) = &layer.attention_output.bias {
                attn = attn + bias.val().unsqueeze::<2>();
            }
            x = layer.attention_norm.forward(attn.reshape([b, t, h]) + x);
            let ff = layer
                .output
                .forward(gelu(layer.intermediate.forward(x.clone())));
            x = layer.output_norm.forward(ff + x);
        }
        x
    }

    /// Loads a Hugging Face BERT checkpoint: `config` from its `config.json` and the weights
    /// from `model.safetensors` (F32 tensors; an optional `bert.` name prefix is accepted).
    ///
    /// # Errors
    /// [`EmbedError::Model`] naming the file for an unreadable or unparsable file, a missing
    /// tensor, a tensor of another dtype or shape than the config implies, or an unsupported
    /// config.
    pub fn from_safetensors(
        config: &BertConfig,
        weights: &Path,
        device: &B::Device,
    ) -> Result<Self, EmbedError> {
        let err = |reason: String| EmbedError::Model {
            path: weights.to_path_buf(),
            reason,
        };
        config.validate().map_err(err)?;
        let bytes = std::fs::read(weights).map_err(|e| err(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let prefix = if st.tensor("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, EmbedError> {
            let full = format!("{prefix}{name}");
            let t = st
                .tensor(&full)
                .map_err(|_| err(format!("tensor {full} is missing")))?;
            if t.dtype() != Dtype::F32 {
                return Err(err(format!("tensor {full} is {:?}, not F32", t.dtype())));
            }
            if t.shape() != shape {
                return Err(err(format!(
                    "tensor {full}: expected shape {shape:?}, found {:?}",
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let p2 = |data: Vec<f32>, shape: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
        };
        let p1 = |data: Vec<f32>| {
            let n = data.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
        };
        let norm = |name: &str| -> Result<LayerNorm<B>, EmbedError> {
            Ok(LayerNorm {
                weight: p1(read(&format!("{name}.weight"), &[h])?),
                bias: p1(read(&format!("{name}.bias"), &[h])?),
                eps: config.layer_norm_eps,
            })
        };
        // HF stores [out, in]; burn's Linear wants [in, out].
        let linear = |name: &str, d_in: usize, d_out: usize| -> Result<Linear<B>, EmbedError> {
            let w = read(&format!("{name}.weight"), &[d_out, d_in])?;
            Ok(Linear {
                weight: p2(transpose(&w, d_out, d_in), [d_in, d_out]),
                bias: Some(p1(read(&format!("{name}.bias"), &[d_out])?)),
                precision: Default::default(),
                lora: None,
            })
        };
        let embeddings = Embeddings {
            word_embeddings: p2(
                read("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
                [config.vocab_size, h],
            ),
            position_embeddings: p2(
                read(
                    "embeddings.position_embeddings.weight",
                    &[config.max_position_embeddings, h],
                )?,
                [config.max_position_embeddings, h],
            ),
            token_type_embeddings: p2(
                read(
                    "embeddings.token_type_embeddings.weight",
                    &[config.type_vocab_size, h],
                )?,
                [config.type_vocab_size, h],
            ),
            layer_norm: norm("embeddings.LayerNorm")?,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    attention: SelfAttention {
                        query: linear(&format!("{l}.attention.self.query"), h, h)?,
                        key: linear(&format!("{l}.attention.self.key"), h, h)?,
                        value: linear(&format!("{l}.attention.self.value"), h, h)?,
                    },
                    attention_output: linear(&format!("{l}.attention.output.dense"), h, h)?,
                    attention_norm: norm(&format!("{l}.attention.output.LayerNorm"))?,
                    intermediate: linear(&format!("{l}.intermediate.dense"), h, f)?,
                    output: linear(&format!("{l}.output.dense"), f, h)?,
                    output_norm: norm(&format!("{l}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(Self {
            embeddings,
            layers,
            heads: config.num_attention_heads,
        })
    }
}
