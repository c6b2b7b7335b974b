//! The Llama decoder over quantized weights, with its own KV cache: prefill and batched
//! decode for generation, nothing for training.
//!
//! The same arithmetic as [`crate::Llama`] (HF's `modeling_llama.py`: pre-norm blocks,
//! rotate-half RoPE, grouped-query attention with head `h` reading kv head `h / group`,
//! SwiGLU), with every linear layer a [`QMatrix`]. q/k/v are fused into one matrix and
//! gate/up into another, so a layer runs four quantized products. Norms, RoPE, attention and
//! the residual stream stay in f32; the KV cache holds f32 keys and values.
//!
//! A call processes a list of tokens, each `(row, id)`, at their rows' next positions: a
//! prefill is many tokens of one row, a decode step one token of each active row. Keys and
//! values of all the call's tokens are written first, then each token attends causally over
//! its own row, so both cases are one code path.

use burn::tensor::backend::Backend;
use rayon::prelude::*;

use super::{Isa, QActs, QMatrix, QuantFormat};
use crate::llama::Llama;
use crate::load::to_host;

/// Per-row key/value storage of one layer: `[pos][kv_head][head_dim]` f32, grown as the row
/// grows.
#[derive(Debug, Clone, Default)]
struct RowKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// KV cache of a [`QuantLlama`]: `layers × rows` growable buffers and each row's length.
/// Memory: `2 · layers · kv_heads · head_dim · 4` bytes per cached token (92 KB for the
/// 135M default).
#[derive(Debug, Clone)]
pub struct QuantCache {
    layers: Vec<Vec<RowKv>>,
    lens: Vec<usize>,
    capacity: usize,
}

