//! bf16 GEMM on Intel AMX tiles, f32 in and out: the matrix products of `[train] precision =
//! "bf16"` ([`super::linear`]).
//!
//! # Why AMX and not AVX512_BF16
//! The roofline of the machine this was written on (docs/performance.md, "The roofline of this
//! machine") has `vdpbf16ps` at about half the f32 FMA rate (233 against 476 GFLOP/s on two
//! threads): a bf16 path built on it would at best match the f32 GEMM while adding
//! conversions. AMX's `tdpbf16ps` on tiles peaks at 6.8–7.6 TFLOP/s there, 15× the FMA
//! peak. So bf16 runs where AMX-BF16 is present and Linux grants the tile state; everywhere
//! else [`available`] is false and callers keep today's f32 GEMM.
//!
//! # Layout
//! `C[m×n] = acc·C + beta · A[m×k] · B[k×n]`, A and B read through strided f32 views (so the
//! backward's transposed operands need no copy), rounded to bf16 (round to nearest even) while
//! packed, products summed in f32 by the tile unit (Intel SDM, `TDPBF16PS`):
//! - A is packed as 16-row × 32-value tiles (`[m/16][k/32][16][32]` bf16, 1 KB a tile), one
//!   tile per `tileloadd` at a 64-byte stride;
//! - B in the pair-interleaved ("VNNI") layout the instruction expects: tile row `r` holds
//!   `(B[2r, j], B[2r+1, j])` for the tile's 16 columns (`[n/16][k/32][16][16][2]`);
//! - the micro-kernel keeps a 32 × 32 block of C in four accumulator tiles (tmm0–3) fed by two
//!   A tiles and two B tiles per 32 values of k (4 KB loaded per 4 tile products), stores it
//!   to a local 32 × 32 f32 buffer, and the epilogue adds it into C;
//! - work is split into tasks of [`TASK_ROWS`] × [`TASK_COLS`] of C (rayon), each running k
//!   in chunks of [`K_TILES`] tiles so that its A and B panels stay in L2.
//!
//! m, n and k need not be multiples of anything: packing pads with zeros and the epilogue
//! writes only the `m × n` block. The tile state is requested once per process with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` (Linux
//! Documentation/arch/x86/xstate.rst); each task loads the tile configuration and releases
//! the tiles when done.
//!
//! # Measured (docs/performance.md, "bf16 training on AMX")
//! Packed tiles start on 64-byte boundaries ([`Tiles`]): tile rows that straddle two cache
//! lines ran the micro-kernel at 0.87 TFLOP/s per thread against 2.1–2.8 aligned. Whole GEMMs
//! on the training shapes, packing included: 1.1–1.4 TFLOP/s on two threads, 3.4–4× burn-flex's
//! f32 GEMM. Weights go through twice ([`split_hi_lo`], called by the fused ops), which halves
//! that per logical product.

use rayon::prelude::*;

use super::{empty_product, SharedMut, View};

/// Rows of C per parallel task (a multiple of 32).
const TASK_ROWS: usize = 64;
/// Columns of C per parallel task (a multiple of 32).
const TASK_COLS: usize = 256;
/// 32-value k tiles per pass of the micro-kernel over one 32 × 32 block of C.
const K_TILES: usize = 64;
/// bf16 values in a tile: 16 rows × 32.
const TILE: usize = 512;

/// Whether this process runs [`gemm`]: the CPU reports AMX-TILE and AMX-BF16 (CPUID leaf 7)
/// and Linux granted the tile-data state. Checked once; `SLEUTH_AMX=0` turns it off for the
/// process (before/after figures in one build).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var("SLEUTH_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        x86::detect()
    })
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN).
#[inline]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The product `x` would give in this module: `x` rounded to bf16 and back (for tests and
/// error bounds).
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16(x) as u32) << 16)
}

