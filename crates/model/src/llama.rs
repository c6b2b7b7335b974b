//! The Llama-family decoder in burn: RMSNorm, rotary embeddings, grouped-query attention,
//! SwiGLU MLP, tied or untied output projection.
//!
//! One struct per block, fields named after Hugging Face's tensors (`embed_tokens`,
//! `self_attn.q_proj`, `mlp.gate_proj`, …) so weight loading and export need no remap table
//! (the pattern of candle's `qwen2.rs`). Linear weights are stored `[in, out]` (burn's
//! convention, `y = x · W`); HF stores `[out, in]`, so loaders transpose once.
//!
//! Rotary embeddings use the Hugging Face "rotate half" convention: dimension `i` pairs with
//! `i + head_dim/2`. GGUF files store q/k rows permuted for llama.cpp's adjacent-pair
//! convention; [`mod@crate::load`] undoes that permutation, so in memory the weights are
//! exactly HF's.
//!
//! Three forward paths share the same blocks:
//! - [`Llama::forward`]: whole sequences, no cache (training and scoring). Rows are
//!   right-padded; causal attention means real tokens never see the padding after them.
//! - [`Llama::prefill_row`]: one row of a [`KvCache`], many new tokens (prompt, inserted
//!   documents), attending to that row's cached prefix.
//! - [`Llama::decode_step`]: one new token for every row of the cache at once; rows may have
//!   different lengths (their own positions), masked per row.
//!
//! Sources: Touvron et al. 2023 (Llama), Su et al. 2021 (RoPE), Ainslie et al. 2023 (GQA),
//! Shazeer 2020 (SwiGLU); the reference implementation is `transformers`' `modeling_llama.py`.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use std::sync::Arc;

use super::config::LlamaConfig;
use super::fused::{self, RopeTables};
use super::kv_cache::KvCache;
use super::lora::{Lora, LoraConfig, LoraTarget};
use rand::SeedableRng;

/// Large negative value added to masked attention scores (finite, so a fully masked row
/// cannot produce NaN).
const MASKED: f32 = -1.0e9;

/// Root-mean-square layer norm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel gain, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon inside the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalizes the last dimension. `x`: `[.., hidden]` → same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(y) = fused::rms_norm(x.clone(), self.weight.val(), self.eps) {
            return y;
        }
        let dims = x.dims();
        let hidden = dims[D - 1];
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let inv = ms.add_scalar(self.eps).sqrt().recip();
        let w = self.weight.val().reshape(gain_shape::<D>(hidden));
        x * inv * w
    }
}

fn gain_shape<const D: usize>(hidden: usize) -> [usize; D] {
    let mut s = [1; D];
    s[D - 1] = hidden;
    s
}

/// A linear projection without bias (or with one, for Qwen2's q/k/v).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// Weight `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Optional bias `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Precision of the product ([`fused::Precision`]; not saved with the weights).
    #[module(skip)]
    pub precision: fused::Precision,
    /// A trainable low-rank update beside the weight ([`crate::lora`]); `None` unless the
    /// model was prepared with [`Llama::with_lora`] or loaded from a LoRA checkpoint.
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    /// `x`: `[batch, tokens, in]` → `[batch, tokens, out]`.
    ///
    /// The product runs as one 2-D GEMM over `[batch·tokens, in]`: burn-flex's batched matmul
    /// with a broadcast weight takes a much slower path. With `precision` bf16 on a CPU with
    /// AMX it is [`fused::linear`] (bf16 operands, f32 sums), else burn's f32 matmul. An
    /// adapter adds `scale · (x·A)·B` in f32 ([`Lora::forward`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d_in] = x.dims();
        let x = x.reshape([b * t, d_in]);
        let update = self.lora.as_ref().map(|l| l.forward(x.clone()));
        let y = match fused::runs_bf16::<B>(self.precision) {
            true => fused::linear(x, self.weight.val(), self.precision)
                .expect("fused::runs_bf16 was checked above"),
            false => x.matmul(self.weight.val()),
        };
        let y = match update {
            Some(u) => y + u,
            None => y,
        };
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        let d_out = y.dims()[1];
        y.reshape([b, t, d_out])
    }

    fn random(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::random([d_in, d_out], init_dist(), device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
            precision: fused::Precision::F32,
            lora: None,
        }
    }
}

