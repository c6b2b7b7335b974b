//! Decoding from block-quantized weights on the CPU: the engine under rollouts, evaluation
//! and serving when `[rollout] weights` is `q8_0` or `q4_1`.
//!
//! **Why a second forward pass.** Decoding one token reads every weight once, so at batch 1
//! (and at the G ≤ 16 rows of a rollout) its speed is the memory traffic of the weights: the
//! 135M default is 540 MB per token in f32, 143 MB in Q8_0, 85 MB in Q4_1. burn's f32 tensors
//! cannot go below the first figure, so decoding runs here instead: weights as 32-element
//! blocks (ggml's Q8_0 and Q4_1 geometry), activations quantized to Q8 blocks per token, and
//! integer dot products with SIMD chosen at run time ([`kernels::Isa`]: AVX-512 VNNI or AVX2
//! through the tiled GEMM of [`gemm`], or a portable fallback). The training forward stays in
//! burn, in f32: the update scores the tokens itself, and the rollout/training log-prob
//! mismatch this introduces is measured per step (`logprob_mismatch` in the metrics) and can
//! be corrected by truncated importance sampling (Yao et al. 2025; `[train] tis_cap`).
//!
//! Layout: [`kernels`] holds the ISA detection and the portable row dot products; [`gemm`] the
//! tiled product with its repacked weights and its AVX-512 VNNI and AVX2 micro-kernels; [`QMatrix`] a quantized `[out, in]` matrix and its
//! batched product; [`engine`] the Llama decoder ([`QuantLlama`]) with its own
//! KV cache ([`QuantCache`]). Requantizing the 135M policy from f32 takes a fraction of a
//! second (stated in docs/performance.md), so RL re-quantizes the rollout copy after every
//! optimizer step.

pub mod engine;
pub mod gemm;
pub mod kernels;

use std::sync::OnceLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use engine::{QuantCache, QuantLlama};
pub use kernels::{Isa, QK};

use kernels::ActRow;

/// Weight format of the decode engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// 8-bit signed values, one f32 scale per 32 (1.125 bytes per weight).
    Q8_0,
    /// 4-bit unsigned values with a scale and an offset per 32 (0.75 bytes per weight).
    Q4_1,
}

impl QuantFormat {
    /// The name used in configs and reports (`q8_0`, `q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4_1 => "q4_1",
        }
    }
}

#[derive(Debug, Clone)]
enum Blocks {
    Q8_0 {
        q: Vec<i8>,
        d: Vec<f32>,
    },
    Q4_1 {
        q: Vec<u8>,
        d: Vec<f32>,
        m: Vec<f32>,
    },
}

/// A block-quantized matrix `[rows, cols]` (`rows` = output features, each row a sequence of
/// `cols / 32` blocks along the input features), i.e. HF's `[out, in]` weight layout.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
    /// The blocks repacked for the tiled GEMM ([`gemm`]), built on the first product on
    /// AVX-512 VNNI or AVX2.
    packed: OnceLock<gemm::Packed>,
}

/// Quantizes one 32-element block to Q8_0 (`d = max|x| / 127`, `q = round(x / d)`), writing
/// `q` and returning `d`.
fn quantize_q8_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_half_away(v * inv).clamp(-127, 127) as i8;
    }
    d
}

/// [`quantize_q8_block`] for an activation block, also writing `Σq`; returns the scale.
fn quantize_act_block(x: &[f32], q: &mut [i8], sum: &mut i32) -> f32 {
    let d = quantize_q8_block(x, q);
    *sum = q.iter().map(|&v| v as i32).sum();
    d
}

/// `v.round() as i32` (half away from zero) without the libm call `f32::round` becomes on
/// baseline x86-64: a truncating conversion of `v ± 0.5`.
#[inline]
fn round_half_away(v: f32) -> i32 {
    (v + 0.5f32.copysign(v)) as i32
}

