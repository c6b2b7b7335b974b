//! The instruction-set paths of the quantized engine, chosen once at run time, and the
//! portable dot product of one quantized weight row with one quantized activation row.
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
//! Paths: on AVX-512 VNNI and on AVX2 every product runs in the tiled GEMM of
//! [`super::gemm`] (one micro-kernel per ISA over the same repacked weights); the scalar
//! row dots here are the fallback for other CPUs and the reference the tests compare with.
//! (AVX2 row kernels, one weight row against one activation row with a horizontal sum per
//! output, ran before the AVX2 tiles: docs/performance.md has the figures before and after.)

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

/// Q8_0 weight row · Q8 activation row (`wq`: `nb·32`, `wd`: `nb`), in portable Rust.
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

/// Q4_1 weight row · Q8 activation row (`wq`: `nb·16` packed nibbles, `wd`, `wm`: `nb`), in
/// portable Rust.
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