fn init_dist() -> Distribution {
    Distribution::Normal(0.0, 0.02)
}

/// Multi-head self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection `[hidden, heads·head_dim]`.
    pub q_proj: Linear<B>,
    /// Key projection `[hidden, kv_heads·head_dim]`.
    pub k_proj: Linear<B>,
    /// Value projection `[hidden, kv_heads·head_dim]`.
    pub v_proj: Linear<B>,
    /// Output projection `[heads·head_dim, hidden]`.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// Qwen3's RMSNorm over each query head before RoPE, gain `[head_dim]`; `None` elsewhere.
    pub q_norm: Option<RmsNorm<B>>,
    /// Qwen3's RMSNorm over each key head before RoPE, gain `[head_dim]`; `None` elsewhere.
    pub k_norm: Option<RmsNorm<B>>,
}

/// SwiGLU feed-forward block: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[hidden, intermediate]`.
    pub gate_proj: Linear<B>,
    /// `[hidden, intermediate]`.
    pub up_proj: Linear<B>,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `[batch, tokens, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let g = self.gate_proj.forward(x.clone());
        let u = self.up_proj.forward(x);
        let a = fused::swiglu(g.clone(), u.clone()).unwrap_or_else(|| silu(g) * u);
        self.down_proj.forward(a)
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
}

/// Rotary position tables for a set of query positions.
///
/// `cos`/`sin` broadcast against `[batch, tokens, heads, head_dim]` (the projections' own
/// contiguous layout, before heads are moved forward): shape `[1, T, 1, hd]` when all rows
/// share positions, `[B, 1, 1, hd]` in a decode step where each row has its own.
///
/// `rotate_half` is a product with the signed permutation `rot` (`[hd, hd]`, one ±1 per
/// column, so the product is exact): one contiguous GEMM instead of slicing the last
/// dimension in two and concatenating, which on burn-flex walks strided views element by
/// element in the forward and again in the backward (profiled with
/// `examples/profile_update.rs`).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    rot: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `positions`, laid out with shape `shape` (product = positions·hd).
    fn new(
        positions: &[usize],
        head_dim: usize,
        theta: f64,
        shape: [usize; 4],
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * head_dim);
        let mut sin = Vec::with_capacity(positions.len() * head_dim);
        let inv_freqs: Vec<f64> = super::config::rope_inv_freq(head_dim, theta).collect();
        for &p in positions {
            let start = cos.len();
            for &inv_freq in &inv_freqs {
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
            // rotate-half layout: the second half repeats the first half's angles.
            cos.extend_from_within(start..start + half);
            sin.extend_from_within(start..start + half);
        }
        // rotate_half(x)[i] = −x[i + half] (i < half), x[i − half] (i ≥ half), as x · rot.
        let mut rot = vec![0f32; head_dim * head_dim];
        for i in 0..half {
            rot[(i + half) * head_dim + i] = -1.0;
            rot[i * head_dim + i + half] = 1.0;
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            rot: Tensor::from_data(TensorData::new(rot, [head_dim, head_dim]), device),
        }
    }

    /// Applies the rotation to `x`: `[batch, tokens, heads, head_dim]`, contiguous.
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, t, h, d] = x.dims();
        let rotated = x
            .clone()
            .reshape([b * t * h, d])
            .matmul(self.rot.clone())
            .reshape([b, t, h, d]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Applies an optional per-head RMSNorm (Qwen3) to `[B, T, heads, head_dim]`.
fn head_norm<B: Backend>(norm: &Option<RmsNorm<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// How [`Llama::forward`] runs attention: the fused CPU kernel with host RoPE tables, or the
/// composed ops with RoPE tensors and the additive causal bias.
enum AttnPath<B: Backend> {
    Fused(Arc<RopeTables>),
    Composed(Rope<B>, Tensor<B, 4>),
}

/// Key/value tensors produced by one attention call, returned so the caller can cache them.
struct NewKv<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// Whole-sequence causal attention, `x` `[B, T, hidden]` → `[B, T, heads·hd]` before the
    /// output projection: [`fused::causal_attention`] (RoPE inside) or the composed ops.
    fn causal(&self, x: Tensor<B, 3>, path: &AttnPath<B>) -> Tensor<B, 3> {
        match path {
            AttnPath::Fused(tables) => {
                let [b, t, _] = x.dims();
                let q = self.q_proj.forward(x.clone());
                let k = self.k_proj.forward(x.clone());
                let v = self.v_proj.forward(x);
                fused::causal_attention(
                    head_norm(&self.q_norm, q.reshape([b, t, self.n_heads, self.head_dim])),
                    head_norm(
                        &self.k_norm,
                        k.reshape([b, t, self.n_kv_heads, self.head_dim]),
                    ),
                    v.reshape([b, t, self.n_kv_heads, self.head_dim]),
                    tables,
                )
                .expect("AttnPath::Fused is only chosen where fused::enabled")
            }
            AttnPath::Composed(rope, bias) => {
                let (q, kv) = self.qkv(x, rope);
                self.attend(q, kv.k, kv.v, bias.clone())
            }
        }
    }

    /// Attention of continuations `xc` `[B, C, hidden]` over a shared prefix `xp`
    /// `[1, P, hidden]` (fused path only): returns the prefix's own causal attention
    /// `[1, P, heads·hd]` and the continuations' `[B, C, heads·hd]`, both before the output
    /// projection ([`fused::prefix_attention`]). `None` where the fused kernels are off.
    fn shared(
        &self,
        xp: Tensor<B, 3>,
        xc: Tensor<B, 3>,
        tables: &Arc<RopeTables>,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        let project = |x: Tensor<B, 3>| {
            let [b, t, _] = x.dims();
            let q = self.q_proj.forward(x.clone());
            let k = self.k_proj.forward(x.clone());
            let v = self.v_proj.forward(x);
            (
                head_norm(&self.q_norm, q.reshape([b, t, self.n_heads, self.head_dim])),
                head_norm(
                    &self.k_norm,
                    k.reshape([b, t, self.n_kv_heads, self.head_dim]),
                ),
                v.reshape([b, t, self.n_kv_heads, self.head_dim]),
            )
        };
        let (qp, kp, vp) = project(xp);
        let (qc, kc, vc) = project(xc);
        let ap = fused::causal_attention(qp, kp.clone(), vp.clone(), tables)?;
        let ac = fused::prefix_attention(qc, kc, vc, kp, vp, tables)?;
        Some((ap, ac))
    }

    /// Projects `x` `[B, T, hidden]` to rotated queries `[B, heads, T, hd]` and rotated keys
    /// and values `[B, kv_heads, T, hd]`.
    fn qkv(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> (Tensor<B, 4>, NewKv<B>) {
        let [b, t, _] = x.dims();
        // Rotate in the projection's own layout [B, T, heads, hd], then move heads forward.
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, self.head_dim]);
        let q = heads(self.q_proj.forward(x.clone()), self.n_heads);
        let k = heads(self.k_proj.forward(x.clone()), self.n_kv_heads);
        let q = rope.apply(head_norm(&self.q_norm, q));
        let k = rope.apply(head_norm(&self.k_norm, k));
        let v = heads(self.v_proj.forward(x), self.n_kv_heads);
        (
            q.swap_dims(1, 2),
            NewKv {
                k: k.swap_dims(1, 2),
                v: v.swap_dims(1, 2),
            },
        )
    }

    /// Scaled dot-product attention with grouped kv heads.
    ///
    /// `q`: `[B, heads, T, hd]`; `k`, `v`: `[B, kv_heads, S, hd]`; `bias`: additive mask
    /// broadcastable to `[B, kv_heads, group·T, S]` (rows ordered group-major, then token).
    /// Returns `[B, T, heads·hd]`.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [b, _, t, hd] = q.dims();
        let group = self.n_heads / self.n_kv_heads;
        // Heads h = kv·group + g, so [B, heads, T, hd] → [B, kv, group·T, hd] is a reshape.
        let q = q.reshape([b, self.n_kv_heads, group * t, hd]);
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias;
        let probs = softmax(scores, 3);
        let out = probs.matmul(v); // [B, kv, group·T, hd]
        out.reshape([b, self.n_heads, t, hd])
            .swap_dims(1, 2)
            .reshape([b, t, self.n_heads * hd])
    }
}

/// The full decoder: token embedding, blocks, final norm, output projection.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding `[vocab, hidden]`; also the output projection when tied.
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// Untied output projection `[hidden, vocab]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// RoPE base θ.
    pub rope_theta: f64,
}