/// Splits weights into a bf16-exact high part and the f32 remainder, `w = hi + lo` exactly;
/// a product against both (`x·hi + x·lo`, the second packed to bf16 in turn) sees the weight
/// to about 16 significant bits instead of 8 (the "bf16x2" split of Henry et al. 2019,
/// "Leveraging the bfloat16 Artificial Intelligence Datatype For Higher-Precision
/// Computations"). Why weights need it: an f32 master weight that sits on a bf16 rounding
/// boundary — as many weights dequantized from a Q4_1 / Q8_0 GGUF do, exactly on a tie —
/// flips a whole bf16 unit (≈ 0.4 % of its value) under an update of 1e-6, so a single
/// AdamW step changed the bf16 model's loss by 5 % while the f32 model's moved 0.2 %
/// (docs/performance.md, "bf16 training on AMX").
pub fn split_hi_lo(w: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut hi = vec![0f32; w.len()];
    let mut lo = vec![0f32; w.len()];
    hi.par_chunks_mut(1 << 14)
        .zip(lo.par_chunks_mut(1 << 14))
        .zip(w.par_chunks(1 << 14))
        .for_each(|((hi, lo), w)| {
            for ((h, l), &x) in hi.iter_mut().zip(lo.iter_mut()).zip(w) {
                *h = round_bf16(x);
                *l = x - *h;
            }
        });
    (hi, lo)
}

/// Packs `a` (`m × k`) into A tiles `[mp/16][kt][16][32]` (`mp` = m rounded up to 32, `kt` =
/// k tiles), zero-padded.
fn pack_a(out: &mut Tiles, a: View, m: usize, k: usize, mp: usize, kt: usize) {
    out.resize(mp * kt * 32);
    out.values_mut()
        .par_chunks_mut(16 * kt * 32)
        .enumerate()
        .for_each(|(mb, panel)| {
            let rows = m.saturating_sub(mb * 16).min(16);
            if rows < 16 || !k.is_multiple_of(32) {
                panel.fill(0); // padding (the buffer is reused)
            }
            // Walk the source along its unit stride (rows of a row-major A, or columns of
            // a transposed view), so each cache line is read once.
            // SAFETY: (i, kk) with i < m, kk < k is inside the view (the caller's contract).
            let at = |r: usize, kk: usize| unsafe { *a.at(mb * 16 + r, kk).ptr };
            let slot = |r: usize, kk: usize| (kk / 32) * TILE + r * 32 + kk % 32;
            if a.cs == 1 {
                for r in 0..rows {
                    // SAFETY: row mb·16 + r < m holds k elements at unit stride.
                    let done = unsafe { x86::pack_row(a.at(mb * 16 + r, 0).ptr, k, r, panel) };
                    for kk in done..k {
                        panel[slot(r, kk)] = bf16(at(r, kk));
                    }
                }
            } else if a.rs == 1 && rows == 16 {
                let mut kk = 0;
                while kk + 2 <= k {
                    // SAFETY: columns kk, kk + 1 < k hold rows mb·16 .. mb·16 + 16 ≤ m at
                    // unit stride.
                    unsafe { x86::pack_column_pair(a.at(mb * 16, kk).ptr, a.cs, kk, panel) };
                    kk += 2;
                }
                if kk < k {
                    // SAFETY: as above, one column.
                    unsafe { x86::pack_column(a.at(mb * 16, kk).ptr, kk, panel) };
                }
            } else {
                for kk in 0..k {
                    for r in 0..rows {
                        panel[slot(r, kk)] = bf16(at(r, kk));
                    }
                }
            }
        });
}

