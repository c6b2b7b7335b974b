//! Compile-time backend selection.
//!
//! [`Inference`] runs rollouts and evaluation; [`Train`] wraps it in burn's autodiff for the
//! policy update. Default: burn's `flex` CPU backend (pure Rust, multi-threaded GEMM). With
//! the `cuda` cargo feature: burn-cuda (f32), device 0.

use burn::backend::Autodiff;

/// Backend for forward passes without gradients (rollouts, eval, serving).
#[cfg(not(feature = "cuda"))]
pub type Inference = burn::backend::Flex;

/// Backend for forward passes without gradients (rollouts, eval, serving).
#[cfg(feature = "cuda")]
pub type Inference = burn::backend::Cuda<f32, i32>;

/// Backend with gradients, for the policy update.
pub type Train = Autodiff<Inference>;

/// The default device of [`Inference`] (the CPU, or CUDA device 0).
pub fn device() -> burn::tensor::Device<Inference> {
    Default::default()
}

/// A human-readable backend name for logs and reports.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "burn-cuda f32"
    } else {
        "burn-flex f32 (CPU)"
    }
}

/// Makes glibc's allocator keep freed memory for reuse instead of handing it back to the
/// kernel, process-wide; call once at start-up. `SLEUTH_SYSTEM_MALLOC=1` leaves glibc's
/// defaults (for before/after measurements).
///
/// Why: every burn-flex op allocates its output, and a training step allocates and frees the
/// same few-MB activation buffers (and 100+ MB logits) thousands of times. With glibc's
/// defaults, buffers above the mmap threshold are fresh `mmap`s and a freed heap top is
/// trimmed, so each reuse page-faults and the kernel zeroes the pages again: measured with
/// `perf` on `examples/profile_update.rs` (4 × 256 tokens, 2 cores), 16 % of the CPU time
/// was `clear_page` and 0.88 M page faults per step. With `mmap` off (`M_MMAP_MAX = 0`),
/// trimming only above 2 GiB free (`M_TRIM_THRESHOLD`), and one arena (`M_ARENA_MAX = 1`,
/// so buffers freed by rayon workers return to the pool the main thread allocates from),
/// page faults fell 4× and peak RSS stayed within 3 % (4.16 GB against 4.02 GB). The cost:
/// a process's RSS stays at its high-water mark, as with PyTorch's caching allocators.
/// No effect on other C libraries.
pub fn retain_freed_memory() {
    if std::env::var("SLEUTH_SYSTEM_MALLOC").is_ok_and(|v| v == "1") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; glibc documents it as callable at
    // any time, and these three take effect for later allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