/// Additive causal mask for `tokens` new queries at positions `past..past+tokens` over
/// `past + tokens` keys, repeated for `group` query heads per kv head:
/// shape `[1, 1, group·tokens, past+tokens]`.
fn causal_bias<B: Backend>(
    past: usize,
    tokens: usize,
    group: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let s = past + tokens;
    let mut data = Vec::with_capacity(group * tokens * s);
    for _ in 0..group {
        for t in 0..tokens {
            let limit = past + t;
            data.extend((0..s).map(|j| if j <= limit { 0.0 } else { MASKED }));
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 1, group * tokens, s]), device)
}

/// Renumbers every parameter's id by its position in the module's visiting order (0, 1, …):
/// see [`Llama::with_canonical_param_ids`].
struct CanonicalIds(u64);

impl<B: Backend> burn::module::ModuleMapper<B> for CanonicalIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        Param::from_mapped_value(burn::module::ParamId::from(self.0 - 1), tensor, mapper)
    }
}

impl<B: Backend> Llama<B> {
    /// The same model with parameter ids 0, 1, 2, … in visiting order instead of burn's
    /// random ones. A checkpoint stores each parameter's id and the optimizer keys its
    /// moments by it, so with random ids two runs of one seed write different `model.mpk`
    /// bytes for equal weights; the trainers canonicalize the policy they are given, which
    /// makes a checkpoint a pure function of the run (the determinism promise of
    /// `docs/reliability.md`). Values, names and gradients are unchanged.
    pub fn with_canonical_param_ids(self) -> Self {
        self.map(&mut CanonicalIds(0))
    }

