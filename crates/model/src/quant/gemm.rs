//! Activation rows against one quantized matrix: the tiled int8 GEMM under every product of
//! the quantized engine on AVX-512 VNNI and on AVX2 — prefill, batched decode and batch-1
//! decode alike. The AVX-512 micro-kernel is described first; the AVX2 one reads the same
//! tiles (the `avx2` module's docs).
//!
//! **Why tiles.** The AVX-512 row kernels this replaced dotted one weight row with one to
//! four activation rows, each 512-bit register holding *partial sums of one output* (two
//! blocks' 16 four-byte groups). Every `vpdpbusd` then needed its own sign fix-up, an
//! int→float conversion, a scale product and an FMA (five vector ops per 64 MACs), plus a
//! horizontal reduction per output: prefill, which is compute-bound, ran at 0.81–1.02×
//! llama.cpp's speed (docs/performance.md has the figures before and after).
//!
//! Here each 32-bit lane of a register is *one output feature*: the weights are repacked so
//! that one 64-byte load holds four consecutive values of 16 output features, and one
//! activation row's four values are broadcast to all lanes (`vpbroadcastd`, a load, no ALU
//! work). Eight `vpdpbusd` then sum a whole 32-element block for 16 features × one row in
//! exact int32, and only then is the block scaled (one conversion, one multiply, one FMA per
//! 16 outputs). Eight activation rows share each weight load. This is the VNNI layout of
//! int8 GEMM libraries (oneDNN's, and the repacked kernels of llama.cpp's `ggml-cpu`); the
//! code is ours.
//!
//! `vpdpbusd` multiplies unsigned (here: the weights) by signed bytes (the activations):
//! - Q8_0: the weights are stored as `w + 128` (`w ^ 0x80`), and each block's integer sum
//!   starts from `-128·Σ_j x_j` (one number per activation row and block), so the int32
//!   result is exactly `Σ_j w_j·x_j`.
//! - Q4_1: the levels 0..15 are stored as nibbles, one 64-byte load holding two steps; the
//!   offset term `m_b · d_x·Σx` is one more FMA per block.
//!
//! Each output is then `fma(Σ_j w_j·x_j, d_w·d_x, acc)` over the blocks in order, whatever
//! the batch size or the task split: **the same bits for a token whether it is decoded
//! alone, in a batch, or in a prefill** (tests/model_quant.rs relies on it). The integer
//! sums equal the row kernels'; results differ from theirs only by f32 summation order. On
//! [`Isa::Avx512Vnni`](super::Isa) and [`Isa::Avx2`](super::Isa) every product runs here
//! (decode too: it reads the same bytes as the row layout); on `Isa::Scalar` the portable
//! row dots run.

use rayon::prelude::*;

use super::kernels::{Isa, QK};

/// Output features per tile: one 512-bit register of int32 / f32 lanes.
pub(crate) const TILE: usize = 16;

/// Bytes of one block of one tile: 32 values × 16 features (Q8_0), half that as nibbles
/// (Q4_1).
const TILE_BLOCK_Q8: usize = QK * TILE;
const TILE_BLOCK_Q4: usize = QK * TILE / 2;

/// Activation rows per micro-kernel call (each holds an int32 and an f32 accumulator).
const NR: usize = 8;

/// Activation rows per parallel task: the rows a task's weight tiles are reused over.
const ROW_CHUNK: usize = 64;

/// A quantized matrix repacked for the tiled kernel.
///
/// For tile `t` (features `16t .. 16t + 16`, zero-padded past the last) and block `b`:
/// Q8_0 `vals[(t·nb + b)·512 + s·64 + f·4 + k]` = `w + 128` for value `4s + k` of feature
/// `16t + f`; Q4_1 `vals[(t·nb + b)·256 + (s/2)·64 + f·4 + k]` holds value `4s + k` in its
/// low nibble for even `s` and in its high nibble for odd `s`. `d` and `m` hold 16 per
/// `(t, b)` at `(t·nb + b)·16 + f`.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    rows: usize,
    cols: usize,
    tiles: usize,
    vals: Vec<u8>,
    /// Per-block weight scale.
    d: Vec<f32>,
    /// Q4_1: per-block offset `m`; empty for Q8_0.
    m: Vec<f32>,
}

