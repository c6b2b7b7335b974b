//! Building a [`Llama`] from named weights: [`build_llama`] reads every tensor by its Hugging
//! Face name through the [`WeightSource`] seam, so one builder serves a GGUF file
//! ([`GgufWeights`]: dequantize to f32, translate llama.cpp tensor names, undo GGUF's rotary
//! permutation of q/k rows) and a safetensors directory ([`crate::hf`]).
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` within each head so that its
//! adjacent-pair RoPE equals Hugging Face's rotate-half RoPE: HF row `half·(hd/2) + i` is
//! stored at GGUF row `2·i + half`. We invert that here, so the in-memory model is exactly the
//! HF model and exports need no special case. Source: llama.cpp `convert_hf_to_gguf.py`
//! (`LlamaModel.permute`), read for the layout only.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::config::LlamaConfig;
use super::gguf::GgufFile;
use super::llama::{Attention, DecoderLayer, Linear, Llama, Mlp, RmsNorm};

use super::ModelError;

/// A tensor's values on the host as f32 (row-major), converting from the backend's float
/// type; for weights and logits read outside burn (the quantized engine, sampling).
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("a converted tensor holds f32")
}

/// Transposes a row-major `[rows, cols]` matrix to `[cols, rows]`, in 32 × 32 tiles so reads
/// and writes both stay within a few cache lines (the RL step re-quantizes the policy, i.e.
/// transposes every weight, once per step).
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; data.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// Inverts llama.cpp's per-head rotary row permutation of a `[heads·hd, in]` matrix.
pub fn unpermute_rotary_rows(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for part in 0..2 {
            for i in 0..half {
                let hf_row = h * head_dim + part * half + i;
                let gguf_row = h * head_dim + 2 * i + part;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

fn param2<B: Backend>(
    data: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

fn param1<B: Backend>(data: Vec<f32>, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

/// Where a loader reads weights, by their Hugging Face names (`model.layers.0.self_attn.
/// q_proj.weight`) and in HF's layout (linear weights `[out, in]`, row-major, f32): a GGUF file
/// translates names and undoes its rotary permutation, a safetensors directory reads them as
/// stored. [`build_llama`] is written once against this seam.
pub trait WeightSource {
    /// Tensor `name` as row-major f32; `shape` is what the config implies.
    ///
    /// # Errors
    /// A missing tensor, a shape that differs from `shape` ([`ModelError::Shape`]), or an
    /// unreadable one; the error names the file and the tensor.
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;

    /// Whether the source holds tensor `name` (optional tensors: biases, an untied head).
    fn contains(&self, name: &str) -> bool;
}

/// A GGUF file seen as a [`WeightSource`]: HF names are mapped to llama.cpp's
/// (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`) and q/k rows are
/// un-permuted, so the model built from it is exactly the HF model.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl<'a> GgufWeights<'a> {
    /// Wraps `file`, whose architecture is `cfg`.
    pub fn new(file: &'a GgufFile, cfg: &LlamaConfig) -> Self {
        Self {
            file,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        }
    }

    /// llama.cpp's name for HF tensor `name`, and the head count whose rotary rows it
    /// permuted (q and k projections).
    fn map(&self, name: &str) -> Option<(String, Option<usize>)> {
        let fixed = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some((f.to_string(), None));
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let (gguf, rotary) = match module {
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            "self_attn.q_proj" => ("attn_q", Some(self.n_heads)),
            "self_attn.k_proj" => ("attn_k", Some(self.n_kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{gguf}.{kind}"), rotary))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (gguf_name, rotary) = self.map(name).ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no GGUF tensor corresponds to {name}",
                self.file.path().display()
            ))
        })?;
        let (data, dims) = self.file.tensor_f32(&gguf_name)?;
        if dims != shape {
            return Err(ModelError::Shape {
                tensor: format!("{} ({gguf_name})", self.file.path().display()),
                expected: shape.to_vec(),
                found: dims,
            });
        }
        Ok(match rotary {
            Some(heads) => {
                let cols = data.len() / (heads * self.head_dim);
                unpermute_rotary_rows(&data, heads, self.head_dim, cols)
            }
            None => data,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.map(name)
            .is_some_and(|(g, _)| self.file.tensors().iter().any(|t| t.name == g))
    }
}