    /// The model with every linear layer's products in `precision` ([`fused::Precision`]).
    /// The setting is not part of the weights: clones (the reference model) and optimizer
    /// steps keep it, loading a checkpoint into this model keeps it, a freshly loaded model
    /// starts at f32.
    pub fn with_precision(mut self, precision: fused::Precision) -> Self {
        for layer in 0..self.layers.len() {
            for t in LoraTarget::ALL {
                self.target_mut(layer, t).precision = precision;
            }
        }
        self
    }

    /// The precision of the linear layers' products ([`Self::with_precision`]).
    pub fn precision(&self) -> fused::Precision {
        self.layers
            .first()
            .map_or(fused::Precision::F32, |l| l.self_attn.q_proj.precision)
    }

    /// A randomly initialised model (weights ~ N(0, 0.02), norms = 1), for tests and the
    /// tiny CI learning run. Call `B::seed` first for reproducibility.
    pub fn random(cfg: &LlamaConfig, device: &B::Device) -> Self {
        let hd = cfg.head_dim();
        let norm = |dim| RmsNorm {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps: cfg.rms_norm_eps,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(cfg.hidden_size),
                self_attn: Attention {
                    q_proj: Linear::random(
                        cfg.hidden_size,
                        cfg.num_attention_heads * hd,
                        cfg.attention_bias,
                        device,
                    ),
                    k_proj: Linear::random(
                        cfg.hidden_size,
                        cfg.num_key_value_heads * hd,
                        cfg.attention_bias,
                        device,
                    ),
                    v_proj: Linear::random(
                        cfg.hidden_size,
                        cfg.num_key_value_heads * hd,
                        cfg.attention_bias,
                        device,
                    ),
                    o_proj: Linear::random(
                        cfg.num_attention_heads * hd,
                        cfg.hidden_size,
                        false,
                        device,
                    ),
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: hd,
                    q_norm: cfg.qk_norm().then(|| norm(hd)),
                    k_norm: cfg.qk_norm().then(|| norm(hd)),
                },
                post_attention_layernorm: norm(cfg.hidden_size),
                mlp: Mlp {
                    gate_proj: Linear::random(
                        cfg.hidden_size,
                        cfg.intermediate_size,
                        false,
                        device,
                    ),
                    up_proj: Linear::random(cfg.hidden_size, cfg.intermediate_size, false, device),
                    down_proj: Linear::random(
                        cfg.intermediate_size,
                        cfg.hidden_size,
                        false,
                        device,
                    ),
                },
            })
            .collect();
        Self {
            embed_tokens: Param::from_tensor(Tensor::random(
                [cfg.vocab_size, cfg.hidden_size],
                init_dist(),
                device,
            )),
            layers,
            norm: norm(cfg.hidden_size),
            lm_head: (!cfg.tie_word_embeddings).then(|| {
                Param::from_tensor(Tensor::random(
                    [cfg.hidden_size, cfg.vocab_size],
                    init_dist(),
                    device,
                ))
            }),
            rope_theta: cfg.rope_theta,
        }
    }

    /// Vocabulary size (rows of the embedding).
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.val().dims()[0]
    }

    fn attn_shape(&self) -> (usize, usize, usize) {
        let a = &self.layers[0].self_attn;
        (a.n_heads, a.n_kv_heads, a.head_dim)
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let hidden = self.embed_tokens.val().dims()[1];
        self.embed_tokens
            .val()
            .select(0, tokens.reshape([b * t]))
            .reshape([b, t, hidden])
    }

    /// The output projection's weight and whether it is tied: the embedding `[vocab, hidden]`
    /// (tied, used transposed) or the head `[hidden, vocab]`.
    pub fn head_weight(&self) -> (Tensor<B, 2>, bool) {
        match &self.lm_head {
            Some(w) => (w.val(), false),
            None => (self.embed_tokens.val(), true),
        }
    }

    /// Projects final hidden states `[B, T, hidden]` to logits `[B, T, vocab]`.
    ///
    /// A 2-D GEMM over `[B·T, hidden]`; with tied weights the right operand is a transposed
    /// view of the embedding (no copy). Measured on 2 cores: 3.8 ms for one row, against
    /// 150 ms for the same product as a 3-D batched matmul with a broadcast transposed view.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h] = hidden.dims();
        let w = match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed_tokens.val().transpose(),
        };
        let v = w.dims()[1];
        hidden.reshape([b * t, h]).matmul(w).reshape([b, t, v])
    }

    /// Logits `[vocab]` of the token after `ids` (one sequence, `ids` non-empty), from the
    /// cache-free whole-sequence [`Llama::forward`]: the reference the parity checks compare
    /// against transformers' first-step logits and against the KV-cache decode paths.
    pub fn next_token_logits(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 1> {
        let t = ids.len();
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&x| i64::from(x)).collect(), [1, t]),
            device,
        );
        let hidden = self.forward(tokens).slice([0..1, t - 1..t]);
        let vocab = self.vocab_size();
        self.logits(hidden).reshape([vocab])
    }

    /// Whole-sequence forward without a cache: `tokens` `[B, T]` (right-padded) → final
    /// hidden states `[B, T, hidden]` (after the last norm). Position `t` sees tokens `0..=t`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let device = tokens.device();
        let [_, t] = tokens.dims();
        let (_, n_kv, hd) = self.attn_shape();
        let group = self.attn_shape().0 / n_kv;
        // The fused kernels (CPU) take host RoPE tables; other backends the tensor path.
        let path = match fused::enabled::<B>() {
            true => AttnPath::Fused(Arc::new(RopeTables::new(t, hd, self.rope_theta))),
            false => {
                let positions: Vec<usize> = (0..t).collect();
                AttnPath::Composed(
                    Rope::new(&positions, hd, self.rope_theta, [1, t, 1, hd], &device),
                    causal_bias::<B>(0, t, group, &device),
                )
            }
        };
        let mut x = self.embed(tokens);
        for layer in &self.layers {
            let h = layer.input_layernorm.forward(x.clone());
            let a = layer.self_attn.causal(h, &path);
            x = x + layer.self_attn.o_proj.forward(a);
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(h);
        }
        self.norm.forward(x)
    }

    /// Whole-sequence forward of `B` rows that share their first `P` tokens: `prefix`
    /// `[1, P]`, `tokens` `[B, C]` (each row's tokens after the prefix, right-padded) → final
    /// hidden states of the continuations `[B, C, hidden]`, equal to
    /// `forward(cat(prefix repeated B, tokens))[.., P..]`.
    ///
    /// On the fused backends the prefix runs once per layer and the continuations attend to
    /// its keys and values ([`fused::prefix_attention`]): the update of a GRPO group runs its
    /// prompt once instead of `G` times, and autodiff sums the prefix's gradient over the rows,
    /// as the unshared forward does. Other backends run the unshared forward and slice.
    pub fn forward_shared(
        &self,
        prefix: Tensor<B, 2, Int>,
        tokens: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [_, p] = prefix.dims();
        let [b, c] = tokens.dims();
        let hd = self.attn_shape().2;
        if p == 0 || !fused::enabled::<B>() {
            let all = Tensor::cat(vec![prefix.repeat_dim(0, b), tokens], 1);
            let hidden = self.forward(all);
            let width = hidden.dims()[2];
            return hidden.slice([0..b, p..p + c, 0..width]);
        }
        let tables = Arc::new(RopeTables::new(p + c, hd, self.rope_theta));
        let mut xp = self.embed(prefix);
        let mut xc = self.embed(tokens);
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let hp = layer.input_layernorm.forward(xp.clone());
            let hc = layer.input_layernorm.forward(xc.clone());
            let (ap, ac) = layer
                .self_attn
                .shared(hp, hc, &tables)
                .expect("fused::enabled was checked above");
            let o = &layer.self_attn.o_proj;
            xc = xc + o.forward(ac);
            let h = layer.post_attention_layernorm.forward(xc.clone());
            xc = xc + layer.mlp.forward(h);
            // The prefix's output after the last attention feeds nothing.
            if i < last {
                xp = xp + o.forward(ap);
                let h = layer.post_attention_layernorm.forward(xp.clone());
                xp = xp + layer.mlp.forward(h);
            }
        }
        self.norm.forward(xc)
    }

    /// Appends `tokens` to row `row` of `cache` (prompt or inserted documents) and returns the
    /// logits of the last new token, `[vocab]`.
    ///
    /// # Panics
    /// When `tokens` is empty or the row would exceed the cache capacity (callers check
    /// [`KvCache::remaining`] first).
    pub fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut KvCache<B>) -> Tensor<B, 1> {
        assert!(!tokens.is_empty(), "prefill_row needs at least one token");
        let device = self.embed_tokens.device();
        let t = tokens.len();
        let past = cache.len(row);
        assert!(past + t <= cache.capacity(), "KV cache capacity exceeded");
        let (n_heads, n_kv, hd) = self.attn_shape();
        let positions: Vec<usize> = (past..past + t).collect();
        let rope = Rope::new(&positions, hd, self.rope_theta, [1, t, 1, hd], &device);
        let bias = causal_bias::<B>(past, t, n_heads / n_kv, &device);
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect(), [1, t]),
            &device,
        );
        let mut x = self.embed(ids);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let (q, kv) = layer.self_attn.qkv(h, &rope);
            let (k, v) = cache.write_row(l, row, past, kv.k, kv.v);
            let a = layer.self_attn.attend(q, k, v, bias.clone());
            x = x + layer.self_attn.o_proj.forward(a);
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(h);
        }
        cache.advance(row, t);
        let hidden = self.norm.forward(x.slice([0..1, t - 1..t]));
        let vocab = self.vocab_size();
        self.logits(hidden).reshape([vocab])
    }

    /// One decode step for every row of `cache`: `tokens[r]` is appended to row `r` at its
    /// own position. Rows with `active[r] == false` are computed but not advanced (their
    /// write lands in a slot the next real token overwrites). Returns logits `[rows, vocab]`.
    ///
    /// # Panics
    /// When the lengths of `tokens`/`active` differ from the cache's rows, or an active row
    /// is full.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        active: &[bool],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let rows = cache.rows();
        assert_eq!(tokens.len(), rows);
        assert_eq!(active.len(), rows);
        let device = self.embed_tokens.device();
        let (_, _, hd) = self.attn_shape();
        let cap = cache.capacity();
        let positions: Vec<usize> = (0..rows)
            .map(|r| {
                let p = cache.len(r);
                assert!(
                    !active[r] || p < cap,
                    "KV cache capacity exceeded on row {r}"
                );
                p.min(cap - 1)
            })
            .collect();
        let span = positions.iter().max().copied().unwrap_or(0) + 1;
        let rope = Rope::new(&positions, hd, self.rope_theta, [rows, 1, 1, hd], &device);
        let mut bias = Vec::with_capacity(rows * span);
        for &p in &positions {
            bias.extend((0..span).map(|j| if j <= p { 0.0 } else { MASKED }));
        }
        let bias = Tensor::<B, 4>::from_data(TensorData::new(bias, [rows, 1, 1, span]), &device);
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect(), [rows, 1]),
            &device,
        );
        let mut x = self.embed(ids);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let (q, kv) = layer.self_attn.qkv(h, &rope);
            let (k, v) = cache.write_step(l, &positions, span, kv.k, kv.v);
            let a = layer.self_attn.attend(q, k, v, bias.clone());
            x = x + layer.self_attn.o_proj.forward(a);
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(h);
        }
        for (r, &a) in active.iter().enumerate() {
            if a {
                cache.advance(r, 1);
            }
        }
        let hidden = self.norm.forward(x);
        let vocab = self.vocab_size();
        self.logits(hidden).reshape([rows, vocab])
    }
}