/// The weight formats the packer reads, in [`super::QMatrix`]'s row-major block layout.
pub(crate) enum Source<'a> {
    /// `q`: `rows · cols` values; `d`: `rows · nb` scales.
    Q8_0 { q: &'a [i8], d: &'a [f32] },
    /// `q`: `rows · cols / 2` nibble pairs (ggml's layout); `d`, `m`: `rows · nb`.
    Q4_1 {
        q: &'a [u8],
        d: &'a [f32],
        m: &'a [f32],
    },
}

impl Packed {
    /// Repacks a `[rows, cols]` matrix (`cols` a multiple of 32), in parallel over tiles.
    pub(crate) fn new(src: Source<'_>, rows: usize, cols: usize) -> Self {
        let nb = cols / QK;
        let tiles = rows.div_ceil(TILE);
        let q4 = matches!(src, Source::Q4_1 { .. });
        let tb = if q4 { TILE_BLOCK_Q4 } else { TILE_BLOCK_Q8 };
        let mut vals = vec![0u8; tiles * nb * tb];
        let mut d = vec![0f32; tiles * nb * TILE];
        let mut m = vec![0f32; if q4 { tiles * nb * TILE } else { 0 }];
        let per_tile = nb * TILE;
        let mut m_chunks: Vec<&mut [f32]> = if q4 {
            m.chunks_mut(per_tile).collect()
        } else {
            (0..tiles).map(|_| &mut [][..]).collect()
        };
        // Written in output order, four bytes (one feature's step) at a time.
        vals.par_chunks_mut(nb * tb)
            .zip(d.par_chunks_mut(per_tile))
            .zip(m_chunks.par_iter_mut())
            .enumerate()
            .for_each(|(t, ((vals, d), m))| {
                let live = TILE.min(rows - t * TILE);
                for (b, blk) in vals.chunks_exact_mut(tb).enumerate() {
                    for (g, group) in blk.chunks_exact_mut(64).enumerate() {
                        for (f, out) in group.chunks_exact_mut(4).take(live).enumerate() {
                            let o = t * TILE + f;
                            match src {
                                Source::Q8_0 { q, .. } => {
                                    // Step g: values 4g .. 4g + 4, as w + 128.
                                    let at = o * cols + b * QK + 4 * g;
                                    for (k, v) in out.iter_mut().enumerate() {
                                        *v = q[at + k] as u8 ^ 0x80;
                                    }
                                }
                                Source::Q4_1 { q, .. } => {
                                    // Steps 2g (low nibbles) and 2g + 1 (high): values
                                    // 8g + k and 8g + 4 + k; value v sits in byte v % 16
                                    // of the source block, high nibble when v ≥ 16.
                                    let src = &q[(o * cols + b * QK) / 2..][..QK / 2];
                                    let level = |v: usize| (src[v % 16] >> (4 * (v / 16))) & 0x0f;
                                    for (k, v) in out.iter_mut().enumerate() {
                                        *v = level(8 * g + k) | (level(8 * g + 4 + k) << 4);
                                    }
                                }
                            }
                        }
                    }
                    for f in 0..live {
                        let o = t * TILE + f;
                        match src {
                            Source::Q8_0 { d: wd, .. } => d[b * TILE + f] = wd[o * nb + b],
                            Source::Q4_1 { d: wd, m: wm, .. } => {
                                d[b * TILE + f] = wd[o * nb + b];
                                m[b * TILE + f] = wm[o * nb + b];
                            }
                        }
                    }
                }
            });
        Self {
            rows,
            cols,
            tiles,
            vals,
            d,
            m,
        }
    }

    /// Bytes held by the repacked copy.
    pub(crate) fn bytes(&self) -> usize {
        self.vals.len() + 4 * (self.d.len() + self.m.len())
    }

    fn q4(&self) -> bool {
        !self.m.is_empty()
    }