impl QuantCache {
    /// Rows (sequences).
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Tokens per row the cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens cached in `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// Whether every row is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Copies row `src`'s cached tokens into every row in `dst` (a group's G samples share
    /// one prefilled prompt).
    pub fn fork_row(&mut self, src: usize, dst: &[usize]) {
        for layer in &mut self.layers {
            let from = layer[src].clone();
            for &d in dst {
                layer[d] = from.clone();
            }
        }
        for &d in dst {
            self.lens[d] = self.lens[src];
        }
    }
}

/// A low-rank update applied beside a quantized product (QLoRA's placement: the base stays
/// quantized and frozen, the adapter is added to its output; Dettmers et al. 2023, "QLoRA",
/// arXiv 2305.14314): output features `offset..offset + d_out` of the product gain
/// `(x·A)·(scale·B)` for its input rows `x`, in f32 as the trainer computes it (bf16 copies,
/// tried, halved the adapters' bytes without a measurable gain in decode speed).
#[derive(Clone)]
struct LowRank {
    /// First output feature of the fused product this adapter adds to (q, k or v within
    /// qkv; gate or up within gate_up).
    offset: usize,
    d_out: usize,
    rank: usize,
    /// `Aᵀ`, `[rank, in]`: each of `A`'s columns contiguous, one dot product per rank.
    a_t: Vec<f32>,
    /// `scale · B`, `[rank, d_out]`.
    b: Vec<f32>,
}

/// The adapters beside one layer's four products; empty lists where a product has none.
#[derive(Clone, Default)]
struct LayerAdapters {
    qkv: Vec<LowRank>,
    o: Vec<LowRank>,
    gate_up: Vec<LowRank>,
    down: Vec<LowRank>,
}

impl LayerAdapters {
    /// Every adapter of the layer, whichever product it belongs to.
    fn all(&self) -> impl Iterator<Item = &LowRank> {
        [&self.qkv, &self.o, &self.gate_up, &self.down]
            .into_iter()
            .flatten()
    }
}

/// Rows of a call that share one read of the adapters' weights in [`add_low_rank`].
const LOW_RANK_BLOCK: usize = 8;

/// Adds every adapter of `parts` to `out` (`[n, width]`) for the input rows `x` (`[n, d_in]`,
/// the f32 activations the quantized product read). Rows go in blocks of
/// [`LOW_RANK_BLOCK`], each reading the adapters once (a decode step of 8 rows reads them once,
/// not 8 times); blocks are spread over the rayon pool from [`PAR_ROWS`] rows on (a prefill).
/// A row's sums run in one fixed order whatever its block, so its bits do not depend on
/// batching.
fn add_low_rank(
    parts: &[LowRank],
    x: &[f32],
    d_in: usize,
    out: &mut [f32],
    width: usize,
    isa: Isa,
) {
    let n = x.len() / d_in;
    let block = |(xb, ob): (&[f32], &mut [f32])| low_rank_block(parts, xb, ob, d_in, width, isa);
    let (xs, os) = (LOW_RANK_BLOCK * d_in, LOW_RANK_BLOCK * width);
    if n >= PAR_ROWS {
        x.par_chunks(xs).zip(out.par_chunks_mut(os)).for_each(block);
    } else {
        x.chunks(xs).zip(out.chunks_mut(os)).for_each(block);
    }
}

/// [`add_low_rank`] for one block of at most [`LOW_RANK_BLOCK`] rows; compiled for AVX2 +
/// FMA on every `isa` but the scalar one (as [`Head::attend`]).
fn low_rank_block(
    parts: &[LowRank],
    x: &[f32],
    out: &mut [f32],
    d_in: usize,
    width: usize,
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in `Head::attend`: a non-scalar `Isa` exists only where AVX2 and FMA do.
        return unsafe { low_rank_block_avx2(parts, x, out, d_in, width) };
    }
    let _ = isa;
    low_rank_block_body(parts, x, out, d_in, width)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn low_rank_block_avx2(
    parts: &[LowRank],
    x: &[f32],
    out: &mut [f32],
    d_in: usize,
    width: usize,
) {
    low_rank_block_body(parts, x, out, d_in, width)
}

/// For each adapter and each rank `r`: `t_i = x_i · Aᵀ[r]` for every row `i` of the block,
/// then `out_i[offset..] += t_i · (scale·B)[r]`, so each row of `Aᵀ` and `B` is read once per
/// block while it is in cache.
#[inline(always)]
fn low_rank_block_body(parts: &[LowRank], x: &[f32], out: &mut [f32], d_in: usize, width: usize) {
    let rows = x.len() / d_in;
    let mut t = [0f32; LOW_RANK_BLOCK];
    for p in parts {
        for r in 0..p.rank {
            let a = &p.a_t[r * d_in..(r + 1) * d_in];
            for (i, ti) in t[..rows].iter_mut().enumerate() {
                *ti = dot(a, &x[i * d_in..(i + 1) * d_in]);
            }
            let b = &p.b[r * p.d_out..(r + 1) * p.d_out];
            for (i, &c) in t[..rows].iter().enumerate() {
                let at = i * width + p.offset;
                for (ov, &bv) in out[at..at + p.d_out].iter_mut().zip(b) {
                    *ov += c * bv;
                }
            }
        }
    }
}

#[derive(Clone)]
struct QLayer {
    attn_norm: Vec<f32>,
    /// `[(heads + 2·kv_heads)·head_dim, hidden]`: q rows, then k, then v.
    qkv: QMatrix,
    qkv_bias: Option<Vec<f32>>,
    /// Qwen3's per-head RMSNorm gains `[head_dim]` for queries and keys, applied before RoPE.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    o: QMatrix,
    ffn_norm: Vec<f32>,
    /// `[2·intermediate, hidden]`: gate rows, then up.
    gate_up: QMatrix,
    down: QMatrix,
    /// Adapters applied beside the quantized products ([`QuantLlama::from_base`]); empty when
    /// adapters were folded into the weights or the model has none.
    adapters: LayerAdapters,
}

/// A Llama-family decoder over block-quantized weights (module docs).
#[derive(Clone)]
pub struct QuantLlama {
    hidden: usize,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
    eps: f32,
    inv_freq: Vec<f32>,
    embed: Vec<f32>,
    layers: Vec<QLayer>,
    norm: Vec<f32>,
    head: QMatrix,
    format: QuantFormat,
    isa: Isa,
}

impl std::fmt::Debug for QuantLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantLlama")
            .field("format", &self.format)
            .field("isa", &self.isa)
            .field("layers", &self.layers.len())
            .field("hidden", &self.hidden)
            .field("vocab", &self.vocab)
            .finish()
    }
}

/// Attention work (flops) below which a call attends on the calling thread.
const ATTENTION_PAR_FLOPS: usize = 1 << 20;

/// Tokens in a call from which the element-wise work between products (activation
/// quantization, SwiGLU) is spread over the rayon pool: a prefill, not a decode step.
pub(crate) const PAR_ROWS: usize = 16;

/// One (token, head) of causal attention over a row's cached keys and values.
struct Head<'a> {
    /// The query, `[head_dim]`, RoPE applied.
    q: &'a [f32],
    /// The row's keys and values, `[pos][kv_head][head_dim]`.
    k: &'a [f32],
    v: &'a [f32],
    /// `kv_head · head_dim`: where this head's slice starts within a position.
    offset: usize,
    /// `kv_heads · head_dim`: floats per position.
    stride: usize,
    /// Positions attended: the token's own position + 1.
    span: usize,
    /// `1 / √head_dim`.
    scale: f32,
}

impl Head<'_> {
    /// Writes `softmax(q·Kᵀ·scale)·V` into `out` (`[head_dim]`), with `scores` as scratch.
    /// On every `isa` but the scalar one the body runs compiled for AVX2 + FMA (the binary
    /// targets baseline x86-64, whose 4-wide SSE the compiler would otherwise use).
    fn attend(&self, isa: Isa, scores: &mut Vec<f32>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: an `Isa` other than Scalar is only produced after feature detection
            // (`Isa::detect`, `QuantLlama::with_isa`), and AVX-512 VNNI's check includes AVX2
            // and FMA.
            return unsafe { self.attend_avx2(scores, out) };
        }
        let _ = isa;
        self.attend_body(scores, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, scores: &mut Vec<f32>, out: &mut [f32]) {
        // SAFETY: the caller guarantees AVX2 + FMA (as this function's).
        unsafe {
            match self.q.len() {
                64 => attend_x86::attend::<8>(self, scores, out),
                128 => attend_x86::attend::<16>(self, scores, out),
                _ => self.attend_body(scores, out),
            }
        }
    }

    #[inline(always)]
    fn attend_body(&self, scores: &mut Vec<f32>, out: &mut [f32]) {
        let hd = self.q.len();
        let at = |j: usize| j * self.stride + self.offset;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in 0..self.span {
            let s = dot(self.q, &self.k[at(j)..at(j) + hd]) * self.scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let inv = 1.0 / total;
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let w = p * inv;
            for (o, &vv) in out.iter_mut().zip(&self.v[at(j)..at(j) + hd]) {
                *o += w * vv;
            }
        }
    }
}

/// [`Head::attend`] in AVX2 + FMA intrinsics for head sizes of 64 and 128 (`NV` vectors of
/// 8 lanes): the loops the compiler left as serial chains of separate multiplies and adds
/// (the score dot, `out += w·v` through memory) and the scalar `expf` per position were a
/// third of a stage-1 rollout's time on an AVX2 CPU (docs/performance.md).
///
/// Scores go 8 positions at a time: 8 dots, each two FMA chains, reduced into one vector of
/// 8 scores by a `vhaddps` tree; `exp` is a degree-6 polynomial on 8 lanes (relative error
/// under 4e-7, about 3 ulp, against `f32::exp`: tested); `out` stays in registers over the
/// positions. Every (token, head) runs the same code whatever the batch, so a token's
/// output does not depend on the rows beside it.
#[cfg(target_arch = "x86_64")]
mod attend_x86 {
    use super::Head;
    use std::arch::x86_64::*;

    /// `[Σ a0, Σ a1, …, Σ a7]`: each input's 8 lanes summed, in input order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps(u0, u1, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31),
        )
    }

    /// `e^x` on 8 lanes for `x ≤ 0` (softmax after subtracting the max): `2^n · e^r` with
    /// `n = round(x·log2 e)` and `r = x − n·ln 2` (ln 2 in two parts, Cody and Waite, so `r`
    /// keeps its bits for large `|x|`), `e^r` by its Taylor polynomial to degree 6 on
    /// `|r| ≤ ln2/2`; below -87 (where f32 `e^x` turns subnormal) it returns 0, as for -∞.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_neg(x: __m256) -> __m256 {
        let low = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ);
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let t = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
        let n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        // 1 / k!, highest first.
        let c = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let mut p = _mm256_set1_ps(c[0]);
        for &k in &c[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(k));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_andnot_ps(low, _mm256_mul_ps(p, two_n))
    }

    /// # Safety
    /// AVX2 + FMA; `h.q.len() == 8·NV`; `out.len() == 8·NV`; `h.k`, `h.v` hold `h.span`
    /// positions of `h.stride` floats with the head's slice at `h.offset`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend<const NV: usize>(
        h: &Head<'_>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let hd = 8 * NV;
        assert!(h.q.len() == hd && out.len() == hd && h.offset + hd <= h.stride);
        assert!(h.k.len() >= h.span * h.stride && h.v.len() >= h.span * h.stride);
        let span = h.span;
        let at = |j: usize| j * h.stride + h.offset;
        // SAFETY (every load below): positions j < span and lanes < hd lie inside k / v / q
        // (asserted above); loads are unaligned.
        let q: [__m256; NV] = std::array::from_fn(|v| unsafe {
            _mm256_mul_ps(
                _mm256_loadu_ps(h.q.as_ptr().add(8 * v)),
                _mm256_set1_ps(h.scale),
            )
        });
        let dot = |j: usize| {
            let k = unsafe { h.k.as_ptr().add(at(j)) };
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for v in (0..NV).step_by(2) {
                unsafe {
                    a0 = _mm256_fmadd_ps(q[v], _mm256_loadu_ps(k.add(8 * v)), a0);
                    a1 = _mm256_fmadd_ps(q[v + 1], _mm256_loadu_ps(k.add(8 * v + 8)), a1);
                }
            }
            _mm256_add_ps(a0, a1)
        };
        let padded = span.next_multiple_of(8);
        scores.clear();
        scores.resize(padded, f32::NEG_INFINITY);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for j0 in (0..padded).step_by(8) {
            // Positions past the span keep -∞ (their dot is never computed).
            let live = (span - j0).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (p, a) in acc.iter_mut().enumerate().take(live) {
                *a = dot(j0 + p);
            }
            let mut s = hsum8(acc);
            if live < 8 {
                let lanes = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
                let dead = _mm256_cmp_ps(lanes, _mm256_set1_ps(live as f32), _CMP_GE_OQ);
                s = _mm256_blendv_ps(s, _mm256_set1_ps(f32::NEG_INFINITY), dead);
            }
            vmax = _mm256_max_ps(vmax, s);
            // SAFETY: scores holds padded ≥ j0 + 8 floats.
            unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(j0), s) };
        }
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
        let max = _mm256_set1_ps(lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
        let mut vtotal = _mm256_setzero_ps();
        for j0 in (0..padded).step_by(8) {
            // SAFETY: as above.
            unsafe {
                let e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(scores.as_ptr().add(j0)), max));
                vtotal = _mm256_add_ps(vtotal, e);
                _mm256_storeu_ps(scores.as_mut_ptr().add(j0), e);
            }
        }
        // SAFETY: lanes holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vtotal) };
        let inv = 1.0 / lanes.iter().sum::<f32>();
        // out = Σ_j w_j · v_j, eight vectors of `out` in registers per pass over the positions.
        for c in (0..NV).step_by(8) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &p) in scores[..span].iter().enumerate() {
                let w = _mm256_set1_ps(p * inv);
                let row = unsafe { h.v.as_ptr().add(at(j) + 8 * c) };
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(row.add(8 * v)) }, *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                // SAFETY: out holds hd = 8·NV floats.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * (c + v)), *a) };
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::arch::x86_64::*;

        /// The vector `exp` against `f32::exp` over the softmax range, and 0 for -∞.
        #[test]
        fn exp_neg_matches_f32_exp() {
            if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                return;
            }
            let mut worst = 0f32;
            let mut x = -86.0f32;
            while x <= 0.0 {
                let xs = [x, x / 3.0, x / 7.0, x / 50.0, -1e-6, 0.0, x / 1.5, x / 2.5];
                let mut got = [0f32; 8];
                // SAFETY: AVX2 + FMA checked above; arrays of 8 floats.
                unsafe {
                    let v = super::exp_neg(_mm256_loadu_ps(xs.as_ptr()));
                    _mm256_storeu_ps(got.as_mut_ptr(), v);
                }
                for (g, &x) in got.iter().zip(&xs) {
                    let want = x.exp();
                    worst = worst.max((g - want).abs() / want);
                }
                x += 0.0137;
            }
            assert!(worst < 4e-7, "worst relative error {worst}");
            let mut got = [1f32; 8];
            // SAFETY: as above.
            unsafe {
                let v = super::exp_neg(_mm256_set1_ps(f32::NEG_INFINITY));
                _mm256_storeu_ps(got.as_mut_ptr(), v);
            }
            assert_eq!(got, [0.0; 8]);
        }
    }
}

/// `a · b` with 8 independent partial sums, so the compiler can keep them in one SIMD
/// register (a plain `.sum()` of products is a serial chain: f32 addition is not
/// reassociated).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`rms_norm`] of each `w.len()`-wide row of `x` into the same row of `out`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks(w.len()).zip(out.chunks_mut(w.len())) {
        rms_norm(row, w, eps, o);
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

impl QuantLlama {
    /// Whether every linear layer's input width is a multiple of the block size (32), which
    /// quantization needs (true of SmolLM2, Llama and Qwen2.5 shapes).
    pub fn supports<B: Backend>(model: &Llama<B>) -> bool {
        model.layers.iter().all(|l| {
            [
                &l.self_attn.q_proj,
                &l.self_attn.o_proj,
                &l.mlp.gate_proj,
                &l.mlp.down_proj,
            ]
            .iter()
            .all(|p| p.weight.val().dims()[0].is_multiple_of(super::QK))
        }) && model.embed_tokens.val().dims()[1].is_multiple_of(super::QK)
    }

    /// Quantizes `model`'s linear layers to `format`; the output head is Q8_0 (as in the
    /// default GGUF, whose tied embedding is Q8_0), the embedding table and norms stay f32.
    /// Cost: one pass over the weights (see docs/performance.md for the 135M figure).
    ///
    /// # Panics
    /// When a linear layer's input width is not a multiple of 32.
    pub fn from_llama<B: Backend>(model: &Llama<B>, format: QuantFormat) -> Self {
        Self::quantize(model, format, true)
    }

    /// Quantizes `model`'s base weights only and applies its LoRA adapters beside the
    /// quantized products, in f32 (QLoRA's placement; [`Self::set_adapters`]).
    /// A LoRA trainer builds this once and, since the base is frozen, refreshes only the
    /// adapters after each update instead of re-quantizing every weight. Per decoded token
    /// the adapters add `2 · rank · (in + out)` flops per target and read their own weights
    /// (19.6 MB at rank 16 on all seven targets of the 135M default, against 151 MB of Q8_0).
    /// For a model without adapters it is [`Self::from_llama`].
    ///
    /// # Panics
    /// As [`Self::from_llama`].
    pub fn from_base<B: Backend>(model: &Llama<B>, format: QuantFormat) -> Self {
        let mut q = Self::quantize(model, format, false);
        q.set_adapters(model);
        q
    }

    /// Replaces the adapters applied beside the quantized base with `model`'s (one host copy
    /// of the adapters; `Aᵀ` and `scale · B` kept). Only the adapters are read: `model`'s
    /// base weights must be the ones this engine quantized ([`Self::from_base`]), which LoRA
    /// training guarantees by freezing them. A model without adapters clears them.
    ///
    /// # Panics
    /// When `model` has a different number of layers or shapes than the engine.
    pub fn set_adapters<B: Backend>(&mut self, model: &Llama<B>) {
        use crate::lora::LoraTarget;
        assert_eq!(
            model.layers.len(),
            self.layers.len(),
            "set_adapters: the model has another number of layers than the engine"
        );
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let mut adapters = LayerAdapters::default();
            for t in LoraTarget::ALL {
                let Some(lora) = &model.target(i, t).lora else {
                    continue;
                };
                let [d_in, rank] = lora.a.val().dims();
                let d_out = lora.b.val().dims()[1];
                let scale = lora.scale() as f32;
                let (list, offset) = match t {
                    LoraTarget::QProj => (&mut adapters.qkv, 0),
                    LoraTarget::KProj => (&mut adapters.qkv, nh * hd),
                    LoraTarget::VProj => (&mut adapters.qkv, (nh + nkv) * hd),
                    LoraTarget::OProj => (&mut adapters.o, 0),
                    LoraTarget::GateProj => (&mut adapters.gate_up, 0),
                    LoraTarget::UpProj => (&mut adapters.gate_up, self.intermediate),
                    LoraTarget::DownProj => (&mut adapters.down, 0),
                };
                list.push(LowRank {
                    offset,
                    d_out,
                    rank,
                    a_t: crate::load::transpose(&to_host(lora.a.val()), d_in, rank),
                    b: to_host(lora.b.val())
                        .into_iter()
                        .map(|v| v * scale)
                        .collect(),
                });
            }
            layer.adapters = adapters;
        }
    }

    /// Whether adapters are applied beside the quantized base ([`Self::from_base`]), rather
    /// than folded into it or absent.
    pub fn has_adapters_beside(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.adapters.all().next().is_some())
    }

    /// The engine over `model`'s weights: with the adapters folded into them (`fold`), or
    /// over the base weights alone.
    fn quantize<B: Backend>(model: &Llama<B>, format: QuantFormat, fold: bool) -> Self {
        let _span = tracing::debug_span!("quantize", format = format.name()).entered();
        let a = &model.layers[0].self_attn;
        let (n_heads, n_kv, head_dim) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let [vocab, hidden] = model.embed_tokens.val().dims();
        let intermediate = model.layers[0].mlp.gate_proj.weight.val().dims()[1];
        let eps = model.norm.eps as f32;
        let fused = |parts: &[(Vec<f32>, usize, usize)]| -> QMatrix {
            let views: Vec<(&[f32], usize, usize)> =
                parts.iter().map(|(w, di, dd)| (&w[..], *di, *dd)).collect();
            QMatrix::quantize_transposed(&views, format)
        };
        // The weight each layer applies: an adapter ([`crate::lora`]) is folded in here, or
        // left out for `set_adapters` to apply beside.
        let linear = |l: &crate::llama::Linear<B>| {
            let [di, d_out] = l.weight.val().dims();
            let w = if fold {
                l.merged_weight()
            } else {
                l.weight.val()
            };
            (to_host(w), di, d_out)
        };
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let at = &layer.self_attn;
                let qkv_bias = at.q_proj.bias.as_ref().map(|qb| {
                    let mut b = to_host(qb.val());
                    for l in [&at.k_proj, &at.v_proj] {
                        match &l.bias {
                            Some(x) => b.extend(to_host(x.val())),
                            None => b.extend(vec![0.0; l.weight.val().dims()[1]]),
                        }
                    }
                    b
                });
                let qk_norm = match (&at.q_norm, &at.k_norm) {
                    (Some(q), Some(k)) => Some((to_host(q.weight.val()), to_host(k.weight.val()))),
                    _ => None,
                };
                QLayer {
                    qk_norm,
                    attn_norm: to_host(layer.input_layernorm.weight.val()),
                    qkv: fused(&[linear(&at.q_proj), linear(&at.k_proj), linear(&at.v_proj)]),
                    qkv_bias,
                    o: fused(&[linear(&at.o_proj)]),
                    ffn_norm: to_host(layer.post_attention_layernorm.weight.val()),
                    gate_up: fused(&[linear(&layer.mlp.gate_proj), linear(&layer.mlp.up_proj)]),
                    down: fused(&[linear(&layer.mlp.down_proj)]),
                    adapters: LayerAdapters::default(),
                }
            })
            .collect();
        let embed = to_host(model.embed_tokens.val());
        let head = match &model.lm_head {
            Some(w) => QMatrix::quantize_transposed(
                &[(&to_host(w.val()), hidden, vocab)],
                QuantFormat::Q8_0,
            ),
            None => QMatrix::quantize(&embed, vocab, hidden, QuantFormat::Q8_0),
        };
        let inv_freq = crate::config::rope_inv_freq(head_dim, model.rope_theta)
            .map(|f| f as f32)
            .collect();
        Self {
            hidden,
            n_heads,
            n_kv,
            head_dim,
            intermediate,
            vocab,
            eps,
            inv_freq,
            embed,
            layers,
            norm: to_host(model.norm.weight.val()),
            head,
            format,
            isa: Isa::active(),
        }
    }

    /// The same engine on another instruction-set path (tests compare paths with it).
    /// Returns `None` when this CPU cannot run `isa`.
    pub fn with_isa(mut self, isa: Isa) -> Option<Self> {
        isa.supported().then(|| {
            self.isa = isa;
            self
        })
    }

    /// The instruction-set path of the kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Weight format of the linear layers.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Vocabulary size (logits per token).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Bytes of weights read per decoded token: all quantized linear layers, the head, and
    /// the f32 adapters applied beside them ([`Self::from_base`]).
    pub fn weight_bytes(&self) -> usize {
        let adapters = |a: &LayerAdapters| {
            a.all()
                .map(|p| 4 * (p.a_t.len() + p.b.len()))
                .sum::<usize>()
        };
        self.head.bytes()
            + self
                .layers
                .iter()
                .map(|l| {
                    l.qkv.bytes()
                        + l.o.bytes()
                        + l.gate_up.bytes()
                        + l.down.bytes()
                        + adapters(&l.adapters)
                })
                .sum::<usize>()
    }

    /// An empty cache of `rows` sequences of up to `capacity` tokens each.
    pub fn new_cache(&self, rows: usize, capacity: usize) -> QuantCache {
        QuantCache {
            layers: (0..self.layers.len())
                .map(|_| vec![RowKv::default(); rows])
                .collect(),
            lens: vec![0; rows],
            capacity,
        }
    }

    /// Appends `tokens` to `row` and returns the logits of the last one, `[vocab]`.
    ///
    /// # Panics
    /// When `tokens` is empty or the row would exceed the cache capacity.
    pub fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut QuantCache) -> Vec<f32> {
        assert!(!tokens.is_empty(), "prefill_row needs at least one token");
        let items: Vec<(usize, u32)> = tokens.iter().map(|&t| (row, t)).collect();
        let mut want = vec![false; tokens.len()];
        want[tokens.len() - 1] = true;
        self.forward(&items, &want, cache)
    }

    /// One token for each active row; returns `[rows, vocab]` logits (zeros for inactive
    /// rows, which are neither computed nor advanced).
    ///
    /// # Panics
    /// When lengths differ from the cache's rows, or an active row is full.
    pub fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut QuantCache) -> Vec<f32> {
        assert_eq!(tokens.len(), cache.rows());
        assert_eq!(active.len(), cache.rows());
        let items: Vec<(usize, u32)> = (0..tokens.len())
            .filter(|&r| active[r])
            .map(|r| (r, tokens[r]))
            .collect();
        let mut out = vec![0f32; tokens.len() * self.vocab];
        if items.is_empty() {
            return out;
        }
        let logits = self.forward(&items, &vec![true; items.len()], cache);
        for (i, &(r, _)) in items.iter().enumerate() {
            out[r * self.vocab..(r + 1) * self.vocab]
                .copy_from_slice(&logits[i * self.vocab..(i + 1) * self.vocab]);
        }
        out
    }

    /// Runs `items` (`(row, token id)`, a row's tokens in order) at their rows' next
    /// positions; returns the logits of the items with `want[i]`, concatenated in order.
    ///
    /// Runs on a rayon worker (`rayon::scope` moves a call from outside the pool into it):
    /// the ~120 parallel products of a decode step are then forked from a worker, whose peer
    /// is usually still spinning for work, instead of each being injected from outside the
    /// pool and waited for with a sleep and a wake-up.
    fn forward(&self, items: &[(usize, u32)], want: &[bool], cache: &mut QuantCache) -> Vec<f32> {
        rayon::scope(|_| self.forward_on_worker(items, want, cache))
    }

    /// `x·W` for the rows `x` (`[n, d_in]` f32) over the quantized `w`, plus the adapters
    /// `parts` beside it: `[n, w.rows()]`. The adapters run as the other half of a
    /// `rayon::join` with the quantized product, into a buffer of their own added at the end:
    /// run after the product on one thread, they left the pool's other thread idle long
    /// enough to fall asleep, and every next product paid its wake-up (batch-1 decode was
    /// 15 % slower than with the adapters folded in).
    fn product(&self, w: &QMatrix, parts: &[LowRank], x: &[f32], d_in: usize) -> Vec<f32> {
        let n = x.len() / d_in;
        let base = || w.matmul(&QActs::quantize(x, n, d_in), self.isa);
        if parts.is_empty() {
            return base();
        }
        let width = w.rows();
        let (mut y, update) = rayon::join(base, || {
            let mut update = vec![0f32; n * width];
            add_low_rank(parts, x, d_in, &mut update, width, self.isa);
            update
        });
        for (a, b) in y.iter_mut().zip(&update) {
            *a += b;
        }
        y
    }

    fn forward_on_worker(
        &self,
        items: &[(usize, u32)],
        want: &[bool],
        cache: &mut QuantCache,
    ) -> Vec<f32> {
        let n = items.len();
        let (h, hd, nh, nkv) = (self.hidden, self.head_dim, self.n_heads, self.n_kv);
        // Positions: each row continues from its cached length.
        let mut next = cache.lens.clone();
        let pos: Vec<usize> = items
            .iter()
            .map(|&(r, _)| {
                let p = next[r];
                next[r] += 1;
                assert!(p < cache.capacity, "KV cache capacity exceeded on row {r}");
                p
            })
            .collect();
        // RoPE tables per item: cos/sin of half the head dims.
        let half = hd / 2;
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for (i, &p) in pos.iter().enumerate() {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (p as f32 * f).sin_cos();
                cos[i * half + j] = c;
                sin[i * half + j] = s;
            }
        }
        let rope = |x: &mut [f32], i: usize| {
            for j in 0..half {
                let (a, b) = (x[j], x[j + half]);
                let (c, s) = (cos[i * half + j], sin[i * half + j]);
                x[j] = a * c - b * s;
                x[j + half] = b * c + a * s;
            }
        };

        let mut x = vec![0f32; n * h];
        for (i, &(_, id)) in items.iter().enumerate() {
            let id = id as usize;
            x[i * h..(i + 1) * h].copy_from_slice(&self.embed[id * h..(id + 1) * h]);
        }
        let mut normed = vec![0f32; n * h];
        let qkv_w = (nh + 2 * nkv) * hd;
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, self.eps, &mut normed);
            let mut qkv = self.product(&layer.qkv, &layer.adapters.qkv, &normed, h);
            for (i, t) in qkv.chunks_mut(qkv_w).enumerate() {
                if let Some(b) = &layer.qkv_bias {
                    for (v, bb) in t.iter_mut().zip(b) {
                        *v += bb;
                    }
                }
                if let Some((qn, kn)) = &layer.qk_norm {
                    for head in 0..nh + nkv {
                        let g = if head < nh { qn } else { kn };
                        let x = &mut t[head * hd..(head + 1) * hd];
                        let src = x.to_vec();
                        rms_norm(&src, g, self.eps, x);
                    }
                }
                for head in 0..nh + nkv {
                    rope(&mut t[head * hd..(head + 1) * hd], i);
                }
            }
            // Write every item's key and value before any attention (module docs).
            let rows_kv = &mut cache.layers[l];
            for (i, &(r, _)) in items.iter().enumerate() {
                let t = &qkv[i * qkv_w..(i + 1) * qkv_w];
                let kv = &mut rows_kv[r];
                let at = pos[i] * nkv * hd;
                let need = at + nkv * hd;
                if kv.k.len() < need {
                    kv.k.resize(need, 0.0);
                    kv.v.resize(need, 0.0);
                }
                kv.k[at..need].copy_from_slice(&t[nh * hd..(nh + nkv) * hd]);
                kv.v[at..need].copy_from_slice(&t[(nh + nkv) * hd..]);
            }
            let rows_kv = &cache.layers[l];
            let mut attn = vec![0f32; n * nh * hd];
            let attend = |scores: &mut Vec<f32>, ih: usize, out: &mut [f32]| {
                let (i, head) = (ih / nh, ih % nh);
                let kv = &rows_kv[items[i].0];
                let one = Head {
                    q: &qkv[i * qkv_w + head * hd..i * qkv_w + (head + 1) * hd],
                    k: &kv.k,
                    v: &kv.v,
                    offset: (head / group) * hd,
                    stride: nkv * hd,
                    span: pos[i] + 1,
                    scale,
                };
                one.attend(self.isa, scores, out);
            };
            // Small attention (a decode step over short rows) is cheaper on this thread than
            // the hand-off to the pool: about 2·span·head_dim flops per (token, head).
            let work: usize = pos.iter().map(|p| (p + 1) * nh * hd * 2).sum();
            if work < ATTENTION_PAR_FLOPS {
                let mut scores = Vec::new();
                for (ih, out) in attn.chunks_mut(hd).enumerate() {
                    attend(&mut scores, ih, out);
                }
            } else {
                attn.par_chunks_mut(hd)
                    .enumerate()
                    .for_each_init(Vec::new, |scores, (ih, out)| attend(scores, ih, out));
            }
            let o = self.product(&layer.o, &layer.adapters.o, &attn, nh * hd);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            rms_norm_rows(&x, &layer.ffn_norm, self.eps, &mut normed);
            let gu = self.product(&layer.gate_up, &layer.adapters.gate_up, &normed, h);
            let inter = self.intermediate;
            let mut act = vec![0f32; n * inter];
            let swiglu = |(a, t): (&mut [f32], &[f32])| {
                for (j, o) in a.iter_mut().enumerate() {
                    let g = t[j];
                    *o = g / (1.0 + (-g).exp()) * t[inter + j];
                }
            };
            if n >= PAR_ROWS {
                act.par_chunks_mut(inter)
                    .zip(gu.par_chunks(2 * inter))
                    .for_each(swiglu);
            } else {
                act.chunks_mut(inter)
                    .zip(gu.chunks(2 * inter))
                    .for_each(swiglu);
            }
            let d = self.product(&layer.down, &layer.adapters.down, &act, inter);
            for (a, b) in x.iter_mut().zip(&d) {
                *a += b;
            }
        }
        cache.lens = next;
        let picked: Vec<usize> = (0..n).filter(|&i| want[i]).collect();
        if picked.is_empty() {
            return Vec::new();
        }
        let mut last = vec![0f32; picked.len() * h];
        for (k, &i) in picked.iter().enumerate() {
            rms_norm(
                &x[i * h..(i + 1) * h],
                &self.norm,
                self.eps,
                &mut last[k * h..(k + 1) * h],
            );
        }
        self.head
            .matmul(&QActs::quantize(&last, picked.len(), h), self.isa)
    }
}