// ---------------------------------------------------------------------------------------
// LoRA adapters on the model ([`crate::lora`])
// ---------------------------------------------------------------------------------------

impl<B: Backend> Linear<B> {
    /// The weight this layer applies, `[in, out]`: the base plus the adapter's `scale · A·B`
    /// when it has one (what the quantized engine and the export read).
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        match &self.lora {
            Some(l) => self.weight.val() + l.delta(),
            None => self.weight.val(),
        }
    }
}

impl<B: Backend> Llama<B> {
    /// The linear layer `target` of decoder layer `layer`, to change (e.g. set an adapter's
    /// weights in a test or benchmark).
    pub fn target_mut(&mut self, layer: usize, target: LoraTarget) -> &mut Linear<B> {
        let l = &mut self.layers[layer];
        match target {
            LoraTarget::QProj => &mut l.self_attn.q_proj,
            LoraTarget::KProj => &mut l.self_attn.k_proj,
            LoraTarget::VProj => &mut l.self_attn.v_proj,
            LoraTarget::OProj => &mut l.self_attn.o_proj,
            LoraTarget::GateProj => &mut l.mlp.gate_proj,
            LoraTarget::UpProj => &mut l.mlp.up_proj,
            LoraTarget::DownProj => &mut l.mlp.down_proj,
        }
    }

