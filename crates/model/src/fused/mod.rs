//! Fused CPU kernels, with hand-written backward passes, for the whole-sequence forward pass
//! that training and scoring run ([`crate::Llama::forward`]).
//!
//! # Why
//! Built from burn's tensor ops, one decoder layer is ~60 small ops forward and more
//! backward, and on burn-flex each op allocates a fresh output buffer: every matmul output
//! is `calloc`ed and then copied once more to reach burn's runtime alignment, broadcast
//! element-wise ops (the causal bias, the RoPE tables) walk strided indices one element at a
//! time, and the softmax of the attention scores makes five `[B, kv, group·T, T]` tensors.
//! Profiled with `perf` on `examples/profile_update.rs` (4 × 256 tokens, 2 cores), a fifth
//! of the update was page faults on fresh buffers, a tenth strided iteration, and GEMM under
//! half. Four ops here replace those chains with one pass each over contiguous `f32`
//! slices:
//!
//! - [`causal_attention`]: RoPE on q and k, `softmax(q·kᵀ/√d + causal)·v` with grouped kv
//!   heads, per (row, kv head) task; the products go through the `gemm` crate (burn-flex's
//!   own GEMM) on strided views of the projections' `[B, T, heads, hd]` layout, so no
//!   transpose is ever materialised, and causal blocks above the diagonal are skipped
//!   (64-row blocks: 0.63× the products of the full square at T = 256). Backward is the
//!   standard one (e.g. FlashAttention's Algorithm 2 without tiling; Dao et al. 2022):
//!   `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = dS·k`, `dk = dSᵀ·q`, `dv = Pᵀ·dO`,
//!   then the inverse rotation of dq and dk. The probabilities P (`[B, heads, T, T]`) are
//!   saved for backward, as burn's composed softmax saved them.
//! - [`rms_norm`]: `x · w / √(mean(x²) + ε)` and its backward.
//! - [`swiglu`]: `silu(g) ⊙ u` and its backward.
//! - [`head_logprobs`]: the output projection, log-softmax, target gather and entropy of the
//!   scored positions: one GEMM into a `[N, vocab]` buffer kept for backward, then one pass
//!   per row, instead of the five or so 176 MB tensors (896 × 49,152) of the composed path.
//!
//! # How they plug in
//! The model is generic over burn's `Backend` (its `Module` derive ties it there), so the
//! ops specialise at run time: on burn-flex ([`Flex`], inference) and on `Autodiff<Flex>`
//! (training) they take the tensors' primitives by type id and run the kernels, registering
//! a custom backward step on the autodiff graph; on any other backend (CUDA) they return
//! `None` and the caller runs the composed burn ops, which remain the reference: tests check
//! outputs and every parameter's gradient of the fused model against them.
//! [`with_composite`] forces the composed path on the current thread (tests and
//! before/after profiles); `SLEUTH_FUSED=0` does so for a whole process.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod amx;
mod prefix;
pub use prefix::prefix_attention;

/// The training backend the fused ops specialise for (burn-flex under autodiff).
type Ad = Autodiff<Flex>;
/// Its float tensor primitive (`AutodiffTensor<Flex>`).
type AdTensor = burn::tensor::ops::FloatTensor<Ad>;

thread_local! {
    static COMPOSITE: Cell<bool> = const { Cell::new(false) };
    static NO_AMX: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the fused ops switched off on this thread (every model forward inside uses
/// burn's composed ops), for tests and before/after measurements in one build.
pub fn with_composite<R>(f: impl FnOnce() -> R) -> R {
    let before = COMPOSITE.with(|c| c.replace(true));
    let out = f();
    COMPOSITE.with(|c| c.set(before));
    out
}

/// Which fused path backend `B` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flex,
    Autodiff,
}

fn kind<B: Backend>() -> Option<Kind> {
    static ENV_OFF: OnceLock<bool> = OnceLock::new();
    let off = *ENV_OFF.get_or_init(|| std::env::var("SLEUTH_FUSED").is_ok_and(|v| v == "0"));
    if off || COMPOSITE.with(Cell::get) {
        return None;
    }
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Some(Kind::Flex)
    } else if id == TypeId::of::<Ad>() {
        Some(Kind::Autodiff)
    } else {
        None
    }
}

/// Whether the fused ops run for backend `B` on this thread.
pub fn enabled<B: Backend>() -> bool {
    kind::<B>().is_some()
}

/// Moves a value to the type it is known to have (checked by type id before the call).
fn cast<T: 'static, U: 'static>(x: T) -> U {
    let mut slot = Some(x);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("fused: backend type checked before the cast")
}

fn primitive<B: Backend, const D: usize, P: 'static>(x: Tensor<B, D>) -> P {
    cast(x.into_primitive().tensor())
}

fn from_primitive<B: Backend, const D: usize, P: 'static>(p: P) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast::<P, B::FloatTensorPrimitive>(
        p,
    )))
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused: f32 tensor made contiguous before reading")
}

fn flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// A raw pointer that rayon tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every use writes index sets that are disjoint between tasks (stated at each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

// ---------------------------------------------------------------------------------------
// GEMM on strided views
// ---------------------------------------------------------------------------------------

/// A strided matrix view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}
// SAFETY: a view only reads, and whoever makes one keeps its buffer alive and unwritten while
// any task reads through it (stated at each parallel use).
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// The row-major matrix starting at `m[0]` whose rows are `rs` elements apart.
    fn rows(m: &[f32], rs: usize) -> Self {
        Self {
            ptr: m.as_ptr(),
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose.
    fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The view whose element `(0, 0)` is this one's `(i, j)`.
    fn at(self, i: usize, j: usize) -> Self {
        Self {
            ptr: self
                .ptr
                .wrapping_offset(i as isize * self.rs + j as isize * self.cs),
            ..self
        }
    }
}

/// `dst[m×n] = acc·dst + beta · lhs[m×k] · rhs[k×n]` (`acc` false: dst is overwritten); `dst`
/// is row-major with rows `dst_rs` apart.
///
/// # Safety
/// Every view must address `m×k`, `k×n` and `m×n` valid elements, and `dst` must not alias
/// `lhs` or `rhs` nor be written concurrently by another thread.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_view(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: View,
    rhs: View,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: the caller's contract.
        unsafe { empty_product(m, n, dst, dst_rs, acc) };
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// [`gemm_view`] on the rayon pool, or with `bf16` the same product on AMX tiles
/// ([`amx::gemm`]: operands rounded to bf16, f32 sums).
///
/// # Safety
/// As [`gemm_view`]; with `bf16`, [`amx_available`] returned true.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    bf16: bool,
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
    // SAFETY: the caller's contract.
    unsafe {
        match bf16 {
            true => amx::gemm(m, n, k, dst, dst_rs, acc, lhs, rhs, beta),
            false => gemm_view(
                m,
                n,
                k,
                dst,
                dst_rs,
                acc,
                lhs,
                rhs,
                beta,
                gemm::Parallelism::Rayon(0),
            ),
        }
    }
}