    /// `y = x · Wᵀ`, `[n, rows]` row-major, from `n` activation rows: `xq` their Q8 values
    /// (`n · cols`), `xd` their block scales, `xs` their `d·Σq` and `xsum` their `Σq`
    /// (`n · nb` each).
    ///
    /// Work is split into (tile range × 64-row chunk) tasks over the rayon pool; each task
    /// writes a disjoint rectangle of `y`.
    ///
    /// `isa` picks the micro-kernel: [`Isa::Avx512Vnni`] 16 features per register,
    /// [`Isa::Avx2`] the same tile as two 8-feature halves (see the module docs).
    ///
    /// # Safety
    /// The CPU must support `isa`, which is not [`Isa::Scalar`].
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn matmul(
        &self,
        isa: Isa,
        xq: &[i8],
        xd: &[f32],
        xs: &[f32],
        xsum: &[i32],
        n: usize,
    ) -> Vec<f32> {
        let (rows, cols, nb) = (self.rows, self.cols, self.cols / QK);
        assert!(xq.len() == n * cols && xd.len() == n * nb);
        assert!(xs.len() == n * nb && xsum.len() == n * nb);
        let mut y = vec![0f32; n * rows];
        let out = SyncPtr(y.as_mut_ptr());
        let chunks = n.div_ceil(ROW_CHUNK);
        // Enough tasks for load balance (≥ 4 per thread), each with enough work to amortize
        // scheduling (≥ ~64k MACs), and no task finer than one tile.
        let most = (self.tiles * TILE * cols * n.min(ROW_CHUNK) / 65_536).max(1);
        let groups = (4 * rayon::current_num_threads())
            .div_ceil(chunks)
            .min(most)
            .clamp(1, self.tiles);
        let per_group = self.tiles.div_ceil(groups);
        // The micro-kernel for NR, 4 and 1 rows, picked once per product.
        let kernels: [Kernel; 3] = match (isa, self.q4()) {
            (Isa::Avx512Vnni, true) => [
                x86::tile::<NR, true>,
                x86::tile::<4, true>,
                x86::tile::<1, true>,
            ],
            (Isa::Avx512Vnni, false) => [
                x86::tile::<NR, false>,
                x86::tile::<4, false>,
                x86::tile::<1, false>,
            ],
            (_, true) => [
                avx2::tile::<NR, true>,
                avx2::tile::<4, true>,
                avx2::tile::<1, true>,
            ],
            (_, false) => [
                avx2::tile::<NR, false>,
                avx2::tile::<4, false>,
                avx2::tile::<1, false>,
            ],
        };
        (0..groups * chunks).into_par_iter().for_each(|task| {
            let (g, c) = (task / chunks, task % chunks);
            let (r0, r1) = (c * ROW_CHUNK, ((c + 1) * ROW_CHUNK).min(n));
            let out = &out;
            for t in g * per_group..((g + 1) * per_group).min(self.tiles) {
                let mut r = r0;
                while r < r1 {
                    let take = (r1 - r).min(NR);
                    let a = Acts {
                        x: xq,
                        d: xd,
                        s: xs,
                        sum: xsum,
                        cols,
                        r,
                    };
                    let (rows, kernel) = match take {
                        NR => (NR, kernels[0]),
                        4.. => (4, kernels[1]),
                        _ => (1, kernels[2]),
                    };
                    // SAFETY: the caller guarantees the ISA; the task's (rows r..r+rows,
                    // features of tile t) rectangle of y is written by this task only, and
                    // lies inside y (n · rows).
                    unsafe { kernel(self, t, a, out.0) };
                    r += rows;
                }
            }
        });
        y
    }
}

/// One micro-kernel instance: tile `t` × the activation rows `a.r ..` it was built for,
/// written into `y` (`x86::tile` on AVX-512 VNNI, `avx2::tile` on AVX2; their safety
/// contracts).
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(&Packed, usize, Acts<'_>, *mut f32);

/// The output pointer shared by the tasks of one product, each writing its own rectangle.
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `Packed::matmul`), and the product waits for
// all of them before the buffer is read.
unsafe impl Sync for SyncPtr {}

/// Rows `r ..` of a product's Q8 activations (`x`: `n · cols`; `d`, `s`, `sum`: `n · nb`).
#[derive(Clone, Copy)]
struct Acts<'a> {
    x: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    sum: &'a [i32],
    cols: usize,
    r: usize,
}