    /// The linear layer `target` of decoder layer `layer`.
    pub fn target(&self, layer: usize, target: LoraTarget) -> &Linear<B> {
        let l = &self.layers[layer];
        match target {
            LoraTarget::QProj => &l.self_attn.q_proj,
            LoraTarget::KProj => &l.self_attn.k_proj,
            LoraTarget::VProj => &l.self_attn.v_proj,
            LoraTarget::OProj => &l.self_attn.o_proj,
            LoraTarget::GateProj => &l.mlp.gate_proj,
            LoraTarget::UpProj => &l.mlp.up_proj,
            LoraTarget::DownProj => &l.mlp.down_proj,
        }
    }

    /// The model prepared for LoRA training with `cfg`: every base parameter frozen
    /// (`require_grad = false`), and an adapter on each target of every layer. An adapter
    /// already there with the same rank and alpha is kept and trained further (a LoRA run
    /// resumed, or started from a LoRA checkpoint); any other adapter is folded into its base
    /// weight first ([`Self::merge_lora`]'s rule). New adapters draw `A` from a generator
    /// seeded with `seed`, layer by layer in [`LoraTarget::ALL`] order, so a run is
    /// reproducible.
    pub fn with_lora(self, cfg: &LoraConfig, seed: u64) -> Self {
        let device = self.embed_tokens.device();
        let mut model = self.no_grad();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4c6f_5241);
        for layer in 0..model.layers.len() {
            for t in LoraTarget::ALL {
                let lin = model.target_mut(layer, t);
                let wanted = cfg.targets.contains(&t);
                let keep = wanted
                    && lin
                        .lora
                        .as_ref()
                        .is_some_and(|l| l.rank() == cfg.rank && l.alpha == cfg.alpha);
                if !keep {
                    lin.fold_lora();
                }
                if !wanted {
                    continue;
                }
                match &mut lin.lora {
                    Some(l) => {
                        l.a = l.a.clone().set_require_grad(true);
                        l.b = l.b.clone().set_require_grad(true);
                    }
                    None => {
                        let [d_in, d_out] = lin.weight.val().dims();
                        lin.lora = Some(Lora::new(
                            d_in, d_out, cfg.rank, cfg.alpha, &mut rng, &device,
                        ));
                    }
                }
            }
        }
        model
    }

    /// The model with every adapter folded into its base weight (`W + scale·A·B`) and removed:
    /// what a full fine-tune of an adapted model, and the merged export, start from. The
    /// weights keep their `require_grad` setting.
    pub fn merge_lora(mut self) -> Self {
        for layer in 0..self.layers.len() {
            for t in LoraTarget::ALL {
                self.target_mut(layer, t).fold_lora();
            }
        }
        self
    }

    /// The model with every adapter removed, not folded in: the frozen base a LoRA run trains
    /// beside, which its checkpoints store once per run (`sleuth::rl::checkpoint`). The
    /// weights keep their `require_grad` setting.
    pub fn strip_lora(mut self) -> Self {
        for layer in 0..self.layers.len() {
            for t in LoraTarget::ALL {
                self.target_mut(layer, t).lora = None;
            }
        }
        self
    }

    /// The adapters' shape when the model has any: rank and alpha of the first adapter, and
    /// the targets that carry one in the first layer.
    pub fn lora_config(&self) -> Option<LoraConfig> {
        if self.layers.is_empty() {
            return None;
        }
        let targets: Vec<LoraTarget> = LoraTarget::ALL
            .into_iter()
            .filter(|&t| self.target(0, t).lora.is_some())
            .collect();
        let first = self.target(0, *targets.first()?).lora.as_ref()?;
        Some(LoraConfig {
            rank: first.rank(),
            alpha: first.alpha,
            targets,
        })
    }

    /// Adapter parameters (numbers in `A` and `B` over all layers); 0 without adapters.
    pub fn lora_params(&self) -> usize {
        (0..self.layers.len())
            .flat_map(|i| LoraTarget::ALL.map(|t| (i, t)))
            .filter_map(|(i, t)| self.target(i, t).lora.as_ref())
            .map(Module::num_params)
            .sum()
    }
}

impl<B: Backend> Linear<B> {
    /// Folds the adapter (if any) into the base weight and removes it, keeping the weight's
    /// `require_grad` setting.
    fn fold_lora(&mut self) {
        if let Some(l) = self.lora.take() {
            let delta = l.delta().detach();
            let weight = self.weight.clone();
            self.weight = weight.map(|w| {
                let require_grad = w.is_require_grad();
                (w.detach() + delta).set_require_grad(require_grad)
            });
        }
    }
}
