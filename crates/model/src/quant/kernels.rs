//! Dot products between one quantized weight row and one quantized activation row, per
//! instruction set, chosen once at run time.
//!
//! Both operands are sequences of 32-element blocks (`QK`). A Q8_0 weight block is 32 `i8`
//! with one f32 scale; a Q4_1 weight block is 32 unsigned nibbles (16 bytes, element `j` in
//! the low nibble of byte `j`, element `j + 16` in its high nibble — ggml's layout) with a
//! scale `d` and an offset `m`. Activations are Q8 blocks (32 `i8`, scale `d`, and `s = d·Σq`
//! for the Q4_1 offset term). So
//!
//! - Q8_0 · Q8: `Σ_b dw_b·dx_b·Σ_j qw_j·qx_j`
//! - Q4_1 · Q8: `Σ_b dw_b·dx_b·Σ_j qw_j·qx_j + mw_b·sx_b`
//!
//! The inner integer sums are exact; only the per-block f32 scaling rounds. Every path
//! computes the same integer sums, so paths differ only by f32 summation order.
//!
//! Paths: AVX2 (`vpmaddubsw` + `vpmaddwd`, one block per 256-bit register) and a portable
//! scalar fallback. On AVX-512 VNNI every product runs in the tiled GEMM of
//! [`super::gemm`] instead (one weight layout for decode and prefill); [`Isa::Avx512Vnni`]
//! here only names that path, and these row functions take AVX2 for it. The scheme
//! (sign trick for signed×signed bytes, nibble unpacking) follows llama.cpp's `ggml-cpu`
//! quantized dot products; the code is ours.

use std::sync::OnceLock;

/// Elements per quantization block.
pub const QK: usize = 32;

/// Instruction-set path of the quantized kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 F/BW/DQ/VL + VNNI (x86-64).
    Avx512Vnni,
}

impl Isa {
    /// Short name for logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && Isa::Avx2.supported()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest supported path, unless `SLEUTH_QUANT_ISA` (`scalar`, `avx2`,
    /// `avx512-vnni`) names another supported one.
    pub fn detect() -> Isa {
        if let Ok(name) = std::env::var("SLEUTH_QUANT_ISA") {
            if let Some(isa) = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
                .into_iter()
                .find(|i| i.name() == name && i.supported())
            {
                return isa;
            }
        }
        [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// The path new engines use: [`Isa::detect`], run once per process.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(Isa::detect)
    }
}

/// One row of Q8 activations: `nb` blocks.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    /// `nb · 32` quantized values.
    pub q: &'a [i8],
    /// Per-block scale, `nb`.
    pub d: &'a [f32],
    /// Per-block `d · Σq`, `nb`.
    pub s: &'a [f32],
}

/// Q8_0 weight row · Q8 activation row. `wq`: `nb·32`, `wd`: `nb`.
#[inline]
pub fn dot_q8_0(isa: Isa, wq: &[i8], wd: &[f32], x: ActRow<'_>) -> f32 {
    debug_assert_eq!(wq.len(), x.q.len());
    debug_assert_eq!(wd.len(), x.d.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa` values other than Scalar are only produced after feature detection,
        // and AVX-512 VNNI implies AVX2 + FMA.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::dot_q8_0_avx2(wq, wd, x) },
        _ => dot_q8_0_scalar(wq, wd, x),
    }
}

/// Q4_1 weight row · Q8 activation row. `wq`: `nb·16` packed nibbles, `wd`, `wm`: `nb`.
#[inline]
pub fn dot_q4_1(isa: Isa, wq: &[u8], wd: &[f32], wm: &[f32], x: ActRow<'_>) -> f32 {
    debug_assert_eq!(wq.len() * 2, x.q.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa` values other than Scalar are only produced after feature detection,
        // and AVX-512 VNNI implies AVX2 + FMA.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::dot_q4_1_avx2(wq, wd, wm, x) },
        _ => dot_q4_1_scalar(wq, wd, wm, x),
    }
}

/// Portable Q8_0 · Q8.
pub fn dot_q8_0_scalar(wq: &[i8], wd: &[f32], x: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (&dw, &dx)) in wd.iter().zip(x.d).enumerate() {
        let w = &wq[b * QK..(b + 1) * QK];
        let a = &x.q[b * QK..(b + 1) * QK];
        let sum: i32 = w.iter().zip(a).map(|(&p, &q)| p as i32 * q as i32).sum();
        acc += dw * dx * sum as f32;
    }
    acc
}

/// Portable Q4_1 · Q8.
pub fn dot_q4_1_scalar(wq: &[u8], wd: &[f32], wm: &[f32], x: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for b in 0..wd.len() {
        let w = &wq[b * QK / 2..(b + 1) * QK / 2];
        let a = &x.q[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            sum += (w[j] & 0x0f) as i32 * a[j] as i32;
            sum += (w[j] >> 4) as i32 * a[j + QK / 2] as i32;
        }
        acc += wd[b] * x.d[b] * sum as f32 + wm[b] * x.s[b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActRow, QK};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Σ over 32 signed bytes of `w·x`, as 8 i32 lanes (AVX2 sign trick: |w| · sign(x, w)).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn block_i8_avx2(w: __m256i, x: __m256i) -> __m256i {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        let p16 = _mm256_maddubs_epi16(aw, sx);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; slices as in [`super::dot_q8_0`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_0_avx2(wq: &[i8], wd: &[f32], x: ActRow<'_>) -> f32 {
        let nb = wd.len();
        assert!(wq.len() >= nb * QK && x.q.len() >= nb * QK && x.d.len() >= nb);
        let mut acc = _mm256_setzero_ps();
        for (b, (&dw, &dx)) in wd.iter().zip(x.d).enumerate() {
            // SAFETY: bounds asserted above; loads are unaligned.
            let (w, a) = unsafe {
                (
                    _mm256_loadu_si256(wq.as_ptr().add(b * QK) as *const __m256i),
                    _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i),
                )
            };
            let s = _mm256_cvtepi32_ps(block_i8_avx2(w, a));
            acc = _mm256_fmadd_ps(s, _mm256_set1_ps(dw * dx), acc);
        }
        hsum256(acc)
    }

    /// 16 packed-nibble bytes → 32 unsigned bytes (low nibbles first, then high nibbles).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn unpack_nibbles(p: __m128i) -> __m256i {
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(p, m);
        let hi = _mm_and_si128(_mm_srli_epi16(p, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; slices as in [`super::dot_q4_1`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1_avx2(wq: &[u8], wd: &[f32], wm: &[f32], x: ActRow<'_>) -> f32 {
        let nb = wd.len();
        assert!(wq.len() >= nb * QK / 2 && x.q.len() >= nb * QK && wm.len() >= nb);
        assert!(x.d.len() >= nb && x.s.len() >= nb);
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        for b in 0..nb {
            // SAFETY: bounds asserted above; loads are unaligned.
            let (p, a) = unsafe {
                (
                    _mm_loadu_si128(wq.as_ptr().add(b * QK / 2) as *const __m128i),
                    _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i),
                )
            };
            let w = unpack_nibbles(p);
            let p16 = _mm256_maddubs_epi16(w, a);
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
            acc = _mm256_fmadd_ps(s, _mm256_set1_ps(wd[b] * x.d[b]), acc);
            offset += wm[b] * x.s[b];
        }
        hsum256(acc) + offset
    }
}