/// `dst = acc·dst + beta · lhs · W` where `W` is a weight read through `view` (a function of
/// the weight's storage giving the right operand's view): [`gemm_view`] on the weight itself,
/// or with `bf16` two AMX products over its split ([`amx::split_hi_lo`]: `lhs·hi + lhs·lo`),
/// so the weight keeps about 16 significant bits while the activations are bf16.
///
/// # Safety
/// As [`product`]; `view` maps a buffer of `w.len()` elements to a view in its bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn product_weight(
    bf16: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: View,
    w: &[f32],
    view: impl Fn(&[f32]) -> View,
    beta: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if !bf16 {
            return product(false, m, n, k, dst, dst_rs, acc, lhs, view(w), beta);
        }
        let (hi, lo) = amx::split_hi_lo(w);
        amx::gemm(m, n, k, dst, dst_rs, acc, lhs, view(&hi), beta);
        amx::gemm(m, n, k, dst, dst_rs, true, lhs, view(&lo), beta);
    }
}

/// A product over k = 0 (a sum of nothing): `dst[m×n]` keeps its values with `acc`, else
/// becomes zero.
///
/// # Safety
/// `dst` addresses `m` rows of `n` valid elements, `dst_rs` apart.
unsafe fn empty_product(m: usize, n: usize, dst: *mut f32, dst_rs: usize, acc: bool) {
    if acc {
        return;
    }
    for i in 0..m {
        // SAFETY: row i < m holds n elements (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n) }.fill(0.0);
    }
}

/// Causal scores: rows `r0..r1` × columns `0..r1` of `dst` (`[T, T]`, row-major) become
/// `beta · a[r0..r1] · bᵀ[.., 0..r1]` for each causal block; `a`, `b`: `[T, hd]`. Columns
/// right of a block's last row are left as they were (callers never read them).
///
/// # Safety
/// `a` and `b` must address `T × hd` valid elements each.
unsafe fn causal_scores(dst: &mut [f32], a: View, b: View, t: usize, hd: usize, beta: f32) {
    causal_scores_ld(dst, t, a, b, t, hd, beta)
}

/// [`causal_scores`] into a `dst` whose rows are `ld ≥ T` elements apart (the causal part of
/// a wider score matrix, as [`prefix`] keeps it).
///
/// # Safety
/// As [`causal_scores`]; `dst` must hold `(T − 1)·ld + T` elements.
unsafe fn causal_scores_ld(
    dst: &mut [f32],
    ld: usize,
    a: View,
    b: View,
    t: usize,
    hd: usize,
    beta: f32,
) {
    for (r0, r1) in blocks(t) {
        let d = dst[r0 * ld..].as_mut_ptr();
        let par = gemm::Parallelism::None;
        gemm_view(r1 - r0, r1, hd, d, ld, false, a.at(r0, 0), b.t(), beta, par);
    }
}

/// `dst[r0..r1] = w[r0..r1, 0..r1] · x[0..r1]` for each causal block: `w` `[T, T]`
/// lower-triangular (row-major), `x` `[T, hd]`, `dst` `[T, hd]` with rows `dst_rs` apart.
///
/// # Safety
/// `x` must address `T × hd` valid elements, `dst` `T` rows of `hd`, written by no one else.
unsafe fn causal_mix(dst: *mut f32, dst_rs: usize, w: &[f32], x: View, t: usize, hd: usize) {
    causal_mix_ld(dst, dst_rs, w, t, x, t, hd)
}

/// [`causal_mix`] with `w`'s rows `ld ≥ T` elements apart.
///
/// # Safety
/// As [`causal_mix`]; `w` must hold `(T − 1)·ld + T` elements.
unsafe fn causal_mix_ld(
    dst: *mut f32,
    dst_rs: usize,
    w: &[f32],
    ld: usize,
    x: View,
    t: usize,
    hd: usize,
) {
    for (r0, r1) in blocks(t) {
        let (d, wv) = (dst.add(r0 * dst_rs), View::rows(w, ld).at(r0, 0));
        gemm_view(
            r1 - r0,
            hd,
            r1,
            d,
            dst_rs,
            false,
            wv,
            x,
            1.0,
            gemm::Parallelism::None,
        );
    }
}

/// `dst[s0..s1] += w[s0..T, s0..s1]ᵀ · x[s0..T]` for each causal block: the transposed
/// product `wᵀ · x` of a lower-triangular `w` `[T, T]` (row-major), so key rows `s0..s1` meet
/// query rows `s0..T` only; `x` `[T, hd]`, `dst` `[T, hd]` with rows `dst_rs` apart.
///
/// # Safety
/// As [`causal_mix`].
unsafe fn causal_mix_t(dst: *mut f32, dst_rs: usize, w: &[f32], x: View, t: usize, hd: usize) {
    causal_mix_t_ld(dst, dst_rs, w, t, x, t, hd)
}

/// [`causal_mix_t`] with `w`'s rows `ld ≥ T` elements apart.
///
/// # Safety
/// As [`causal_mix`]; `w` must hold `(T − 1)·ld + T` elements.
unsafe fn causal_mix_t_ld(
    dst: *mut f32,
    dst_rs: usize,
    w: &[f32],
    ld: usize,
    x: View,
    t: usize,
    hd: usize,
) {
    for (s0, s1) in blocks(t) {
        let (d, wv) = (dst.add(s0 * dst_rs), View::rows(w, ld).at(s0, s0).t());
        let par = gemm::Parallelism::None;
        gemm_view(
            s1 - s0,
            hd,
            t - s0,
            d,
            dst_rs,
            true,
            wv,
            x.at(s0, 0),
            1.0,
            par,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Rotary embeddings
// ---------------------------------------------------------------------------------------

/// RoPE tables for positions `0..T`: `cos`, `sin` `[T, hd/2]` (rotate-half convention, HF's
/// `rotate_half`; pairs `(i, i + hd/2)` rotate by `pos · θ^(−2i/hd)`).
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTables {
    /// Tables for positions `0..tokens`, head dimension `head_dim` (even), base `theta`.
    pub fn new(tokens: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(tokens * half);
        let mut sin = Vec::with_capacity(tokens * half);
        let inv_freqs: Vec<f64> = super::config::rope_inv_freq(head_dim, theta).collect();
        for p in 0..tokens {
            for &inv_freq in &inv_freqs {
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// Rotates (or with `inverse`, rotates back) every head of `x` `[B·T, heads, hd]` in
    /// place; row `r` sits at position `first + r % tokens` (the tables must cover
    /// `first + tokens` positions). The inverse is also the backward of the rotation (the
    /// rotation is orthogonal).
    fn apply(&self, x: &mut [f32], first: usize, tokens: usize, heads: usize, inverse: bool) {
        let half = self.half;
        let hd = 2 * half;
        let sign = if inverse { -1.0f32 } else { 1.0 };
        x.par_chunks_mut(heads * hd)
            .enumerate()
            .for_each(|(r, row)| {
                let t = first + r % tokens;
                let cos = &self.cos[t * half..(t + 1) * half];
                let sin = &self.sin[t * half..(t + 1) * half];
                for head in row.chunks_exact_mut(hd) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        let s = sign * sin[i];
                        a[i] = x0 * cos[i] - x1 * s;
                        b[i] = x1 * cos[i] + x0 * s;
                    }
                }
            });
    }
}

// ---------------------------------------------------------------------------------------
// Causal attention
// ---------------------------------------------------------------------------------------

/// Shapes of one attention call: batch rows, tokens, query heads, kv heads, head dim.
#[derive(Debug, Clone, Copy)]
struct AttnDims {
    b: usize,
    t: usize,
    h: usize,
    kv: usize,
    hd: usize,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.h / self.kv
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
}

/// Row blocks for causal skipping: rows `[r0, r1)` only see keys `0..r1`.
const CAUSAL_BLOCK: usize = 64;

fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(t)))
}

/// What the forward pass keeps for backward.
#[derive(Debug, Clone)]
struct AttnSaved {
    /// Rotated queries `[B, T, H, hd]`.
    qr: Arc<Vec<f32>>,
    /// Rotated keys `[B, T, KV, hd]`.
    kr: Arc<Vec<f32>>,
    /// Values `[B, T, KV, hd]` (contiguous).
    v: FlexTensor,
    /// Attention probabilities `[B, H, T, T]` (zero above the diagonal).
    probs: Arc<Vec<f32>>,
    rope: Arc<RopeTables>,
    dims: AttnDims,
}

/// Runs `task(i, probs_i)` for the `tasks` (batch row, kv head) pairs of an attention forward
/// in parallel; `probs_i` is the task's own `chunk` floats. With `keep` they are the task's
/// part of the returned buffer (the probabilities the backward reads, `tasks · chunk`);
/// without, a per-thread scratch buffer, and nothing is returned.
fn run_attention_tasks(
    tasks: usize,
    chunk: usize,
    keep: bool,
    task: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    if keep {
        let mut probs = vec![0f32; tasks * chunk];
        probs
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, p)| task(i, p));
        probs
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(|| vec![0f32; chunk], |p, i| task(i, p));
        Vec::new()
    }
}