impl Acts<'_> {
    /// Row `r + i`'s four values at `b·32 + 4s`, as one little-endian `i32` (what a
    /// micro-kernel broadcasts to all lanes).
    ///
    /// # Safety
    /// The row holds `cols` values and `b·32 + 4s + 4 ≤ cols`.
    #[inline(always)]
    unsafe fn four(&self, i: usize, b: usize, s: usize) -> i32 {
        // SAFETY: the caller's bounds; an unaligned 4-byte read.
        unsafe {
            (self
                .x
                .as_ptr()
                .add((self.r + i) * self.cols + b * QK + 4 * s) as *const i32)
                .read_unaligned()
        }
    }

    /// Panics unless rows `r .. r + R` and tile `t` of `p` (Q4_1 when `Q4`) lie inside their
    /// buffers: the bounds every micro-kernel's unchecked loads rely on.
    fn check<const R: usize, const Q4: bool>(&self, p: &Packed, t: usize) {
        let nb = p.cols / QK;
        let tb = if Q4 { TILE_BLOCK_Q4 } else { TILE_BLOCK_Q8 };
        assert!(self.x.len() >= (self.r + R) * self.cols && self.d.len() >= (self.r + R) * nb);
        assert!(self.s.len() >= (self.r + R) * nb && self.sum.len() >= (self.r + R) * nb);
        assert!(p.vals.len() >= (t + 1) * nb * tb && p.d.len() >= (t + 1) * nb * TILE);
        assert!(!Q4 || p.m.len() >= (t + 1) * nb * TILE);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Acts, Packed, TILE, TILE_BLOCK_Q4, TILE_BLOCK_Q8};
    use crate::quant::kernels::QK;
    use std::arch::x86_64::*;

    /// Activation row `a.r + i`'s four values at `b·32 + 4s`, broadcast to all 16 lanes.
    ///
    /// # Safety
    /// The row holds `cols` values and `b·32 + 4s + 4 ≤ cols`.
    #[inline(always)]
    unsafe fn four(a: &Acts<'_>, i: usize, b: usize, s: usize) -> __m512i {
        // SAFETY: the caller's bounds.
        _mm512_set1_epi32(unsafe { a.four(i, b, s) })
    }

    /// Tile `t` (16 features) × activation rows `a.r .. a.r + R`: writes
    /// `y[(a.r + i)·rows + 16t + f]` for the tile's valid features. `Q4`: Q4_1, else Q8_0.
    ///
    /// # Safety
    /// AVX-512 F/BW/DQ/VL + VNNI; `a.r + R ≤ n`; `y` holds `n · p.rows` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    pub(super) unsafe fn tile<const R: usize, const Q4: bool>(
        p: &Packed,
        t: usize,
        a: Acts<'_>,
        y: *mut f32,
    ) {
        let nb = p.cols / QK;
        let tb = if Q4 { TILE_BLOCK_Q4 } else { TILE_BLOCK_Q8 };
        a.check::<R, Q4>(p, t);
        let nibble = _mm512_set1_epi8(0x0f);
        let mut accf = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let at = t * nb + b;
            // Q8_0: start from -128·Σx, which the stored w + 128 adds back.
            let mut acci: [__m512i; R] = std::array::from_fn(|i| {
                if Q4 {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(-128 * a.sum[(a.r + i) * nb + b])
                }
            });
            // SAFETY: vals holds tb bytes at at · tb (asserted).
            let w0 = unsafe { p.vals.as_ptr().add(at * tb) };
            if Q4 {
                for s2 in 0..QK / 8 {
                    // SAFETY: as above.
                    let v = unsafe { _mm512_loadu_si512(w0.add(s2 * 64) as *const __m512i) };
                    let lo = _mm512_and_si512(v, nibble);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                    for (i, acc) in acci.iter_mut().enumerate() {
                        // SAFETY: row bounds asserted above.
                        let (x0, x1) =
                            unsafe { (four(&a, i, b, 2 * s2), four(&a, i, b, 2 * s2 + 1)) };
                        *acc = _mm512_dpbusd_epi32(*acc, lo, x0);
                        *acc = _mm512_dpbusd_epi32(*acc, hi, x1);
                    }
                }
            } else {
                for s in 0..QK / 4 {
                    // SAFETY: as above.
                    let w = unsafe { _mm512_loadu_si512(w0.add(s * 64) as *const __m512i) };
                    for (i, acc) in acci.iter_mut().enumerate() {
                        // SAFETY: row bounds asserted above.
                        *acc = _mm512_dpbusd_epi32(*acc, w, unsafe { four(&a, i, b, s) });
                    }
                }
            }
            // SAFETY: d (and m for Q4_1) hold 16 at at · 16 (asserted).
            let wd = unsafe { _mm512_loadu_ps(p.d.as_ptr().add(at * TILE)) };
            for (i, acc) in accf.iter_mut().enumerate() {
                let sc = _mm512_mul_ps(wd, _mm512_set1_ps(a.d[(a.r + i) * nb + b]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[i]), sc, *acc);
            }
            if Q4 {
                // SAFETY: as above.
                let wm = unsafe { _mm512_loadu_ps(p.m.as_ptr().add(at * TILE)) };
                for (i, acc) in accf.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(a.s[(a.r + i) * nb + b]), *acc);
                }
            }
        }
        let valid = TILE.min(p.rows - t * TILE);
        let mask: __mmask16 = if valid == TILE {
            0xffff
        } else {
            (1u16 << valid) - 1
        };
        for (i, acc) in accf.iter().enumerate() {
            // SAFETY: the masked store writes the tile's valid features of row a.r + i.
            unsafe {
                _mm512_mask_storeu_ps(y.add((a.r + i) * p.rows + t * TILE), mask, *acc);
            }
        }
    }
}