impl QMatrix {
    /// Quantizes `w`, row-major `[rows, cols]` f32.
    ///
    /// # Panics
    /// When `cols` is not a multiple of 32 or `w.len() != rows · cols`.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Self {
        assert_eq!(w.len(), rows * cols, "matrix data does not match its shape");
        assert_eq!(
            cols % QK,
            0,
            "quantized rows need a multiple of {QK} columns"
        );
        let nb = rows * cols / QK;
        let blocks = match format {
            QuantFormat::Q8_0 => {
                let mut q = vec![0i8; rows * cols];
                let mut d = vec![0f32; nb];
                q.par_chunks_mut(QK)
                    .zip(d.par_iter_mut())
                    .zip(w.par_chunks(QK))
                    .for_each(|((q, d), x)| *d = quantize_q8_block(x, q));
                Blocks::Q8_0 { q, d }
            }
            QuantFormat::Q4_1 => {
                let mut q = vec![0u8; rows * cols / 2];
                let mut d = vec![0f32; nb];
                let mut m = vec![0f32; nb];
                q.par_chunks_mut(QK / 2)
                    .zip(d.par_iter_mut().zip(m.par_iter_mut()))
                    .zip(w.par_chunks(QK))
                    .for_each(|((q, (d, m)), x)| {
                        let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
                        let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        *d = (hi - lo) / 15.0;
                        *m = lo;
                        let inv = if *d > 0.0 { 1.0 / *d } else { 0.0 };
                        let level = |v: f32| ((v - lo) * inv).round().clamp(0.0, 15.0) as u8;
                        for j in 0..QK / 2 {
                            q[j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
                        }
                    });
                Blocks::Q4_1 { q, d, m }
            }
        };
        Self {
            rows,
            cols,
            blocks,
            packed: OnceLock::new(),
        }
    }

