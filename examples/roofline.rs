//! This machine's roofline, measured with the thread count sleuth uses (issue 34, item 1).
//!
//! ```sh
//! cargo run --release --example roofline            # or: bash scripts/bench-roofline
//! ```
//!
//! Prints, each with the CPU flags it depends on:
//! - **peak arithmetic** of one instruction stream per thread, all threads at once: f32 FMA
//!   (AVX-512 `vfmadd…ps zmm`, else AVX2 `ymm`), bf16 dot products (AVX512_BF16 `vdpbf16ps`)
//!   and int8 dot products (AVX512_VNNI `vpdpbusd`), each with 12 independent accumulators so
//!   the loop is bound by throughput, not latency. Figures are operations per second counting
//!   a multiply-add as 2; and, where Linux reports AMX tiles (`amx_tile` with `amx_bf16` /
//!   `amx_int8` in /proc/cpuinfo), the tile instructions `tdpbf16ps` and `tdpbusd` with four
//!   independent accumulator tiles (the tile state is requested with `arch_prctl`, as the
//!   kernel's AMX documentation describes);
//! - **memory read bandwidth**: a parallel sum over a 512 MiB buffer (far beyond the caches);
//! - **GEMM**: sleuth's own f32 matmul (burn-flex's GEMM, the kernel the training forward and
//!   backward run on) on square shapes and on a training-step shape, best of 3.
//!
//! `scripts/bench-roofline` runs this and numpy's OpenBLAS SGEMM on the same shapes and
//! thread count, as the well-known reference. Nothing here is a test: figures depend on the
//! machine and on what else runs.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use rayon::prelude::*;
use sleuth::model::backend::{self, Inference};
use sleuth::model::fused;

/// Iterations of each peak loop (12 instructions each).
const PEAK_ITERS: u64 = 20_000_000;

/// The AMX loops run `PEAK_ITERS / AMX_DIVISOR` iterations of 4 tile products (each about 16
/// cycles), so they take about as long as the vector loops.
const AMX_DIVISOR: u64 = 20;

fn main() {
    let threads = rayon::current_num_threads();
    println!("threads (rayon, as sleuth uses): {threads}");
    println!("cpu flags: {}", flags().join(" "));
    println!();
    println!("| what | figure | needs |");
    println!("|---|---|---|");
    // `roofline gemm`: the GEMM rows only.
    if std::env::args().nth(1).as_deref() != Some("gemm") {
        peaks(threads);
        bandwidth();
    }
    gemm();
}

/// The x86 features this benchmark reports on, as detected at run time.
fn flags() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(if is_x86_feature_detected!($f) { out.push($f); })*};
        }
        probe!(
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16"
        );
    }
    out
}

/// Runs `kernel(iters)` on every thread at once and returns operations per second (best of
/// 3), given the operations one iteration performs on one thread.
fn parallel_rate(threads: usize, ops_per_iter: f64, kernel: fn(u64) -> f32) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            .map(|_| kernel(PEAK_ITERS))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(ops_per_iter * PEAK_ITERS as f64 * threads as f64 / secs);
    }
    best
}