/// Packs `b` (`k × n`) into pair-interleaved B tiles `[np/16][kt][16][16][2]`, zero-padded.
fn pack_b(out: &mut Tiles, b: View, k: usize, n: usize, np: usize, kt: usize) {
    out.resize(np * kt * 32);
    out.values_mut()
        .par_chunks_mut(16 * kt * 32)
        .enumerate()
        .for_each(|(nb, panel)| {
            let cols = n.saturating_sub(nb * 16).min(16);
            if cols < 16 || !k.is_multiple_of(32) {
                panel.fill(0); // padding (the buffer is reused)
            }
            // SAFETY: (kk, j) with kk < k, j < n is inside the view (the caller's contract).
            let at = |kk: usize, c: usize| unsafe { *b.at(kk, nb * 16 + c).ptr };
            let slot =
                |kk: usize, c: usize| (kk / 32) * TILE + ((kk % 32) / 2) * 32 + c * 2 + kk % 2;
            if b.cs == 1 {
                let mut kk = 0;
                if cols == 16 {
                    while kk + 2 <= k {
                        // SAFETY: rows kk, kk + 1 < k hold columns nb·16 .. nb·16 + 16 ≤ n at
                        // unit stride.
                        unsafe { x86::pack_row_pair(b.at(kk, nb * 16).ptr, b.rs, kk, panel) };
                        kk += 2;
                    }
                }
                for kk in kk..k {
                    for c in 0..cols {
                        panel[slot(kk, c)] = bf16(at(kk, c));
                    }
                }
            } else {
                for c in 0..cols {
                    let mut kk = 0;
                    if b.rs == 1 {
                        while kk + 32 <= k {
                            // SAFETY: column nb·16 + c < n holds rows kk .. kk + 32 ≤ k at unit
                            // stride.
                            unsafe { x86::pack_pairs(b.at(kk, nb * 16 + c).ptr, kk, c, panel) };
                            kk += 32;
                        }
                    }
                    for kk in kk..k {
                        panel[slot(kk, c)] = bf16(at(kk, c));
                    }
                }
            }
        });
}

/// Packed bf16 tiles in a buffer whose start is 64-byte aligned, so every tile row is one
/// cache line: a tile load whose rows straddle two lines runs about 3× slower (measured on
/// L1-resident tiles: 0.87 against 2.1–2.8 TFLOP/s per thread for the micro-kernel).
#[derive(Default)]
struct Tiles(Vec<Line>);

/// One 64-byte tile row.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

impl Tiles {
    /// Grows or shrinks to `len` values (a multiple of 32), keeping the allocation.
    fn resize(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(32));
        self.0.resize(len / 32, Line([0; 32]));
    }

    fn values(&self) -> &[u16] {
        // SAFETY: `Line` is 32 plain u16 with no padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 32) }
    }

    fn values_mut(&mut self) -> &mut [u16] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 32) }
    }
}

/// The 32 × 32 f32 block the micro-kernel stores, 64-byte aligned like the tiles.
#[repr(C, align(64))]
struct Block([f32; 1024]);

/// `dst[m×n] = acc·dst + beta · lhs[m×k] · rhs[k×n]` with the operands rounded to bf16 and
/// the products summed in f32, on AMX tiles (module docs). `dst` is row-major with rows
/// `dst_rs` apart; `acc` false overwrites it.
///
/// # Safety
/// [`available`] returned true; the views address `m × k` and `k × n` valid elements; `dst`
/// addresses `m` rows of `n` valid elements, aliases neither operand and is not written by
/// another thread during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: View,
    rhs: View,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (mp, np, kt) = (
        m.next_multiple_of(32),
        n.next_multiple_of(32),
        k.div_ceil(32),
    );
    if kt == 0 {
        // SAFETY: the caller's contract.
        unsafe { empty_product(m, n, dst, dst_rs, acc) };
        return;
    }
    // The packed operands live in buffers kept per thread between calls (a step runs
    // hundreds of products; fresh buffers cost page faults and zeroing). Taken out of the
    // slot for the call, so a nested call on this thread (rayon work stealing) gets its own.
    let (mut a, mut b) = PACKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    pack_a(&mut a, lhs, m, k, mp, kt);
    pack_b(&mut b, rhs, k, n, np, kt);
    let (av, bv) = (a.values(), b.values());
    let (row_tasks, col_tasks) = (mp.div_ceil(TASK_ROWS), np.div_ceil(TASK_COLS));
    // SAFETY (of the writes below): each task writes only its own rows × columns of C.
    let dst = SharedMut(dst);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let (r0, c0) = (
            (task / col_tasks) * TASK_ROWS,
            (task % col_tasks) * TASK_COLS,
        );
        let (r1, c1) = ((r0 + TASK_ROWS).min(mp), (c0 + TASK_COLS).min(np));
        let mut block = Block([0f32; 32 * 32]);
        // SAFETY: `available()` (the caller's contract); released below.
        unsafe { x86::configure() };
        for k0 in (0..kt).step_by(K_TILES) {
            let nk = K_TILES.min(kt - k0);
            for j0 in (c0..c1).step_by(32) {
                let b0 = &bv[((j0 / 16) * kt + k0) * TILE..];
                let b1 = &bv[((j0 / 16 + 1) * kt + k0) * TILE..];
                for i0 in (r0..r1).step_by(32) {
                    let a0 = &av[((i0 / 16) * kt + k0) * TILE..];
                    let a1 = &av[((i0 / 16 + 1) * kt + k0) * TILE..];
                    // SAFETY: each panel holds `nk` more tiles from its start (kt tiles per
                    // 16-row or 16-column panel, k0 + nk ≤ kt); `block` is 32 × 32 f32.
                    unsafe { x86::kernel(a0, a1, b0, b1, nk, &mut block.0) };
                    let (rows, cols) = (m.saturating_sub(i0).min(32), n.saturating_sub(j0).min(32));
                    let overwrite = k0 == 0 && !acc;
                    for (r, row) in block.0.chunks_exact(32).enumerate().take(rows) {
                        // SAFETY: row i0 + r < m and columns j0..j0 + cols ≤ n of C, which only
                        // this task writes.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(
                                { dst }.0.add((i0 + r) * dst_rs + j0),
                                cols,
                            )
                        };
                        // SAFETY: `available()` implies AVX-512F.
                        unsafe { x86::epilogue(out, &row[..cols], beta, overwrite) };
                    }
                }
            }
        }
        // SAFETY: configured above on this thread.
        unsafe { x86::release() };
    });
    PACKED.with(|p| *p.borrow_mut() = (a, b));
}