    /// Quantizes the transposes of `parts` stacked row-wise: each part is `(w, d_in, d_out)`
    /// with `w` in burn's `[in, out]` layout, all with the same `d_in`; the result is
    /// `[Σ d_out, d_in]` (one part: the plain transpose; q/k/v or gate/up: a fused matrix).
    ///
    /// # Panics
    /// When the parts' input widths differ, or as [`QMatrix::quantize`].
    pub fn quantize_transposed(parts: &[(&[f32], usize, usize)], format: QuantFormat) -> Self {
        let d_in = parts.first().map_or(0, |p| p.1);
        let mut rows = Vec::new();
        for &(w, di, d_out) in parts {
            assert_eq!(di, d_in, "stacked matrices need the same input width");
            rows.extend(crate::load::transpose(w, di, d_out));
        }
        Self::quantize(&rows, rows.len() / d_in.max(1), d_in, format)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The format of the blocks.
    pub fn format(&self) -> QuantFormat {
        match self.blocks {
            Blocks::Q8_0 { .. } => QuantFormat::Q8_0,
            Blocks::Q4_1 { .. } => QuantFormat::Q4_1,
        }
    }

    /// Bytes held by the blocks (values and scales), not counting the GEMM's repacked copy
    /// ([`QMatrix::packed_bytes`]).
    pub fn bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q8_0 { q, d } => q.len() + 4 * d.len(),
            Blocks::Q4_1 { q, d, m } => q.len() + 4 * (d.len() + m.len()),
        }
    }

    /// Bytes of the copy repacked for the tiled GEMM: 0 until a product ran on AVX-512
    /// VNNI, then [`QMatrix::bytes`] up to the padding of the last 16-feature tile.
    pub fn packed_bytes(&self) -> usize {
        self.packed.get().map_or(0, gemm::Packed::bytes)
    }

    #[cfg(target_arch = "x86_64")]
    fn packed(&self) -> &gemm::Packed {
        self.packed.get_or_init(|| {
            let src = match &self.blocks {
                Blocks::Q8_0 { q, d } => gemm::Source::Q8_0 { q, d },
                Blocks::Q4_1 { q, d, m } => gemm::Source::Q4_1 { q, d, m },
            };
            gemm::Packed::new(src, self.rows, self.cols)
        })
    }

    /// The matrix dequantized to f32, row-major `[rows, cols]` (tests and checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        match &self.blocks {
            Blocks::Q8_0 { q, d } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = d[i / QK] * q[i] as f32;
                }
            }
            Blocks::Q4_1 { q, d, m } => {
                for (b, chunk) in out.chunks_mut(QK).enumerate() {
                    for j in 0..QK / 2 {
                        let byte = q[b * QK / 2 + j];
                        chunk[j] = d[b] * (byte & 0x0f) as f32 + m[b];
                        chunk[j + QK / 2] = d[b] * (byte >> 4) as f32 + m[b];
                    }
                }
            }
        }
        out
    }

    /// Dot product of row `o` with one activation row, in portable Rust.
    #[inline]
    fn dot_row(&self, o: usize, x: ActRow<'_>) -> f32 {
        let nb = self.cols / QK;
        match &self.blocks {
            Blocks::Q8_0 { q, d } => kernels::dot_q8_0_scalar(
                &q[o * self.cols..(o + 1) * self.cols],
                &d[o * nb..(o + 1) * nb],
                x,
            ),
            Blocks::Q4_1 { q, d, m } => kernels::dot_q4_1_scalar(
                &q[o * self.cols / 2..(o + 1) * self.cols / 2],
                &d[o * nb..(o + 1) * nb],
                &m[o * nb..(o + 1) * nb],
                x,
            ),
        }
    }

    /// `y = x · Wᵀ` for a batch of quantized activation rows: `x` holds `n` rows of `cols`
    /// values; returns `[n, rows]` row-major.
    ///
    /// On AVX-512 VNNI and AVX2 this is the tiled GEMM of [`gemm`], for every `n` (so a
    /// token's logits do not depend on the batch it ran in). On [`Isa::Scalar`] work is split
    /// over output rows across the rayon pool, each weight row dotted with all `n` activation
    /// rows while it sits in L1.
    ///
    /// # Panics
    /// When this CPU cannot run `isa` ([`Isa::supported`]) or the widths differ.
    pub fn matmul(&self, x: &QActs, isa: Isa) -> Vec<f32> {
        assert_eq!(
            x.cols, self.cols,
            "activation width does not match the matrix"
        );
        assert!(
            isa.supported(),
            "{} is not supported on this CPU",
            isa.name()
        );
        let n = x.n;
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: `isa` is supported (asserted) and not scalar.
            return unsafe { self.packed().matmul(isa, &x.q, &x.d, &x.s, &x.sum, n) };
        }
        // Output features per task: a few tasks per thread (load balance), each with enough
        // work to amortize scheduling (≥ ~64k MACs).
        let min_rows = (65_536 / (self.cols * n).max(1)).max(4);
        let per_task = (self.rows / (4 * rayon::current_num_threads())).max(min_rows);
        let mut by_feature = vec![0f32; self.rows * n]; // [rows, n]
        by_feature
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(t, chunk)| {
                let first = t * per_task;
                for (k, out) in chunk.chunks_mut(n).enumerate() {
                    let o = first + k;
                    for (r, y) in out.iter_mut().enumerate() {
                        *y = self.dot_row(o, x.row(r));
                    }
                }
            });
        if n == 1 {
            return by_feature;
        }
        let mut y = vec![0f32; n * self.rows];
        for (o, vals) in by_feature.chunks(n).enumerate() {
            for (r, &v) in vals.iter().enumerate() {
                y[r * self.rows + o] = v;
            }
        }
        y
    }
}

/// `n` activation rows quantized to Q8 blocks (the right operand of [`QMatrix::matmul`]).
#[derive(Debug, Clone, Default)]
pub struct QActs {
    n: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// Each block's `Σq` (the Q8_0 correction of the tiled GEMM).
    sum: Vec<i32>,
}