/// Forward kernel. `q` `[B, T, H, hd]`, `k`/`v` `[B, T, KV, hd]`, all contiguous. Returns the
/// output `[B, T, H·hd]`, and the saved state when `keep` is set.
fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &FlexTensor,
    rope: &Arc<RopeTables>,
    d: AttnDims,
    keep: bool,
) -> (Vec<f32>, Option<AttnSaved>) {
    let AttnDims { b, t, h, kv, hd } = d;
    let group = d.group();
    let mut qr = q.to_vec();
    let mut kr = k.to_vec();
    rope.apply(&mut qr, 0, t, h, false);
    rope.apply(&mut kr, 0, t, kv, false);
    let vs = slice(v);
    let mut out = vec![0f32; b * t * h * hd];
    let chunk = group * t * t;
    // Probabilities of the heads of one (row, kv head) pair are contiguous in [B, H, T, T].
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (qs, ks) = (&qr[..], &kr[..]);
    let task = |task: usize, p_all: &mut [f32]| {
        let (bi, kvh) = (task / kv, task % kv);
        let k_base = (bi * t * kv + kvh) * hd;
        let (kk, vv) = (
            View::rows(&ks[k_base..], kv * hd),
            View::rows(&vs[k_base..], kv * hd),
        );
        for (g, p) in p_all.chunks_exact_mut(t * t).enumerate() {
            let q_base = (bi * t * h + kvh * group + g) * hd;
            let qv = View::rows(&qs[q_base..], h * hd);
            // SAFETY: q/k views address T rows of hd within qr/kr; P is this task's own.
            unsafe { causal_scores(p, qv, kk, t, hd, d.scale()) };
            for i in 0..t {
                let row = &mut p[i * t..(i + 1) * t];
                let (live, masked) = row.split_at_mut(i + 1);
                let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in live.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                live.iter_mut().for_each(|x| *x *= inv);
                masked.fill(0.0);
            }
            // SAFETY: this task alone writes the output rows of the heads of kv head `kvh`
            // in batch row `bi`.
            unsafe { causal_mix({ out_ptr }.0.add(q_base), h * hd, p, vv, t, hd) };
        }
    };
    let probs = run_attention_tasks(b * kv, chunk, keep, task);
    let saved = keep.then(|| AttnSaved {
        qr: Arc::new(qr),
        kr: Arc::new(kr),
        v: v.clone(),
        probs: Arc::new(probs),
        rope: rope.clone(),
        dims: d,
    });
    (out, saved)
}

/// Backward kernel: from `dout` `[B, T, H·hd]` to `(dq, dk, dv)` in the input layouts.
fn attention_backward(dout: &[f32], s: &AttnSaved) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttnDims { b, t, h, kv, hd } = s.dims;
    let group = s.dims.group();
    let scale = s.dims.scale();
    let mut dq = vec![0f32; b * t * h * hd];
    let mut dk = vec![0f32; b * t * kv * hd];
    let mut dv = vec![0f32; b * t * kv * hd];
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    let (qs, ks, vs, probs) = (&s.qr[..], &s.kr[..], slice(&s.v), &s.probs[..]);
    (0..b * kv).into_par_iter().for_each_init(
        || vec![0f32; t * t],
        |ds, task| {
            let (bi, kvh) = (task / kv, task % kv);
            let k_base = (bi * t * kv + kvh) * hd;
            let (kk, vv) = (
                View::rows(&ks[k_base..], kv * hd),
                View::rows(&vs[k_base..], kv * hd),
            );
            for g in 0..group {
                let head = kvh * group + g;
                let q_base = (bi * t * h + head) * hd;
                let p = &probs[(bi * h + head) * t * t..(bi * h + head + 1) * t * t];
                let (qv, dov) = (
                    View::rows(&qs[q_base..], h * hd),
                    View::rows(&dout[q_base..], h * hd),
                );
                // dP = dO · vᵀ, into the task's own scratch.
                // SAFETY: the views address T rows of hd within dout/v.
                unsafe { causal_scores(ds, dov, vv, t, hd, 1.0) };
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, zero above the diagonal.
                for i in 0..t {
                    let pr = &p[i * t..i * t + i + 1];
                    let row = &mut ds[i * t..(i + 1) * t];
                    let dot: f32 = pr.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                    for (x, &pp) in row.iter_mut().zip(pr) {
                        *x = pp * (*x - dot) * scale;
                    }
                    row[i + 1..].fill(0.0);
                }
                // dq = dS · k, dk += dSᵀ · q, dv += Pᵀ · dO.
                // SAFETY: only this task writes the dq rows of the heads of kv head `kvh` in
                // batch row `bi`, and the dk/dv rows of (bi, kvh).
                unsafe {
                    causal_mix({ dq_ptr }.0.add(q_base), h * hd, ds, kk, t, hd);
                    causal_mix_t({ dk_ptr }.0.add(k_base), kv * hd, ds, qv, t, hd);
                    causal_mix_t({ dv_ptr }.0.add(k_base), kv * hd, p, dov, t, hd);
                }
            }
        },
    );
    s.rope.apply(&mut dq, 0, t, h, true);
    s.rope.apply(&mut dk, 0, t, kv, true);
    (dq, dk, dv)
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttnSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq, nk, nv] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node).to_contiguous();
        let s = ops.state;
        let AttnDims { b, t, h, kv, hd } = s.dims;
        let (dq, dk, dv) = attention_backward(slice(&dout), &s);
        if let Some(n) = nq {
            grads.register::<Flex>(n.id, flex(dq, vec![b, t, h, hd]));
        }
        if let Some(n) = nk {
            grads.register::<Flex>(n.id, flex(dk, vec![b, t, kv, hd]));
        }
        if let Some(n) = nv {
            grads.register::<Flex>(n.id, flex(dv, vec![b, t, kv, hd]));
        }
    }
}