fn peaks(threads: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // 12 instructions × 16 lanes × 2 (multiply and add).
            let r = parallel_rate(threads, 12.0 * 16.0 * 2.0, |n| unsafe {
                x86::fma_f32_avx512(n)
            });
            println!("| f32 FMA peak | {:.1} GFLOP/s | avx512f |", r / 1e9);
        } else if is_x86_feature_detected!("fma") {
            let r = parallel_rate(threads, 12.0 * 8.0 * 2.0, |n| unsafe {
                x86::fma_f32_avx2(n)
            });
            println!("| f32 FMA peak | {:.1} GFLOP/s | avx2 + fma |", r / 1e9);
        }
        if is_x86_feature_detected!("avx512bf16") {
            // 12 instructions × 32 bf16 pairs × 2.
            let r = parallel_rate(threads, 12.0 * 32.0 * 2.0, |n| unsafe { x86::dot_bf16(n) });
            println!(
                "| bf16 dot peak (f32 accumulate) | {:.1} GFLOP/s | avx512bf16 |",
                r / 1e9
            );
        } else {
            println!("| bf16 dot peak | – | avx512bf16 (absent) |");
        }
        if is_x86_feature_detected!("avx512vnni") {
            // 12 instructions × 64 u8·i8 pairs × 2.
            let r = parallel_rate(threads, 12.0 * 64.0 * 2.0, |n| unsafe { x86::dot_i8(n) });
            println!(
                "| int8 dot peak (i32 accumulate) | {:.1} GOP/s | avx512vnni |",
                r / 1e9
            );
        } else if is_x86_feature_detected!("avx2") {
            // 12 instructions × 32 u8·i8 products × 2, each followed by its i16 add (the
            // accumulation the AVX2 kernel of the quantized engine pays per product).
            let r = parallel_rate(threads, 12.0 * 32.0 * 2.0, |n| unsafe {
                x86::dot_i8_avx2(n)
            });
            println!(
                "| int8 dot peak (vpmaddubsw + vpaddw, i16 accumulate) | {:.1} GOP/s | avx2 (no avx512vnni) |",
                r / 1e9
            );
        } else {
            println!("| int8 dot peak | – | avx512vnni or avx2 (absent) |");
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has = |flag: &str| cpuinfo.split_whitespace().any(|w| w == flag);
        if !has("amx_tile") {
            println!("| AMX tile peaks | – | amx_tile (absent) |");
        } else if !fused::amx_available() {
            println!("| AMX tile peaks | – | no AMX-BF16, or Linux refused the tile state (arch_prctl) |");
        } else {
            // 4 tile products per iteration, each 16 × 16 outputs × 32 bf16 pairs
            // (tdpbf16ps) or × 64 u8·i8 pairs (tdpbusd).
            if has("amx_bf16") {
                let r = parallel_rate(threads, 4.0 * 16.0 * 16.0 * 32.0 * 2.0, |n| unsafe {
                    x86::amx_peak(x86::Amx::Bf16, n / AMX_DIVISOR) as f32
                }) / AMX_DIVISOR as f64;
                println!(
                    "| AMX bf16 tile peak (f32 accumulate) | {:.1} GFLOP/s | amx_bf16 |",
                    r / 1e9
                );
            }
            if has("amx_int8") {
                let r = parallel_rate(threads, 4.0 * 16.0 * 16.0 * 64.0 * 2.0, |n| unsafe {
                    x86::amx_peak(x86::Amx::Int8, n / AMX_DIVISOR) as f32
                }) / AMX_DIVISOR as f64;
                println!(
                    "| AMX int8 tile peak (i32 accumulate) | {:.1} GOP/s | amx_int8 |",
                    r / 1e9
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        println!("| peaks | – | x86_64 only |");
    }
}

/// Parallel sum over 512 MiB of f32, best of 5 passes, in GB/s (10^9 bytes). Each chunk sums
/// into 16 lanes, so the loop vectorizes and memory, not the add latency, bounds it.
fn bandwidth() {
    let n = 128 << 20;
    let data: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = data
            .par_chunks(1 << 16)
            .map(|c| {
                let lanes = c.chunks_exact(16).fold([0f32; 16], |mut acc, x| {
                    for (a, v) in acc.iter_mut().zip(x) {
                        *a += v;
                    }
                    acc
                });
                lanes.iter().sum::<f32>()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / secs / 1e9);
    }
    println!("| memory read bandwidth | {best:.1} GB/s | – |");
}

/// sleuth's f32 GEMM (burn-flex) in GFLOP/s, best of 3, on square and training shapes.
fn gemm() {
    let device = backend::device();
    // (m, k, n): squares, then a stage-1 update's MLP up-projection over one micro-batch of
    // 2,048 tokens of SmolLM2-135M (hidden 576, intermediate 1,536) and its down-projection.
    let shapes: [(usize, usize, usize); 5] = [
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (2048, 576, 1536),
        (2048, 1536, 576),
    ];
    for (m, k, n) in shapes {
        let a = Tensor::<Inference, 2>::random([m, k], Distribution::Default, &device);
        let b = Tensor::<Inference, 2>::random([k, n], Distribution::Default, &device);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let c = a.clone().matmul(b.clone());
            let v = c.into_data();
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(v);
            best = best.max(2.0 * (m * k * n) as f64 / secs / 1e9);
        }
        println!("| sleuth f32 GEMM {m}×{k}·{k}×{n} | {best:.1} GFLOP/s | burn-flex |");
        if fused::amx_available() {
            // The same product with bf16 operands on AMX tiles (`[train] precision = "bf16"`),
            // packing of both operands included, as a training step runs it.
            let mut best = 0.0f64;
            for _ in 0..3 {
                let t = Instant::now();
                let c = fused::linear(a.clone(), b.clone(), fused::Precision::Bf16)
                    .expect("AMX available");
                let v = c.into_data();
                let secs = t.elapsed().as_secs_f64();
                std::hint::black_box(v);
                best = best.max(2.0 * (m * k * n) as f64 / secs / 1e9);
            }
            println!("| sleuth bf16 GEMM {m}×{k}·{k}×{n} | {best:.1} GFLOP/s | AMX tiles |");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// A tile configuration (palette 1) with tiles 0–7 all 16 rows × 64 bytes.
    fn tile_config() -> [u8; 64] {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            cfg[48 + t] = 16;
        }
        cfg
    }

    /// The tile product an AMX peak loop runs.
    #[derive(Clone, Copy)]
    pub enum Amx {
        /// `tdpbf16ps`: 16 × 16 f32 outputs += 32 bf16 pairs each.
        Bf16,
        /// `tdpbusd`: 16 × 16 i32 outputs += 64 u8 · i8 pairs each.
        Int8,
    }

    /// Loads the tile configuration, zeroes accumulator tiles 0–3, loads source tiles 4–7
    /// (4 × 1 KB at a 64-byte stride), runs `iters` × four `$op` products into tiles 0–3,
    /// stores tile 0 and releases the tile state.
    macro_rules! tile_loop {
        ($op:literal, $cfg:expr, $src:expr, $iters:expr, $out:expr) => {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tileloadd tmm4, [{src} + {stride}*1]",
                "add {src}, 1024",
                "tileloadd tmm5, [{src} + {stride}*1]",
                "add {src}, 1024",
                "tileloadd tmm6, [{src} + {stride}*1]",
                "add {src}, 1024",
                "tileloadd tmm7, [{src} + {stride}*1]",
                "2:",
                concat!($op, " tmm0, tmm4, tmm5"),
                concat!($op, " tmm1, tmm4, tmm6"),
                concat!($op, " tmm2, tmm7, tmm5"),
                concat!($op, " tmm3, tmm7, tmm6"),
                "dec {n}",
                "jnz 2b",
                "tilestored [{out} + {stride}*1], tmm0",
                "tilerelease",
                cfg = in(reg) $cfg,
                src = inout(reg) $src => _,
                stride = in(reg) 64usize,
                n = inout(reg) $iters => _,
                out = in(reg) $out,
                options(nostack),
            )
        };
    }

    /// `iters` × four tile products of `kind` into accumulator tiles 0–3 from source tiles
    /// 4–7 (small values: bf16 ≈ 1e-3, or bytes of 1); returns the first output's bits so
    /// nothing is optimised away.
    ///
    /// # Safety
    /// The CPU has the AMX extension `kind` needs and `sleuth::model::fused::amx_available()`
    /// returned true in this process (it asks Linux for the tile state).
    pub unsafe fn amx_peak(kind: Amx, iters: u64) -> u32 {
        let cfg = tile_config();
        let src: Vec<u8> = match kind {
            Amx::Bf16 => 0x3a83u16.to_le_bytes().repeat(2 * 1024),
            Amx::Int8 => vec![1u8; 4 * 1024],
        };
        let mut out = [0u32; 16 * 16];
        let iters = iters.max(1);
        // SAFETY: the configuration is valid, the loads read 4 × 1 KB of `src` at a 64-byte
        // stride, the store writes 1 KB into `out`; tilerelease restores the initial state.
        unsafe {
            match kind {
                Amx::Bf16 => tile_loop!(
                    "tdpbf16ps",
                    cfg.as_ptr(),
                    src.as_ptr(),
                    iters,
                    out.as_mut_ptr()
                ),
                Amx::Int8 => tile_loop!(
                    "tdpbusd",
                    cfg.as_ptr(),
                    src.as_ptr(),
                    iters,
                    out.as_mut_ptr()
                ),
            }
        }
        out[0]
    }

    /// 12 independent FMA chains on zmm registers; returns a lane so nothing is optimised away.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_f32_avx512(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x));
        _mm512_reduce_add_ps(s)
    }

    /// The same on ymm registers (AVX2 + FMA).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_f32_avx2(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        lanes.iter().sum()
    }

    /// 12 independent `vdpbf16ps` chains: 32 bf16 products per instruction into 16 f32 lanes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16(iters: u64) -> f32 {
        let one = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, one, one);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x));
        _mm512_reduce_add_ps(s)
    }

    /// 12 independent `vpmaddubsw` + `vpaddw` chains: 32 u8·i8 products per pair into 16 i16
    /// lanes (AVX2 has no byte dot with accumulation). Each product takes its chain's own
    /// value as the unsigned operand, so it cannot be hoisted out of the loop; the lanes
    /// saturate, which does not change the timing.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_i8_avx2(iters: u64) -> f32 {
        let b = _mm256_set1_epi8(1);
        let mut acc: [__m256i; 12] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_add_epi16(*x, _mm256_maddubs_epi16(*x, b));
            }
        }
        let mut lanes = [0i16; 16];
        let s = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, x| _mm256_add_epi16(s, *x));
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s);
        lanes.iter().map(|&v| v as f32).sum()
    }

    /// 12 independent `vpdpbusd` chains: 64 u8·i8 products per instruction into 16 i32 lanes.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dot_i8(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(1));
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, x| _mm512_add_epi32(s, *x));
        _mm512_reduce_add_epi32(s) as f32
    }
}