impl QActs {
    /// Quantizes `x`, `n` rows of `cols` f32 values (row-major).
    ///
    /// # Panics
    /// When `cols` is not a multiple of 32 or `x.len() != n · cols`.
    pub fn quantize(x: &[f32], n: usize, cols: usize) -> Self {
        assert_eq!(
            x.len(),
            n * cols,
            "activation data does not match its shape"
        );
        assert_eq!(
            cols % QK,
            0,
            "quantized rows need a multiple of {QK} columns"
        );
        let nb = x.len() / QK;
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; nb];
        let mut sum = vec![0i32; nb];
        if n >= engine::PAR_ROWS {
            x.par_chunks(QK)
                .zip(q.par_chunks_mut(QK))
                .zip(d.par_iter_mut().zip(sum.par_iter_mut()))
                .for_each(|((x, q), (d, sum))| *d = quantize_act_block(x, q, sum));
        } else {
            x.chunks(QK)
                .zip(q.chunks_mut(QK))
                .zip(d.iter_mut().zip(sum.iter_mut()))
                .for_each(|((x, q), (d, sum))| *d = quantize_act_block(x, q, sum));
        }
        let s = d.iter().zip(&sum).map(|(&d, &k)| d * k as f32).collect();
        Self {
            n,
            cols,
            q,
            d,
            s,
            sum,
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.cols / QK;
        ActRow {
            q: &self.q[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for r in 0..n {
            for o in 0..rows {
                y[r * rows + o] = (0..cols).map(|c| w[o * cols + c] * x[r * cols + c]).sum();
            }
        }
        y
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Every path this CPU supports gives the product of the *dequantized* operands up to
    /// f32 summation order (1e-5 of the output scale), and within the quantization error of
    /// the f32 product (Q8_0: 2 %, Q4_1: 10 % of the output scale on uniform random data).
    #[test]
    fn every_isa_matches_the_dequantized_product() {
        let (rows, cols, n) = (37, 5 * QK, 3); // odd block count exercises the tails
        let w = random(rows * cols, 1);
        let x = random(n * cols, 2);
        let exact = reference(&w, rows, cols, &x, n);
        let acts = QActs::quantize(&x, n, cols);
        let xd: Vec<f32> = acts
            .q
            .iter()
            .enumerate()
            .map(|(i, &q)| acts.d[i / QK] * q as f32)
            .collect();
        let mut tried = 0;
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_1] {
            let m = QMatrix::quantize(&w, rows, cols, format);
            let deq = reference(&m.dequantize(), rows, cols, &xd, n);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
                if !isa.supported() {
                    eprintln!("{}: not supported on this CPU, skipped", isa.name());
                    continue;
                }
                tried += 1;
                let y = m.matmul(&acts, isa);
                let e = max_rel_err(&y, &deq);
                assert!(
                    e < 1e-5,
                    "{} {}: {e} from the dequantized product",
                    isa.name(),
                    format.name()
                );
                let tol = if format == QuantFormat::Q8_0 {
                    0.02
                } else {
                    0.10
                };
                let e = max_rel_err(&y, &exact);
                assert!(
                    e < tol,
                    "{} {}: {e} from the f32 product",
                    isa.name(),
                    format.name()
                );
            }
        }
        assert!(tried >= 2, "the scalar path always runs");
    }

    /// `y` (a product of `m` and `acts`) equals scalar row-by-row dots to 1e-4 of each
    /// output's size.
    fn assert_row_dots(m: &QMatrix, acts: &QActs, y: &[f32], what: &str) {
        let rows = m.rows();
        for r in 0..acts.len() {
            for o in 0..rows {
                let want = m.dot_row(o, acts.row(r));
                let got = y[r * rows + o];
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{what} row {r} out {o}: {got} vs {want}"
                );
            }
        }
    }

