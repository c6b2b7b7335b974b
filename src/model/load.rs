//! Building a [`Llama`] from a GGUF file: dequantize every tensor to f32, translate llama.cpp
//! tensor names to the Hugging Face layout, and undo GGUF's rotary permutation of q/k rows.
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

/// Reads tensor `name` as f32 and checks its row-major shape.
fn read(gguf: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let (data, dims) = gguf.tensor_f32(name)?;
    if dims != shape {
        return Err(ModelError::Shape {
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: dims,
        });
    }
    Ok(data)
}

/// A tensor's values on the host as f32 (row-major), converting from the backend's float
/// type; for weights and logits read outside burn (the quantized engine, sampling).
pub(crate) fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("a converted tensor holds f32")
}

/// Transposes a row-major `[rows, cols]` matrix to `[cols, rows]`, in 32 × 32 tiles so reads
/// and writes both stay within a few cache lines (the RL step re-quantizes the policy, i.e.
/// transposes every weight, once per step).
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
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

/// A GGUF `[out, in]` linear weight as a burn `[in, out]` [`Linear`], optionally un-permuting
/// rotary rows first (`rotary = Some(heads)`).
fn linear<B: Backend>(
    gguf: &GgufFile,
    name: &str,
    d_in: usize,
    d_out: usize,
    rotary: Option<(usize, usize)>,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    let mut w = read(gguf, &format!("{name}.weight"), &[d_out, d_in])?;
    if let Some((heads, hd)) = rotary {
        w = unpermute_rotary_rows(&w, heads, hd, d_in);
    }
    let bias_name = format!("{name}.bias");
    let bias = if gguf.tensors().iter().any(|t| t.name == bias_name) {
        let mut b = read(gguf, &bias_name, &[d_out])?;
        if let Some((heads, hd)) = rotary {
            b = unpermute_rotary_rows(&b, heads, hd, 1);
        }
        Some(param1(b, device))
    } else {
        None
    };
    Ok(Linear {
        weight: param2(transpose(&w, d_out, d_in), [d_in, d_out], device),
        bias,
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
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let nh = cfg.num_attention_heads;
    let nkv = cfg.num_key_value_heads;
    let norm = |name: &str| -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm {
            weight: param1(read(gguf, name, &[h])?, device),
            eps: cfg.rms_norm_eps,
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("blk.{i}");
        layers.push(DecoderLayer {
            input_layernorm: norm(&format!("{p}.attn_norm.weight"))?,
            self_attn: Attention {
                q_proj: linear(
                    gguf,
                    &format!("{p}.attn_q"),
                    h,
                    nh * hd,
                    Some((nh, hd)),
                    device,
                )?,
                k_proj: linear(
                    gguf,
                    &format!("{p}.attn_k"),
                    h,
                    nkv * hd,
                    Some((nkv, hd)),
                    device,
                )?,
                v_proj: linear(gguf, &format!("{p}.attn_v"), h, nkv * hd, None, device)?,
                o_proj: linear(gguf, &format!("{p}.attn_output"), nh * hd, h, None, device)?,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            },
            post_attention_layernorm: norm(&format!("{p}.ffn_norm.weight"))?,
            mlp: Mlp {
                gate_proj: linear(
                    gguf,
                    &format!("{p}.ffn_gate"),
                    h,
                    cfg.intermediate_size,
                    None,
                    device,
                )?,
                up_proj: linear(
                    gguf,
                    &format!("{p}.ffn_up"),
                    h,
                    cfg.intermediate_size,
                    None,
                    device,
                )?,
                down_proj: linear(
                    gguf,
                    &format!("{p}.ffn_down"),
                    cfg.intermediate_size,
                    h,
                    None,
                    device,
                )?,
            },
        });
    }
    let embed = read(gguf, "token_embd.weight", &[cfg.vocab_size, h])?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        let w = read(gguf, "output.weight", &[cfg.vocab_size, h])?;
        Some(param2(
            transpose(&w, cfg.vocab_size, h),
            [h, cfg.vocab_size],
            device,
        ))
    };
    Ok(Llama {
        embed_tokens: param2(embed, [cfg.vocab_size, h], device),
        layers,
        norm: norm("output_norm.weight")?,
        lm_head,
        rope_theta: cfg.rope_theta,
    })
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