thread_local! {
    /// [`gemm`]'s packed A and B, kept for the thread's next call.
    static PACKED: std::cell::RefCell<(Tiles, Tiles)> = const { std::cell::RefCell::new((Tiles(Vec::new()), Tiles(Vec::new()))) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// CPUID leaf 7 reports AMX-TILE (EDX bit 24) and AMX-BF16 (EDX bit 22), and Linux grants
    /// the tile-data state to this process.
    pub fn detect() -> bool {
        // CPUID leaf 7's answer only counts when leaf 0 says the leaf exists.
        let max = std::arch::x86_64::__cpuid(0).eax;
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        // Every AMX CPU has AVX512_BF16 (Sapphire Rapids on); packing uses it.
        max >= 7
            && edx & (1 << 24) != 0
            && edx & (1 << 22) != 0
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && request_tiles()
    }

    /// Converts 16 f32 at `src` to bf16 (`vcvtneps2bf16`: round to nearest even).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn cvt16(src: *const f32) -> __m256i {
        // SAFETY: the caller's pointer addresses 16 floats.
        unsafe {
            std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(src)))
        }
    }

    /// Packs row `r` of an A panel from `k` floats at unit stride, 16 at a time; returns how
    /// many it packed (the caller packs the tail).
    ///
    /// # Safety
    /// `src` addresses `k` floats; `panel` is a whole A panel (16 rows × k tiles).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_row(src: *const f32, k: usize, r: usize, panel: &mut [u16]) -> usize {
        let mut kk = 0;
        while kk + 16 <= k {
            let at = (kk / 32) * super::TILE + r * 32 + kk % 32;
            assert!(at + 16 <= panel.len());
            // SAFETY: 16 floats from src + kk < k; 16 u16 inside the panel (asserted).
            unsafe {
                _mm256_storeu_si256(panel.as_mut_ptr().add(at).cast(), cvt16(src.add(kk)));
            }
            kk += 16;
        }
        kk
    }

    /// Packs column `kk` of an A panel (its 16 rows at unit stride from `src`).
    ///
    /// # Safety
    /// `src` addresses 16 floats; `panel` is a whole A panel covering column `kk`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_column(src: *const f32, kk: usize, panel: &mut [u16]) {
        let mut v = [0u16; 16];
        // SAFETY: 16 floats at src; 32 bytes into `v`.
        unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), cvt16(src)) };
        let base = (kk / 32) * super::TILE + kk % 32;
        for (r, x) in v.into_iter().enumerate() {
            panel[base + r * 32] = x;
        }
    }

    /// Packs columns `kk`, `kk + 1` (even `kk`) of an A panel, each 16 rows at unit stride
    /// (column `kk + 1` at `src + cs`): the two values of a row are adjacent in its tile row,
    /// so each row gets one 32-bit pair, scattered 64 bytes apart.
    ///
    /// # Safety
    /// `src` and `src + cs` address 16 floats each; `panel` is a whole A panel covering `kk`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_column_pair(src: *const f32, cs: isize, kk: usize, panel: &mut [u16]) {
        let at = (kk / 32) * super::TILE + kk % 32;
        assert!(at + 15 * 32 + 2 <= panel.len());
        // SAFETY: 16 floats at src and src + cs; the scatter writes 16 × 4 bytes at
        // at + r·32 (u16 units), r < 16, inside the panel (asserted).
        unsafe {
            let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(src.offset(cs)),
                _mm512_loadu_ps(src),
            ));
            let pairs =
                _mm512_permutexvar_epi16(_mm512_loadu_si512(INTERLEAVE.as_ptr().cast()), both);
            let offsets = _mm512_mullo_epi32(
                _mm512_set1_epi32(64),
                _mm512_loadu_si512(LANES.as_ptr().cast()),
            );
            _mm512_i32scatter_epi32::<1>(panel.as_mut_ptr().add(at).cast(), offsets, pairs);
        }
    }

    /// Lanes 0..16 as i32.
    const LANES: [i32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// Interleaves two 16-lane halves: output lane 2c + p takes input lane 16p + c.
    const INTERLEAVE: [u16; 32] = {
        let mut idx = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            idx[i] = ((i % 2) * 16 + i / 2) as u16;
            i += 1;
        }
        idx
    };

    /// `out = beta·block` (`overwrite`) or `out += beta·block`, AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn epilogue(out: &mut [f32], block: &[f32], beta: f32, overwrite: bool) {
        if overwrite {
            for (o, &v) in out.iter_mut().zip(block) {
                *o = beta * v;
            }
        } else {
            for (o, &v) in out.iter_mut().zip(block) {
                *o += beta * v;
            }
        }
    }

    /// Packs rows `kk`, `kk + 1` (even `kk`) of a B panel, 16 columns each at unit stride from
    /// `src` (row `kk + 1` at `src + rs`), interleaved into one 64-byte tile row.
    ///
    /// # Safety
    /// `src` and `src + rs` address 16 floats each; `panel` is a whole B panel covering `kk`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_row_pair(src: *const f32, rs: isize, kk: usize, panel: &mut [u16]) {
        let at = (kk / 32) * super::TILE + ((kk % 32) / 2) * 32;
        assert!(at + 32 <= panel.len());
        // SAFETY: 16 floats at src and at src + rs (the caller's contract); 64 bytes inside the
        // panel (asserted).
        unsafe {
            let lo = _mm512_loadu_ps(src);
            let hi = _mm512_loadu_ps(src.offset(rs));
            let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
            _mm512_storeu_si512(
                panel.as_mut_ptr().add(at).cast(),
                _mm512_permutexvar_epi16(idx, both),
            );
        }
    }

    /// Packs rows `kk .. kk + 32` (`kk` a multiple of 32) of column `c` of a B panel, read at
    /// unit stride from `src`: 16 consecutive pairs, one per tile row.
    ///
    /// # Safety
    /// `src` addresses 32 floats; `panel` is a whole B panel covering rows `kk .. kk + 32`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_pairs(src: *const f32, kk: usize, c: usize, panel: &mut [u16]) {
        let at = (kk / 32) * super::TILE + c * 2;
        assert!(at + 15 * 32 + 2 <= panel.len());
        // SAFETY: 32 floats at src; the scatter writes 16 × 4 bytes at at + pr·32 (u16
        // units), pr < 16, inside the panel (asserted).
        unsafe {
            let both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src.add(16)), _mm512_loadu_ps(src));
            let offsets = _mm512_mullo_epi32(
                _mm512_set1_epi32(64),
                _mm512_loadu_si512(LANES.as_ptr().cast()),
            );
            _mm512_i32scatter_epi32::<1>(
                panel.as_mut_ptr().add(at).cast(),
                offsets,
                std::mem::transmute::<__m512bh, __m512i>(both),
            );
        }
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; true when granted.
    fn request_tiles() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain syscall with two integer arguments; `syscall` clobbers rcx, r11.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// Palette 1 with tiles 0–7 all 16 rows × 64 bytes (A: 16 × 32 bf16, B: 16 pairs × 16
    /// columns, C: 16 × 16 f32).
    const CONFIG: [u8; 64] = {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        let mut t = 0;
        while t < 8 {
            cfg[16 + 2 * t] = 64;
            cfg[48 + t] = 16;
            t += 1;
        }
        cfg
    };

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// The tile state was granted ([`detect`]).
    pub unsafe fn configure() {
        // SAFETY: a valid palette-1 configuration (the caller's contract covers the grant).
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.as_ptr(), options(nostack, readonly)) };
    }

    /// Releases the tiles (back to the initial state).
    ///
    /// # Safety
    /// [`configure`] ran on this thread.
    pub unsafe fn release() {
        // SAFETY: see above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `c[32×32] = A[32 × 32·nk] · B[32·nk × 32]` from the tiles at `a0`, `a1` (rows 0–15,
    /// 16–31) and `b0`, `b1` (columns 0–15, 16–31), `nk` consecutive tiles each.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; each slice holds at least `nk` tiles (nk ≥ 1).
    pub unsafe fn kernel(
        a0: &[u16],
        a1: &[u16],
        b0: &[u16],
        b1: &[u16],
        nk: usize,
        c: &mut [f32; 1024],
    ) {
        debug_assert!(nk >= 1 && [a0, a1, b0, b1].iter().all(|s| s.len() >= nk * super::TILE));
        // SAFETY: the loads read nk × 1 KB from each slice (checked above in debug builds,
        // the caller's contract otherwise); the stores write the 4 KB of `c`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "add {c}, 64",
                "tilestored [{c} + {cs}*1], tmm1",
                "add {c}, 2048 - 64",
                "tilestored [{c} + {cs}*1], tmm2",
                "add {c}, 64",
                "tilestored [{c} + {cs}*1], tmm3",
                a0 = inout(reg) a0.as_ptr() => _,
                a1 = inout(reg) a1.as_ptr() => _,
                b0 = inout(reg) b0.as_ptr() => _,
                b1 = inout(reg) b1.as_ptr() => _,
                n = inout(reg) nk => _,
                c = inout(reg) c.as_mut_ptr() => _,
                s = in(reg) 64usize,
                cs = in(reg) 128usize,
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn detect() -> bool {
        false
    }
    pub unsafe fn configure() {}
    pub unsafe fn release() {}
    pub unsafe fn kernel(
        _: &[u16],
        _: &[u16],
        _: &[u16],
        _: &[u16],
        _: usize,
        _: &mut [f32; 1024],
    ) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
    pub unsafe fn pack_row(_: *const f32, _: usize, _: usize, _: &mut [u16]) -> usize {
        0
    }
    pub unsafe fn pack_column(_: *const f32, _: usize, _: &mut [u16]) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
    pub unsafe fn pack_row_pair(_: *const f32, _: isize, _: usize, _: &mut [u16]) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
    pub unsafe fn pack_pairs(_: *const f32, _: usize, _: usize, _: &mut [u16]) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
    pub unsafe fn pack_column_pair(_: *const f32, _: isize, _: usize, _: &mut [u16]) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
    pub unsafe fn epilogue(_: &mut [f32], _: &[f32], _: f32, _: bool) {
        unreachable!("AMX is x86-64 only; available() is false here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // Just above halfway rounds up.
        assert_eq!(
            round_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0),
            1.0 + 1.0 / 128.0
        );
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to even.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }

    /// Every shape class (edges below one tile, between tiles, several k chunks) and operand
    /// layout (row-major, transposed) against an f64 sum of the bf16-rounded operands: the
    /// only difference left is f32 accumulation order.
    #[test]
    fn amx_gemm_matches_rounded_reference() {
        if !available() {
            eprintln!("skipped: no AMX-BF16 here (the f32 fallback is tested in fused)");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 7, 33),
            (32, 32, 32),
            (40, 20, 45),
            (70, 300, 600),
            (33, 65, 1030),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = lcg(1 + m as u64, m * k);
                let b = lcg(2 + n as u64, k * n);
                // A stored row-major [m, k], or as its transpose [k, m] read through `.t()`.
                let av = if ta {
                    View::rows(&a, m).t()
                } else {
                    View::rows(&a, k)
                };
                let bv = if tb {
                    View::rows(&b, k).t()
                } else {
                    View::rows(&b, n)
                };
                let get = |v: View, i: usize, j: usize| unsafe { *v.at(i, j).ptr };
                let mut c = lcg(3, m * n);
                let c0 = c.clone();
                let beta = 0.5;
                unsafe { gemm(m, n, k, c.as_mut_ptr(), n, true, av, bv, beta) };
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0f64;
                        let mut mag = 0f64;
                        for kk in 0..k {
                            let p = round_bf16(get(av, i, kk)) as f64
                                * round_bf16(get(bv, kk, j)) as f64;
                            s += p;
                            mag += p.abs();
                        }
                        let want = c0[i * n + j] as f64 + beta as f64 * s;
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (mag + 1.0),
                            "{m}×{n}×{k} ta={ta} tb={tb} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
                // Overwrite mode ignores what C held.
                let mut d = vec![f32::NAN; m * n];
                unsafe { gemm(m, n, k, d.as_mut_ptr(), n, false, av, bv, beta) };
                let mut e = vec![0f32; m * n];
                unsafe { gemm(m, n, k, e.as_mut_ptr(), n, false, av, bv, beta) };
                assert_eq!(d, e);
            }
        }
    }

    /// Weights exactly halfway between two bf16 values (as weights dequantized from a GGUF can
    /// be), moved by ±1e-6: a product over the split weights ([`split_hi_lo`]) changes by the
    /// exact `x·δ` within 5 %, where one bf16 rounding of the weights jumps a whole bf16 unit
    /// and misses it by more than 10× (checked too: that is why weights are split).
    #[test]
    fn split_weights_see_small_updates_at_ties() {
        if !available() {
            eprintln!("skipped: no AMX-BF16 here");
            return;
        }
        let (m, k, n) = (8, 256, 48);
        let x = lcg(5, m * k);
        let w: Vec<f32> = lcg(6, k * n)
            .into_iter()
            .map(|v| {
                let b = round_bf16(0.1 * v);
                let next = f32::from_bits(b.to_bits() + 0x1_0000);
                (b + next) / 2.0 // exactly representable in f32
            })
            .collect();
        let delta: Vec<f32> = (0..k * n).map(|i| 1e-6 * ((i % 3) as f32 - 1.0)).collect();
        let moved: Vec<f32> = w.iter().zip(&delta).map(|(a, d)| a + d).collect();
        let xv = View::rows(&x, k);
        let single = |w: &[f32]| {
            let mut y = vec![0f32; m * n];
            unsafe { gemm(m, n, k, y.as_mut_ptr(), n, false, xv, View::rows(w, n), 1.0) };
            y
        };
        let split = |w: &[f32]| {
            let (hi, lo) = split_hi_lo(w);
            let mut y = vec![0f32; m * n];
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    y.as_mut_ptr(),
                    n,
                    false,
                    xv,
                    View::rows(&hi, n),
                    1.0,
                );
                gemm(
                    m,
                    n,
                    k,
                    y.as_mut_ptr(),
                    n,
                    true,
                    xv,
                    View::rows(&lo, n),
                    1.0,
                );
            }
            y
        };
        let mut exact = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                exact[i * n + j] = (0..k)
                    .map(|kk| round_bf16(x[i * k + kk]) as f64 * delta[kk * n + j] as f64)
                    .sum();
            }
        }
        let miss = |f: &dyn Fn(&[f32]) -> Vec<f32>| {
            let (a, b) = (f(&moved), f(&w));
            let err: f64 = (0..m * n)
                .map(|i| (a[i] as f64 - b[i] as f64 - exact[i]).powi(2))
                .sum();
            let norm: f64 = exact.iter().map(|e| e * e).sum();
            (err / norm).sqrt()
        };
        let (s, o) = (miss(&split), miss(&single));
        assert!(s < 0.05, "split weights: the change misses x·δ by {s}");
        assert!(
            o > 10.0,
            "one bf16 rounding was expected to miss x·δ by > 10×, missed by {o}"
        );
    }
}