    /// The batched, threaded product equals row-by-row dots, on whichever path is active.
    #[test]
    fn matmul_matches_row_dots() {
        // 2, 3 and 37 blocks per row, 300 features: several tasks and a partial GEMM tile.
        for (cols, format) in [
            (2 * QK, QuantFormat::Q8_0),
            (3 * QK, QuantFormat::Q8_0),
            (3 * QK, QuantFormat::Q4_1),
            (37 * QK, QuantFormat::Q4_1),
            (37 * QK, QuantFormat::Q8_0),
        ] {
            let (rows, n) = (300, 5);
            let w = random(rows * cols, 3);
            let x = random(n * cols, 4);
            let m = QMatrix::quantize(&w, rows, cols, format);
            let acts = QActs::quantize(&x, n, cols);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
                if !isa.supported() {
                    continue;
                }
                let y = m.matmul(&acts, isa);
                let what = format!("{} {} cols {cols}", format.name(), isa.name());
                assert_row_dots(&m, &acts, &y, &what);
            }
        }
    }

    /// The tiled GEMM (AVX-512 VNNI and AVX2 micro-kernels) equals row-by-row dots, and a
    /// row's outputs are the same bits whatever the batch it is in: feature counts that leave
    /// a partial tile and a partial AVX2 half (37 = 2·16 + 5, 20 = 16 + 4), row counts that
    /// leave each micro-kernel remainder (8, 4, 3, 2, 1) and span two 64-row chunks.
    #[test]
    fn tiled_gemm_matches_row_dots() {
        let mut tried = 0;
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            if !isa.supported() {
                eprintln!("{}: not supported on this CPU, skipped", isa.name());
                continue;
            }
            tried += 1;
            for (rows, cols, n) in [
                (37, 3 * QK, 8),
                (48, 5 * QK, 13),
                (300, 2 * QK, 77),
                (20, QK, 1),
                (20, 2 * QK, 7),
                (24, QK, 6),
            ] {
                for format in [QuantFormat::Q8_0, QuantFormat::Q4_1] {
                    let w = random(rows * cols, 11);
                    let x = random(n * cols, 12);
                    let m = QMatrix::quantize(&w, rows, cols, format);
                    let acts = QActs::quantize(&x, n, cols);
                    let y = m.matmul(&acts, isa);
                    assert!(
                        m.packed_bytes() > 0,
                        "{rows}x{cols} n {n}: GEMM path not taken"
                    );
                    let what = format!("{} {} {rows}x{cols} n {n}", isa.name(), format.name());
                    assert_row_dots(&m, &acts, &y, &what);
                    for r in 0..n {
                        let alone = QActs::quantize(&x[r * cols..(r + 1) * cols], 1, cols);
                        assert_eq!(
                            m.matmul(&alone, isa),
                            y[r * rows..(r + 1) * rows],
                            "{what} row {r}: batched and alone differ"
                        );
                    }
                }
            }
        }
        if tried == 0 {
            eprintln!("no tiled GEMM on this CPU: nothing to check");
        }
    }

    /// The AVX2 kernel's i16 sums stay exact at the extremes: every Q8_0 weight at ±127 and
    /// -128 (a GGUF may hold -128) and every activation at ±127, where a pair of `w + 128`
    /// bytes fed to `vpmaddubsw` whole would saturate. The integer sums are compared
    /// exactly through a scale of 1.
    #[test]
    fn avx2_tiles_are_exact_at_the_byte_extremes() {
        if !Isa::Avx2.supported() {
            eprintln!("avx2: not supported on this CPU, skipped");
            return;
        }
        let (rows, cols, n) = (16, 2 * QK, 2);
        for (wv, xv) in [
            (127i8, 127i8),
            (-128, 127),
            (-128, -127),
            (127, -127),
            (-127, 127),
        ] {
            let m = QMatrix {
                rows,
                cols,
                blocks: Blocks::Q8_0 {
                    q: vec![wv; rows * cols],
                    d: vec![1.0; rows * cols / QK],
                },
                packed: OnceLock::new(),
            };
            let acts = QActs {
                n,
                cols,
                q: vec![xv; n * cols],
                d: vec![1.0; n * cols / QK],
                s: vec![xv as f32 * QK as f32; n * cols / QK],
                sum: vec![xv as i32 * QK as i32; n * cols / QK],
            };
            let want = (wv as i32 * xv as i32 * cols as i32) as f32;
            let y = m.matmul(&acts, Isa::Avx2);
            assert!(
                y.iter().all(|&v| v == want),
                "w {wv} x {xv}: {y:?} != {want}"
            );
        }
    }

    /// Requantizing dequantized blocks reproduces them: a GGUF's Q4_1/Q8_0 tensors survive
    /// the f32 round trip through burn unchanged.
    #[test]
    fn requantizing_is_idempotent() {
        let w = random(8 * QK, 5);
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_1] {
            let once = QMatrix::quantize(&w, 4, 2 * QK, format).dequantize();
            let twice = QMatrix::quantize(&once, 4, 2 * QK, format).dequantize();
            let e = once
                .iter()
                .zip(&twice)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(e < 1e-6, "{}: {e}", format.name());
        }
    }
}