/// Causal self-attention over whole sequences with RoPE and grouped kv heads, fused.
///
/// `q`: `[B, T, heads, hd]`, `k`, `v`: `[B, T, kv_heads, hd]` (the projections reshaped, not
/// rotated; position of token `t` is `t`); `rope` covers at least `T` positions. Returns
/// `[B, T, heads·hd]`, or `None` on a backend without the fused kernels (the caller then
/// runs the composed ops). Query head `h` reads kv head `h / (heads / kv_heads)`, as
/// transformers' `repeat_kv`.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &Arc<RopeTables>,
) -> Option<Tensor<B, 3>> {
    let kind = kind::<B>()?;
    let [b, t, h, hd] = q.dims();
    let kv = k.dims()[2];
    let d = AttnDims { b, t, h, kv, hd };
    let shape = vec![b, t, h * hd];
    match kind {
        Kind::Flex => {
            let (q, k, v) = (
                primitive::<B, 4, FlexTensor>(q).to_contiguous(),
                primitive::<B, 4, FlexTensor>(k).to_contiguous(),
                primitive::<B, 4, FlexTensor>(v).to_contiguous(),
            );
            let (out, _) = attention_forward(slice(&q), slice(&k), &v, rope, d, false);
            Some(from_primitive::<B, 3, _>(flex(out, shape)))
        }
        Kind::Autodiff => {
            let (q, k, v): (AdTensor, AdTensor, AdTensor) = (
                primitive::<B, 4, _>(q),
                primitive::<B, 4, _>(k),
                primitive::<B, 4, _>(v),
            );
            let (qp, kp, vp) = (
                q.primitive.to_contiguous(),
                k.primitive.to_contiguous(),
                v.primitive.to_contiguous(),
            );
            let out = match AttentionBackward
                .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, saved) =
                        attention_forward(slice(&qp), slice(&kp), &vp, rope, d, true);
                    prep.finish(saved.expect("kept"), flex(out, shape))
                }
                OpsKind::UnTracked(prep) => {
                    let (out, _) = attention_forward(slice(&qp), slice(&kp), &vp, rope, d, false);
                    prep.finish(flex(out, shape))
                }
            };
            Some(from_primitive::<B, 3, _>(out))
        }
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------

/// Rows per parallel task of the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