/// An HF `[out, in]` linear weight (and bias, when `bias_required` or the source has one) as
/// a burn `[in, out]` [`Linear`].
fn linear<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    (d_in, d_out): (usize, usize),
    bias_required: bool,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    let w = src.read(&format!("{name}.weight"), &[d_out, d_in])?;
    let bias_name = format!("{name}.bias");
    let bias = if bias_required || src.contains(&bias_name) {
        Some(param1(src.read(&bias_name, &[d_out])?, device))
    } else {
        None
    };
    Ok(Linear {
        weight: param2(transpose(&w, d_out, d_in), [d_in, d_out], device),
        bias,
        precision: crate::fused::Precision::F32,
        lora: None,
    })
}

/// Builds a [`Llama`] of architecture `cfg` from HF-named weights on `device`.
///
/// Biases are loaded wherever the source has them (Qwen2's q/k/v); `cfg.attention_bias`
/// makes the q/k/v biases required. Qwen3's `q_norm`/`k_norm` are required when
/// [`LlamaConfig::qk_norm`]. `lm_head.weight` is required when embeddings are untied.
///
/// # Errors
/// The source's error for a missing, misshapen or unreadable tensor (naming file and tensor).
pub fn build_llama<B: Backend>(
    src: &dyn WeightSource,
    cfg: &LlamaConfig,
    device: &B::Device,
) -> Result<Llama<B>, ModelError> {
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let nh = cfg.num_attention_heads;
    let nkv = cfg.num_key_value_heads;
    let norm = |name: &str, dim: usize| -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm {
            weight: param1(src.read(name, &[dim])?, device),
            eps: cfg.rms_norm_eps,
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let lin = |m: &str, dims, bias| linear::<B>(src, &format!("{p}.{m}"), dims, bias, device);
        let qkv_bias = cfg.attention_bias;
        let qk = |m: &str| -> Result<Option<RmsNorm<B>>, ModelError> {
            match cfg.qk_norm() {
                true => Ok(Some(norm(&format!("{p}.self_attn.{m}.weight"), hd)?)),
                false => Ok(None),
            }
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(&format!("{p}.input_layernorm.weight"), h)?,
            self_attn: Attention {
                q_proj: lin("self_attn.q_proj", (h, nh * hd), qkv_bias)?,
                k_proj: lin("self_attn.k_proj", (h, nkv * hd), qkv_bias)?,
                v_proj: lin("self_attn.v_proj", (h, nkv * hd), qkv_bias)?,
                o_proj: lin("self_attn.o_proj", (nh * hd, h), false)?,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                q_norm: qk("q_norm")?,
                k_norm: qk("k_norm")?,
            },
            post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
            mlp: Mlp {
                gate_proj: lin("mlp.gate_proj", (h, cfg.intermediate_size), false)?,
                up_proj: lin("mlp.up_proj", (h, cfg.intermediate_size), false)?,
                down_proj: lin("mlp.down_proj", (cfg.intermediate_size, h), false)?,
            },
        });
    }
    let embed = src.read("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        let w = src.read("lm_head.weight", &[cfg.vocab_size, h])?;
        Some(param2(
            transpose(&w, cfg.vocab_size, h),
            [h, cfg.vocab_size],
            device,
        ))
    };
    Ok(Llama {
        embed_tokens: param2(embed, [cfg.vocab_size, h], device),
        layers,
        norm: norm("model.norm.weight", h)?,
        lm_head,
        rope_theta: cfg.rope_theta,
    })
}

/// Loads a Llama-architecture GGUF into a burn model on `device`.
///
/// # Errors
/// [`ModelError::Gguf`] for a missing or undecodable tensor, [`ModelError::Shape`] when a
/// tensor's shape disagrees with `cfg`.
pub fn llama_from_gguf<B: Backend>(
    gguf: &GgufFile,
    cfg: &LlamaConfig,
    device: &B::Device,
) -> Result<Llama<B>, ModelError> {
    build_llama(&GgufWeights::new(gguf, cfg), cfg, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // Build an HF matrix, permute it the way llama.cpp's converter does
        // (reshape(heads, 2, hd/2, cols).swapaxes(1, 2)), then check we recover it.
        let (heads, hd, cols) = (2, 6, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for part in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + part * hd / 2 + i;
                    let dst = h * hd + 2 * i + part;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rotary_rows(&gguf, heads, hd, cols), hf);
    }

    #[test]
    fn transpose_swaps_axes() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