/// The AVX2 micro-kernel: the same packed tiles, read as two 8-feature halves of 32 bytes.
///
/// AVX2 has no `vpdpbusd`; its byte product `vpmaddubsw` (unsigned × signed bytes, adjacent
/// pairs summed into *saturating* i16) is exact only while a pair stays within ±32,767. Both
/// formats therefore enter as nibbles: Q4_1's levels as they are, Q8_0's `w + 128` as its
/// two nibbles `16·h + l`. A nibble pair against Q8 activations (|x| ≤ 128) sums to at most
/// 2 · 15 · 128 = 3,840, so the eight steps of a 32-value block add up in i16 without
/// saturating (30,720): one `vpmaddubsw` and one `vpaddw` per 32 products and row for Q4_1,
/// two for Q8_0 (its two nibble planes). One `vpmaddwd` per block then widens a feature's two
/// i16 halves to its exact int32 sum (Q8_0: `16·Σh·x + Σl·x − 128·Σx`). The byte-product
/// peak of AVX2 is thus half of the `vpdpbusd` kernel's per register width, and Q8_0 runs at
/// half of Q4_1's (examples/roofline.rs measures the `vpmaddubsw` + `vpaddw` peak). The f32
/// scaling per block then follows the AVX-512 kernel, in the same order for every row, so
/// here too a row's outputs do not depend on its batch.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Acts, Packed, TILE, TILE_BLOCK_Q4, TILE_BLOCK_Q8};
    use crate::quant::kernels::QK;
    use std::arch::x86_64::*;

    /// Features per half tile: one 256-bit register of int32 / f32 lanes.
    const HALF: usize = TILE / 2;

    /// Rows per inner pass. Four rows' sums (Q8_0: two nibble sums and an f32 sum per row)
    /// spill to the stack (16 ymm registers); two measured faster for Q8_0 (gate_up at 64
    /// rows, one thread: 3.1–4.1 against 4.2–4.7 ms) and no different for Q4_1.
    const ROWS: usize = 2;

    /// Activation row `a.r + i`'s four values at `b·32 + 4s`, broadcast to all 8 lanes.
    ///
    /// # Safety
    /// The row holds `cols` values and `b·32 + 4s + 4 ≤ cols`.
    #[inline(always)]
    unsafe fn four(a: &Acts<'_>, i: usize, b: usize, s: usize) -> __m256i {
        // SAFETY: the caller's bounds.
        _mm256_set1_epi32(unsafe { a.four(i, b, s) })
    }

    /// Tile `t` × activation rows `a.r .. a.r + R`, as [`super::x86::tile`] computes it.
    ///
    /// # Safety
    /// AVX2 + FMA; `a.r + R ≤ n`; `y` holds `n · p.rows` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize, const Q4: bool>(
        p: &Packed,
        t: usize,
        a: Acts<'_>,
        y: *mut f32,
    ) {
        a.check::<R, Q4>(p, t);
        for h in 0..2 {
            let first = t * TILE + h * HALF;
            if first >= p.rows {
                break;
            }
            let mut i = 0;
            while i < R {
                let rows = Acts { r: a.r + i, ..a };
                // SAFETY: as this function's contract, for rows a.r + i ..; the bounds
                // asserted above cover them.
                i += unsafe {
                    match R - i {
                        ROWS.. => half::<ROWS, Q4>(p, t, h, rows, y),
                        _ => half::<1, Q4>(p, t, h, rows, y),
                    }
                };
            }
        }
    }

    /// Half `h` (features `16t + 8h ..`) of tile `t` × rows `a.r .. a.r + R`; returns `R`.
    ///
    /// # Safety
    /// As [`tile`], with the half's first feature inside the matrix.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn half<const R: usize, const Q4: bool>(
        p: &Packed,
        t: usize,
        h: usize,
        a: Acts<'_>,
        y: *mut f32,
    ) -> usize {
        let nb = p.cols / QK;
        let tb = if Q4 { TILE_BLOCK_Q4 } else { TILE_BLOCK_Q8 };
        let nibble = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let sixteen = _mm256_set1_epi16(16);
        let mut accf = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let at = t * nb + b;
            // SAFETY: vals holds tb bytes at at · tb (asserted by `tile`); each step's
            // 64 bytes hold this half at byte 32h.
            let w0 = unsafe { p.vals.as_ptr().add(at * tb + h * 32) };
            let mut lo_sum = [_mm256_setzero_si256(); R];
            let mut hi_sum = [_mm256_setzero_si256(); R];
            if Q4 {
                for s2 in 0..QK / 8 {
                    // SAFETY: as above.
                    let v = unsafe { _mm256_loadu_si256(w0.add(s2 * 64) as *const __m256i) };
                    let lo = _mm256_and_si256(v, nibble);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                    for (i, acc) in lo_sum.iter_mut().enumerate() {
                        // SAFETY: row bounds asserted by `tile`.
                        let (x0, x1) =
                            unsafe { (four(&a, i, b, 2 * s2), four(&a, i, b, 2 * s2 + 1)) };
                        let pair = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, x0),
                            _mm256_maddubs_epi16(hi, x1),
                        );
                        *acc = _mm256_add_epi16(*acc, pair);
                    }
                }
            } else {
                for s in 0..QK / 4 {
                    // SAFETY: as above.
                    let v = unsafe { _mm256_loadu_si256(w0.add(s * 64) as *const __m256i) };
                    let lo = _mm256_and_si256(v, nibble);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                    for i in 0..R {
                        // SAFETY: row bounds asserted by `tile`.
                        let x = unsafe { four(&a, i, b, s) };
                        lo_sum[i] = _mm256_add_epi16(lo_sum[i], _mm256_maddubs_epi16(lo, x));
                        hi_sum[i] = _mm256_add_epi16(hi_sum[i], _mm256_maddubs_epi16(hi, x));
                    }
                }
            }
            // SAFETY: d (and m for Q4_1) hold 16 at at · 16 (asserted by `tile`).
            let wd = unsafe { _mm256_loadu_ps(p.d.as_ptr().add(at * TILE + h * HALF)) };
            for (i, acc) in accf.iter_mut().enumerate() {
                let sum = if Q4 {
                    _mm256_madd_epi16(lo_sum[i], ones)
                } else {
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(hi_sum[i], sixteen),
                        _mm256_madd_epi16(lo_sum[i], ones),
                    );
                    _mm256_add_epi32(s, _mm256_set1_epi32(-128 * a.sum[(a.r + i) * nb + b]))
                };
                let sc = _mm256_mul_ps(wd, _mm256_set1_ps(a.d[(a.r + i) * nb + b]));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), sc, *acc);
            }
            if Q4 {
                // SAFETY: as above.
                let wm = unsafe { _mm256_loadu_ps(p.m.as_ptr().add(at * TILE + h * HALF)) };
                for (i, acc) in accf.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(wm, _mm256_set1_ps(a.s[(a.r + i) * nb + b]), *acc);
                }
            }
        }
        let first = t * TILE + h * HALF;
        let valid = HALF.min(p.rows - first);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes);
        for (i, acc) in accf.iter().enumerate() {
            // SAFETY: the masked store writes the half's valid features of row a.r + i.
            unsafe { _mm256_maskstore_ps(y.add((a.r + i) * p.rows + first), mask, *acc) };
        }
        R
    }
}