fn rms_norm_forward(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = w.len();
    let rows = x.len() / n;
    let mut y = vec![0f32; x.len()];
    let mut inv = vec![0f32; rows];
    y.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(inv.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .for_each(|((y, inv), x)| {
            for ((y, inv), x) in y.chunks_exact_mut(n).zip(inv).zip(x.chunks_exact(n)) {
                let ms = x.iter().map(|a| a * a).sum::<f32>() / n as f32;
                let r = 1.0 / (ms + eps).sqrt();
                *inv = r;
                for ((y, &a), &g) in y.iter_mut().zip(x).zip(w) {
                    *y = a * r * g;
                }
            }
        });
    (y, inv)
}

#[derive(Debug, Clone)]
struct RmsSaved {
    x: FlexTensor,
    w: FlexTensor,
    inv: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = RmsSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (dy, x, w, inv) = (
            slice(&dy),
            slice(&ops.state.x),
            slice(&ops.state.w),
            &ops.state.inv,
        );
        let n = w.len();
        let chunk = n * ROWS_PER_TASK;
        let mut dx = vec![0f32; x.len()];
        // Per-task partial sums of dw, added up after.
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(dy.par_chunks(chunk))
            .zip(x.par_chunks(chunk))
            .zip(inv.par_chunks(ROWS_PER_TASK))
            .map(|(((dx, dy), x), inv)| {
                let mut dw = vec![0f32; n];
                for (((dx, dy), x), &r) in dx
                    .chunks_exact_mut(n)
                    .zip(dy.chunks_exact(n))
                    .zip(x.chunks_exact(n))
                    .zip(inv)
                {
                    let mut dot = 0.0f32;
                    for j in 0..n {
                        dot += dy[j] * w[j] * x[j];
                        dw[j] += dy[j] * x[j] * r;
                    }
                    let c = r * r * r * dot / n as f32;
                    for j in 0..n {
                        dx[j] = r * dy[j] * w[j] - c * x[j];
                    }
                }
                dw
            })
            .collect();
        if let Some(node) = nx {
            let shape = dims(&ops.state.x);
            grads.register::<Flex>(node.id, flex(dx, shape));
        }
        if let Some(node) = nw {
            let mut dw = vec![0f32; n];
            for p in &partial {
                dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            grads.register::<Flex>(node.id, flex(dw, vec![n]));
        }
    }
}

/// RMSNorm over the last dimension, fused: `x · w / √(mean(x²) + eps)` (Zhang & Sennrich
/// 2019). `x`: `[.., hidden]`, `w`: `[hidden]`. `None` on a backend without the kernels.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    let kind = kind::<B>()?;
    let eps = eps as f32;
    match kind {
        Kind::Flex => {
            let x = primitive::<B, D, FlexTensor>(x).to_contiguous();
            let w = primitive::<B, 1, FlexTensor>(w).to_contiguous();
            let (y, _) = rms_norm_forward(slice(&x), slice(&w), eps);
            Some(from_primitive::<B, D, _>(flex(y, dims(&x))))
        }
        Kind::Autodiff => {
            let (x, w): (AdTensor, AdTensor) = (primitive::<B, D, _>(x), primitive::<B, 1, _>(w));
            let (xp, wp) = (x.primitive.to_contiguous(), w.primitive.to_contiguous());
            let (y, inv) = rms_norm_forward(slice(&xp), slice(&wp), eps);
            let y = flex(y, dims(&xp));
            let out = match RmsNormBackward
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(
                    RmsSaved {
                        x: xp,
                        w: wp,
                        inv: Arc::new(inv),
                    },
                    y,
                ),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Some(from_primitive::<B, D, _>(out))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Linear layers in bf16
// ---------------------------------------------------------------------------------------

/// The precision of a linear layer's matrix products under training and scoring
/// ([`linear`]). Weights, activations, gradients and AdamW's moments stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation (burn-flex's GEMM). The default.
    #[default]
    F32,
    /// Operands rounded to bf16, products summed in f32, on AMX tiles
    /// ([`amx_available`]); where the CPU has no AMX-BF16 the products stay f32.
    Bf16,
}

impl Precision {
    /// The name configs and `--precision` use: `f32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What runs in this process: `Bf16` only where [`amx_available`], else `F32`.
    pub fn effective(self) -> Self {
        match self {
            Precision::Bf16 if amx_available() => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// Reads [`Precision::as_str`]'s names (`--precision`).
    fn from_str(s: &str) -> Result<Self, String> {
        [Precision::F32, Precision::Bf16]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("expected f32 or bf16, got {s:?}"))
    }
}

/// Whether this process can run bf16 products on AMX tiles: the CPU reports AMX-TILE and
/// AMX-BF16 and Linux granted the tile state; `SLEUTH_AMX=0` says no for the whole process.
pub fn amx_available() -> bool {
    amx::available()
}

/// Runs `f` with bf16 products switched off on this thread: every [`linear`] inside takes the
/// f32 path whatever its precision, as on a CPU without AMX (the fallback's tests).
pub fn without_amx<R>(f: impl FnOnce() -> R) -> R {
    let before = NO_AMX.with(|c| c.replace(true));
    let out = f();
    NO_AMX.with(|c| c.set(before));
    out
}

/// Whether [`linear`] runs a `precision` product in bf16 for backend `B` on this thread: the
/// precision asks for it, the fused ops are on for `B`, AMX is available and not switched off
/// ([`without_amx`]).
pub fn runs_bf16<B: Backend>(precision: Precision) -> bool {
    precision == Precision::Bf16
        && kind::<B>().is_some()
        && !NO_AMX.with(Cell::get)
        && amx_available()
}

#[derive(Debug, Clone)]
struct LinearSaved {
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (dy, x, w) = (slice(&dy), slice(&ops.state.x), slice(&ops.state.w));
        let [d_in, d_out] = [dims(&ops.state.w)[0], dims(&ops.state.w)[1]];
        let rows = dy.len() / d_out.max(1);
        if let Some(node) = nx {
            // dX [rows, in] = dY [rows, out] · Wᵀ [out, in].
            let mut dx = vec![0f32; rows * d_in];
            // SAFETY: AMX checked when the forward chose this op; fresh output; views in
            // bounds of the saved buffers.
            unsafe {
                product_weight(
                    true,
                    rows,
                    d_in,
                    d_out,
                    dx.as_mut_ptr(),
                    d_in,
                    false,
                    View::rows(dy, d_out),
                    w,
                    |w| View::rows(w, d_out).t(),
                    1.0,
                )
            };
            grads.register::<Flex>(node.id, flex(dx, dims(&ops.state.x)));
        }
        if let Some(node) = nw {
            // dW [in, out] = Xᵀ [in, rows] · dY [rows, out].
            let mut dw = vec![0f32; d_in * d_out];
            // SAFETY: as above.
            unsafe {
                amx::gemm(
                    d_in,
                    d_out,
                    rows,
                    dw.as_mut_ptr(),
                    d_out,
                    false,
                    View::rows(x, d_in).t(),
                    View::rows(dy, d_out),
                    1.0,
                )
            };
            grads.register::<Flex>(node.id, flex(dw, vec![d_in, d_out]));
        }
    }
}

/// `x [N, in] · w [in, out]` with both operands rounded to bf16 and the products summed in
/// f32 on AMX tiles (`fused/amx.rs`); the backward runs `dX = dY·Wᵀ` and `dW = Xᵀ·dY` the same way
/// (mixed-precision training as Micikevicius et al. 2018 describe it, with bf16 in place of
/// fp16 so no loss scaling is needed: Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep
/// Learning Training"). `None` unless [`runs_bf16`] holds for `precision`: the caller then
/// runs the f32 matmul.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    precision: Precision,
) -> Option<Tensor<B, 2>> {
    if !runs_bf16::<B>(precision) {
        return None;
    }
    let ([n, d_in], [w_in, d_out]) = (x.dims(), w.dims());
    if d_in != w_in {
        return None; // the composed matmul reports the mismatch
    }
    let forward = |x: &FlexTensor, w: &FlexTensor| {
        let mut y = vec![0f32; n * d_out];
        // SAFETY: AMX available (checked above); fresh output; `x` is `[n, in]` and `w`
        // `[in, out]`, both contiguous.
        unsafe {
            product_weight(
                true,
                n,
                d_out,
                d_in,
                y.as_mut_ptr(),
                d_out,
                false,
                View::rows(slice(x), d_in),
                slice(w),
                |w| View::rows(w, d_out),
                1.0,
            )
        };
        flex(y, vec![n, d_out])
    };
    match kind::<B>()? {
        Kind::Flex => {
            let x = primitive::<B, 2, FlexTensor>(x).to_contiguous();
            let w = primitive::<B, 2, FlexTensor>(w).to_contiguous();
            Some(from_primitive::<B, 2, _>(forward(&x, &w)))
        }
        Kind::Autodiff => {
            let (x, w): (AdTensor, AdTensor) = (primitive::<B, 2, _>(x), primitive::<B, 2, _>(w));
            let (xp, wp) = (x.primitive.to_contiguous(), w.primitive.to_contiguous());
            let y = forward(&xp, &wp);
            let out = match LinearBackward
                .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(LinearSaved { x: xp, w: wp }, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Some(from_primitive::<B, 2, _>(out))
        }
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------

const ELEMS_PER_TASK: usize = 1 << 14;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Debug, Clone)]
struct SwigluSaved {
    g: FlexTensor,
    u: FlexTensor,
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = SwigluSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [ng, nu] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (dy, g, u) = (slice(&dy), slice(&ops.state.g), slice(&ops.state.u));
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(ELEMS_PER_TASK)
            .zip(du.par_chunks_mut(ELEMS_PER_TASK))
            .zip(dy.par_chunks(ELEMS_PER_TASK))
            .zip(
                g.par_chunks(ELEMS_PER_TASK)
                    .zip(u.par_chunks(ELEMS_PER_TASK)),
            )
            .for_each(|(((dg, du), dy), (g, u))| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    let silu = g[i] * s;
                    du[i] = dy[i] * silu;
                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        let shape = dims(&ops.state.g);
        if let Some(n) = ng {
            grads.register::<Flex>(n.id, flex(dg, shape.clone()));
        }
        if let Some(n) = nu {
            grads.register::<Flex>(n.id, flex(du, shape));
        }
    }
}

fn swiglu_forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.len()];
    y.par_chunks_mut(ELEMS_PER_TASK)
        .zip(
            g.par_chunks(ELEMS_PER_TASK)
                .zip(u.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(y, (g, u))| {
            for i in 0..y.len() {
                y[i] = g[i] * sigmoid(g[i]) * u[i];
            }
        });
    y
}

/// SwiGLU's gate, fused: `silu(g) ⊙ u` (Shazeer 2020), `g`, `u` of the same shape. `None` on
/// a backend without the kernels.
pub fn swiglu<B: Backend, const D: usize>(
    g: Tensor<B, D>,
    u: Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let kind = kind::<B>()?;
    match kind {
        Kind::Flex => {
            let g = primitive::<B, D, FlexTensor>(g).to_contiguous();
            let u = primitive::<B, D, FlexTensor>(u).to_contiguous();
            let y = swiglu_forward(slice(&g), slice(&u));
            Some(from_primitive::<B, D, _>(flex(y, dims(&g))))
        }
        Kind::Autodiff => {
            let (g, u): (AdTensor, AdTensor) = (primitive::<B, D, _>(g), primitive::<B, D, _>(u));
            let (gp, up) = (g.primitive.to_contiguous(), u.primitive.to_contiguous());
            let y = flex(swiglu_forward(slice(&gp), slice(&up)), dims(&gp));
            let out = match SwigluBackward
                .prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(SwigluSaved { g: gp, u: up }, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Some(from_primitive::<B, D, _>(out))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Output head: token log-probabilities
// ---------------------------------------------------------------------------------------

/// Rows of `[rows, vocab]` logits per parallel task of the head's row-wise pass.
const HEAD_ROWS: usize = 16;

/// The output projection as the right operand `[hidden, vocab]` of `h · W`.
#[derive(Debug, Clone)]
struct HeadWeight {
    w: FlexTensor,
    /// `true`: `w` is the embedding `[vocab, hidden]` (tied weights), read transposed.
    tied: bool,
    hidden: usize,
    vocab: usize,
}

impl HeadWeight {
    /// `W` as the right operand `[hidden, vocab]` of `h · W`, over `w`: the weight's storage
    /// or a buffer laid out as it is (its bf16 split parts).
    fn view_of(&self, w: &[f32]) -> View {
        match self.tied {
            true => View::rows(w, self.hidden).t(),
            false => View::rows(w, self.vocab),
        }
    }
}

#[derive(Debug, Clone)]
struct HeadSaved {
    h: FlexTensor,
    w: HeadWeight,
    targets: Arc<Vec<usize>>,
    /// Logits divided by the temperature, `[N, vocab]`.
    logits: Arc<Vec<f32>>,
    /// Log-partition of each row of `logits`, `[N]`.
    lse: Arc<Vec<f32>>,
    temperature: f32,
    /// The products run in bf16 ([`runs_bf16`] at the forward).
    bf16: bool,
}

/// Forward kernel: `(logits / T, lse, logp, entropy)` for rows `h` `[N, hidden]`.
fn head_forward(
    h: &[f32],
    w: &HeadWeight,
    targets: &[usize],
    temperature: f32,
    bf16: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, v) = (w.hidden, w.vocab);
    let n = targets.len();
    let mut logits = vec![0f32; n * v];
    let mut lse = vec![0f32; n];
    let mut logp = vec![0f32; n];
    let mut ent = vec![0f32; n];
    // One GEMM over all rows (a per-task GEMM would re-pack the whole weight each time).
    // SAFETY: a fresh `[n, vocab]` output; the views address `n × hidden` and
    // `hidden × vocab` elements of live buffers; `bf16` only where AMX is available.
    unsafe {
        product_weight(
            bf16,
            n,
            v,
            hd,
            logits.as_mut_ptr(),
            v,
            false,
            View::rows(h, hd),
            slice(&w.w),
            |x| w.view_of(x),
            1.0 / temperature,
        )
    };
    logits
        .par_chunks(HEAD_ROWS * v)
        .zip(lse.par_chunks_mut(HEAD_ROWS))
        .zip(logp.par_chunks_mut(HEAD_ROWS))
        .zip(ent.par_chunks_mut(HEAD_ROWS))
        .enumerate()
        .for_each(|(c, (((lg, lse), lp), ent))| {
            let r0 = c * HEAD_ROWS;
            for (i, row) in lg.chunks_exact(v).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut z, mut zx) = (0f32, 0f32);
                for &x in row {
                    let e = (x - max).exp();
                    z += e;
                    zx += e * x;
                }
                let l = max + z.ln();
                lse[i] = l;
                lp[i] = row[targets[r0 + i]] - l;
                // H = −Σ p log p = lse − Σ p x.
                ent[i] = l - zx / z;
            }
        });
    (logits, lse, logp, ent)
}

#[derive(Debug)]
struct HeadBackward;

impl Backward<Flex, 2> for HeadBackward {
    type State = HeadSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nh, nw] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (g, s) = (slice(&g), &ops.state);
        let (hd, v) = (s.w.hidden, s.w.vocab);
        let n = s.targets.len();
        // dlogits = g · (onehot − softmax) / T, in place of a copy of the saved logits.
        let mut dl = vec![0f32; n * v];
        dl.par_chunks_mut(v).enumerate().for_each(|(i, d)| {
            let row = &s.logits[i * v..(i + 1) * v];
            let (l, gi) = (s.lse[i], g[i] / s.temperature);
            for (d, &x) in d.iter_mut().zip(row) {
                *d = -gi * (x - l).exp();
            }
            d[s.targets[i]] += gi;
        });
        let (hv, dlv) = (View::rows(slice(&s.h), hd), View::rows(&dl, v));
        if let Some(node) = nh {
            let mut dh = vec![0f32; n * hd];
            // SAFETY: fresh output buffer; views in bounds; `bf16` as at the forward.
            unsafe {
                product_weight(
                    s.bf16,
                    n,
                    hd,
                    v,
                    dh.as_mut_ptr(),
                    hd,
                    false,
                    dlv,
                    slice(&s.w.w),
                    |x| s.w.view_of(x).t(),
                    1.0,
                )
            };
            grads.register::<Flex>(node.id, flex(dh, vec![n, hd]));
        }
        if let Some(node) = nw {
            // dW in the weight's own layout: tied `[vocab, hidden]` = dlᵀ · h, else
            // `[hidden, vocab]` = hᵀ · dl.
            let mut dw = vec![0f32; v * hd];
            let (m, cols, lhs, rhs) = match s.w.tied {
                true => (v, hd, dlv.t(), hv),
                false => (hd, v, hv.t(), dlv),
            };
            // SAFETY: fresh output buffer; views in bounds; `bf16` as at the forward.
            unsafe {
                product(
                    s.bf16,
                    m,
                    cols,
                    n,
                    dw.as_mut_ptr(),
                    cols,
                    false,
                    lhs,
                    rhs,
                    1.0,
                )
            };
            grads.register::<Flex>(node.id, flex(dw, dims(&s.w.w)));
        }
    }
}

/// Log-probabilities of `targets` under `softmax(h · W / temperature)`, fused with the
/// output projection: `h` `[N, hidden]`, `w` the embedding `[vocab, hidden]` when `tied`
/// (read transposed, as tied Llama heads are) or the head `[hidden, vocab]`; `targets`
/// `[N]` token ids (< vocab). Returns `(logp [N], entropy [N])`, the entropy in nats and
/// detached (a plain tensor outside the autodiff graph). The `[N, vocab]` logits are one GEMM,
/// normalised row by row in parallel, and kept for backward (one buffer, `4·N·vocab` bytes), instead of the
/// several such tensors the composed log-softmax and its backward allocate. `None` on a
/// backend without the kernels. `precision` bf16 runs the three products (logits, dh, dW) in
/// bf16 where [`runs_bf16`] holds, as the linear layers do.
pub fn head_logprobs<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    tied: bool,
    targets: &[usize],
    temperature: f32,
    precision: Precision,
) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
    let kind = kind::<B>()?;
    let bf16 = runs_bf16::<B>(precision);
    let device = h.device();
    let [n, hidden] = h.dims();
    let [a, c] = w.dims();
    let vocab = if tied { a } else { c };
    if (if tied { c } else { a }) != hidden
        || targets.len() != n
        || targets.iter().any(|&t| t >= vocab)
    {
        return None; // the composed ops report the mismatch
    }
    let entropy = |e: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(e, [n]), &device);
    match kind {
        Kind::Flex => {
            let hp = primitive::<B, 2, FlexTensor>(h).to_contiguous();
            let w = HeadWeight {
                w: primitive::<B, 2, FlexTensor>(w).to_contiguous(),
                tied,
                hidden,
                vocab,
            };
            let (_, _, lp, e) = head_forward(slice(&hp), &w, targets, temperature, bf16);
            Some((from_primitive::<B, 1, _>(flex(lp, vec![n])), entropy(e)))
        }
        Kind::Autodiff => {
            let (h, w): (AdTensor, AdTensor) = (primitive::<B, 2, _>(h), primitive::<B, 2, _>(w));
            let hp = h.primitive.to_contiguous();
            let wt = HeadWeight {
                w: w.primitive.to_contiguous(),
                tied,
                hidden,
                vocab,
            };
            let (logits, lse, lp, e) = head_forward(slice(&hp), &wt, targets, temperature, bf16);
            let lp = flex(lp, vec![n]);
            let out = match HeadBackward
                .prepare::<NoCheckpointing>([h.node.clone(), w.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(
                    HeadSaved {
                        h: hp,
                        w: wt,
                        targets: Arc::new(targets.to_vec()),
                        logits: Arc::new(logits),
                        lse: Arc::new(lse),
                        temperature,
                        bf16,
                    },
                    lp,
                ),
                OpsKind::UnTracked(prep) => prep.finish(lp),
            };
            Some((from_primitive::<B, 1, _>(out), entropy(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::AutodiffModule;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};

    use super::*;
    use crate::backend::{Inference, Train};
    use crate::{Llama, LlamaConfig};

    type Grads = <Train as AutodiffBackend>::Gradients;

    use crate::Architecture;

    use crate::testing::{flat, rel_err};

    /// Output and the gradients of a weight of each kind, for `loss = Σ forward(x) ⊙ r`.
    fn run(
        model: &Llama<Train>,
        tokens: &Tensor<Train, 2, Int>,
        r: &Tensor<Train, 3>,
    ) -> Vec<Tensor<Inference, 1>> {
        run_with(model, r, |m| m.forward(tokens.clone()))
    }

    /// [`run`] for any forward pass of `model`.
    fn run_with(
        model: &Llama<Train>,
        r: &Tensor<Train, 3>,
        forward: impl Fn(&Llama<Train>) -> Tensor<Train, 3>,
    ) -> Vec<Tensor<Inference, 1>> {
        let out = forward(model);
        let grads: Grads = (out.clone() * r.clone()).sum().backward();
        let l0 = &model.layers[0];
        let l1 = &model.layers[1];
        let g =
            |p: &burn::module::Param<Tensor<Train, 2>>| flat(p.val().grad(&grads).expect("grad"));
        let g1 =
            |p: &burn::module::Param<Tensor<Train, 1>>| flat(p.val().grad(&grads).expect("grad"));
        let mut out = vec![
            flat(out),
            g(&model.embed_tokens),
            g(&l0.self_attn.q_proj.weight),
            g(&l0.self_attn.k_proj.weight),
            g(&l0.self_attn.v_proj.weight),
            g(&l1.self_attn.o_proj.weight),
            g(&l0.mlp.gate_proj.weight),
            g(&l1.mlp.up_proj.weight),
            g(&l1.mlp.down_proj.weight),
            g1(&l0.input_layernorm.weight),
            g1(&l1.post_attention_layernorm.weight),
            g1(&model.norm.weight),
        ];
        // Qwen2's q/k/v biases, Qwen3's per-head q/k norm gains, where the model has them.
        for bias in [&l0.self_attn.q_proj.bias, &l1.self_attn.k_proj.bias] {
            out.extend(bias.as_ref().map(g1));
        }
        for norm in [&l0.self_attn.q_norm, &l1.self_attn.k_norm] {
            out.extend(norm.as_ref().map(|n| g1(&n.weight)));
        }
        out
    }

    /// The fused forward pass and every kind of parameter gradient equal the composed burn
    /// ops' (tiny random model, grouped kv heads, 70 tokens so the causal blocks split), for
    /// each architecture: Llama, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms, explicit
    /// `head_dim` wider than `hidden / heads`).
    #[test]
    fn fused_model_matches_composed_ops_forward_and_gradients() {
        for cfg in tiny_configs() {
            fused_matches_composed(&cfg);
        }
    }

    /// The shared-prefix forward ([`Llama::forward_shared`]: the prefix once, its keys and
    /// values broadcast to the rows) gives the unshared forward's continuation outputs and
    /// every kind of parameter gradient, against the composed reference ops, for each
    /// architecture. 3 rows, a 70-token prefix and 75-token continuations, so both causal
    /// block loops split and the prefix gradient sums over rows that differ.
    #[test]
    fn shared_prefix_matches_unshared_forward_and_gradients() {
        let device = Default::default();
        let (b, p, c) = (3, 70, 75);
        let prefix: Vec<i64> = (0..p).map(|i| ((i * 37 + 11) % 97) as i64).collect();
        let mut rows = Vec::new();
        for r in 0..b {
            rows.extend_from_slice(&prefix);
            rows.extend((0..c).map(|i| ((i * 13 + r * 29 + 3) % 97) as i64));
        }
        let full = Tensor::<Train, 2, Int>::from_data(TensorData::new(rows, [b, p + c]), &device);
        let pre = full.clone().slice([0..1, 0..p]);
        let cont = full.clone().slice([0..b, p..p + c]);
        for cfg in tiny_configs() {
            let arch = cfg.architecture().unwrap();
            let model = test_model(&cfg, 5);
            let r = Tensor::<Train, 3>::random(
                [b, c, cfg.hidden_size],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let h = cfg.hidden_size;
            let shared = run_with(&model, &r, |m| m.forward_shared(pre.clone(), cont.clone()));
            let unshared = with_composite(|| {
                run_with(&model, &r, |m| {
                    m.forward(full.clone()).slice([0..b, p..p + c, 0..h])
                })
            });
            assert_eq!(shared.len(), unshared.len());
            for (i, (s, u)) in shared.into_iter().zip(unshared).enumerate() {
                let err = rel_err(s, u);
                assert!(
                    err < 2e-4,
                    "{arch:?} output/gradient {i}: relative error {err}"
                );
            }
            // Inference backend, and the composed fallback of forward_shared itself.
            let inner = model.valid();
            let to_inf = |t: &Tensor<Train, 2, Int>| {
                Tensor::<Inference, 2, Int>::from_data(t.clone().into_data(), &device)
            };
            let reference =
                with_composite(|| flat(inner.forward(to_inf(&full)).slice([0..b, p..p + c, 0..h])));
            let fused = flat(inner.forward_shared(to_inf(&pre), to_inf(&cont)));
            let fallback =
                with_composite(|| flat(inner.forward_shared(to_inf(&pre), to_inf(&cont))));
            let err = rel_err(fused, reference.clone());
            assert!(err < 2e-5, "{arch:?} inference: relative error {err}");
            let err = rel_err(fallback, reference);
            assert!(
                err < 1e-6,
                "{arch:?} composed fallback: relative error {err}"
            );
        }
    }

    /// `precision = bf16` ([`Precision`]): where AMX runs, the forward and every kind of
    /// parameter gradient differ from the f32 model's (the bf16 path is the one that ran) by
    /// no more than bf16 rounding explains (8 significant bits: ≈ 0.4 % per operand; bound
    /// 3 % of each tensor's largest entry, over two layers and the backward); with AMX switched
    /// off ([`without_amx`], as on a CPU without it) they are the f32 model's exact bits. Both
    /// the autodiff and the inference backend; the reference model (`valid()`) keeps the
    /// precision.
    #[test]
    fn bf16_precision_within_rounding_and_falls_back_to_f32_bits() {
        let device = Default::default();
        let (b, t) = (2, 70);
        let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 97) as i64).collect();
        let tokens = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        for cfg in tiny_configs() {
            let arch = cfg.architecture().unwrap();
            let model = test_model(&cfg, 7);
            let r = Tensor::<Train, 3>::random(
                [b, t, cfg.hidden_size],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let exact = run(&model, &tokens, &r);
            let bf16 = model.clone().with_precision(Precision::Bf16);
            assert_eq!(bf16.precision(), Precision::Bf16);
            assert_eq!(bf16.valid().precision(), Precision::Bf16);
            let fallback = without_amx(|| run(&bf16, &tokens, &r));
            for (i, (e, f)) in exact.iter().zip(&fallback).enumerate() {
                assert_eq!(e.to_data(), f.to_data(), "{arch:?} fallback tensor {i}");
            }
            if !amx_available() {
                eprintln!("no AMX-BF16 here: bf16 checked as the f32 fallback only");
                continue;
            }
            let got = run(&bf16, &tokens, &r);
            let errs: Vec<f32> = got
                .into_iter()
                .zip(exact)
                .map(|(g, e)| rel_err(g, e))
                .collect();
            eprintln!("{arch:?} bf16 relative errors (output, gradients): {errs:?}");
            assert!(
                errs.iter().all(|&e| e < 3e-2),
                "{arch:?} relative errors {errs:?}"
            );
            assert!(
                errs.iter().all(|&e| e > 0.0),
                "{arch:?} bf16 did not run: {errs:?}"
            );
            // Inference backend.
            let to_inf =
                Tensor::<Inference, 2, Int>::from_data(tokens.clone().into_data(), &device);
            let e = flat(model.valid().forward(to_inf.clone()));
            let g = flat(bf16.valid().forward(to_inf));
            let err = rel_err(g, e);
            assert!(
                err > 0.0 && err < 3e-2,
                "{arch:?} inference: relative error {err}"
            );
        }
    }

    /// The output head in bf16: log-probabilities, entropy and both gradients within bf16
    /// rounding of the f32 head's (tied and untied weights).
    #[test]
    fn bf16_head_within_rounding() {
        if !amx_available() {
            eprintln!("skipped: no AMX-BF16 here (the fallback is the f32 head, tested above)");
            return;
        }
        let device = Default::default();
        let (n, hidden, vocab) = (37, 64, 300);
        let targets: Vec<usize> = (0..n).map(|i| (i * 53 + 7) % vocab).collect();
        for tied in [true, false] {
            let shape = if tied {
                [vocab, hidden]
            } else {
                [hidden, vocab]
            };
            let h0 =
                Tensor::<Train, 2>::random([n, hidden], Distribution::Normal(0.0, 1.0), &device);
            let w0 = Tensor::<Train, 2>::random(shape, Distribution::Normal(0.0, 0.2), &device);
            let run = |precision| {
                let (h, w) = (h0.clone().require_grad(), w0.clone().require_grad());
                let (lp, ent) = head_logprobs(h.clone(), w.clone(), tied, &targets, 0.9, precision)
                    .expect("fused head on burn-flex");
                let grads = lp.clone().sum().backward();
                [
                    flat(lp),
                    flat(ent),
                    flat(h.grad(&grads).expect("dh")),
                    flat(w.grad(&grads).expect("dw")),
                ]
            };
            let (exact, got) = (run(Precision::F32), run(Precision::Bf16));
            for (i, (g, e)) in got.into_iter().zip(exact).enumerate() {
                let err = rel_err(g, e);
                eprintln!("head tied={tied} tensor {i}: relative error {err:.1e}");
                assert!(
                    err > 0.0 && err < 3e-2,
                    "tied={tied} tensor {i}: relative error {err}"
                );
            }
        }
    }

    /// The three architectures' tiny configs: Llama, Qwen2 (q/k/v biases), Qwen3 (per-head
    /// q/k norms, explicit `head_dim` wider than `hidden / heads`).
    fn tiny_configs() -> Vec<LlamaConfig> {
        [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Qwen3,
        ]
        .into_iter()
        .map(|arch| {
            let mut cfg = LlamaConfig {
                rms_norm_eps: 1e-5,
                ..LlamaConfig::tiny(97)
            }
            .with_architecture(arch);
            if arch == Architecture::Qwen3 {
                cfg.head_dim = Some(32);
            }
            cfg
        })
        .collect()
    }

    /// A tiny random model with norm gains away from 1, so a gain's gradient is not the same
    /// for every channel.
    fn test_model(cfg: &LlamaConfig, seed: u64) -> Llama<Train> {
        let device = Default::default();
        Train::seed(&device, seed);
        let mut model = Llama::<Train>::random(cfg, &device);
        // Norm gains away from 1, so a gain's gradient is not the same for every channel.
        let gain = |n: usize| {
            let pattern: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.2).collect();
            burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(pattern, [n]),
                &device,
            ))
        };
        for layer in &mut model.layers {
            layer.input_layernorm.weight = gain(cfg.hidden_size);
            layer.post_attention_layernorm.weight = gain(cfg.hidden_size);
            for n in [&mut layer.self_attn.q_norm, &mut layer.self_attn.k_norm]
                .into_iter()
                .flatten()
            {
                n.weight = gain(cfg.head_dim());
            }
        }
        model.norm.weight = gain(cfg.hidden_size);
        model
    }

    fn fused_matches_composed(cfg: &LlamaConfig) {
        let device = Default::default();
        let arch = cfg.architecture().unwrap();
        let model = test_model(cfg, 7);
        let (b, t) = (2, 70);
        let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 97) as i64).collect();
        let tokens = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let r = Tensor::<Train, 3>::random(
            [b, t, cfg.hidden_size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        assert!(
            enabled::<Train>(),
            "the fused path is on by default on burn-flex"
        );
        let fused = run(&model, &tokens, &r);
        let composed = with_composite(|| {
            assert!(!enabled::<Train>());
            run(&model, &tokens, &r)
        });
        let names = [
            "output",
            "embed",
            "q",
            "k",
            "v",
            "o",
            "gate",
            "up",
            "down",
            "norm0",
            "norm1",
            "final norm",
            "extra 0",
            "extra 1",
        ];
        let extra = fused.len() - 12;
        assert_eq!(
            extra,
            if arch == Architecture::Llama { 0 } else { 2 },
            "{arch:?}"
        );
        assert_eq!(fused.len(), composed.len());
        for ((name, f), c) in names.iter().zip(fused).zip(composed) {
            let err = rel_err(f, c);
            assert!(err < 2e-4, "{arch:?} {name}: relative error {err}");
        }
        // Inference backend: the same forward without autodiff.
        let inner = model.valid();
        let tokens = Tensor::<Inference, 2, Int>::from_data(tokens.into_data(), &device);
        let f = flat(inner.forward(tokens.clone()));
        let c = with_composite(|| flat(inner.forward(tokens)));
        let err = rel_err(f, c);
        assert!(
            err < 2e-5,
            "{arch:?} inference forward: relative error {err}"
        );
    }
}
