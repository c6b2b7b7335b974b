//! Attention of `B` continuations over one shared prefix: the training forward of a GRPO
//! group without its prompt repeated `G` times.
//!
//! # Why
//! The `G` samples of a question share their prompt (system prompt, demonstration,
//! question: 200–1,000 tokens), and the update used to run it `G` times per group, forward
//! and backward: at 950-token episodes with 210-token prompts a fifth of the update's work,
//! at stage 1's demonstration-length prompts more than half. Here the prefix `[1, P]` runs
//! once per layer ([`crate::Llama::forward_shared`]) and each continuation row
//! `[C]` attends to the prefix's keys and values, broadcast, and then causally to its own.
//! Because the prefix is a common input, autodiff sums its gradient over the `B` rows, which
//! is exactly the unshared path's gradient (the `B` copies of the prompt each got their
//! share): `tests::shared_prefix_matches_unshared` checks outputs and every parameter's
//! gradient against the plain forward.
//!
//! # Layout
//! Per (row, kv head) task and query head, one score buffer `[C, L]`, `L = P + C`: columns
//! `0..P` are the prefix keys (all visible), columns `P..L` the continuation's (causal,
//! 64-row blocks as in [`super::causal_attention`]). Continuation positions are `P..L`, so
//! q and the continuation keys rotate at offset `P`, the prefix keys at 0.

use super::*;

/// Shapes of one prefix-attention call: continuation rows, prefix and continuation tokens,
/// query heads, kv heads, head dim.
#[derive(Debug, Clone, Copy)]
struct PrefixDims {
    b: usize,
    p: usize,
    c: usize,
    h: usize,
    kv: usize,
    hd: usize,
}

impl PrefixDims {
    fn group(&self) -> usize {
        self.h / self.kv
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }
    /// Score-row length: prefix plus continuation keys.
    fn l(&self) -> usize {
        self.p + self.c
    }
}

/// What the forward pass keeps for backward.
#[derive(Debug, Clone)]
struct PrefixSaved {
    /// Rotated queries `[B, C, H, hd]`.
    qr: Arc<Vec<f32>>,
    /// Rotated continuation keys `[B, C, KV, hd]`.
    kr: Arc<Vec<f32>>,
    /// Continuation values `[B, C, KV, hd]` (contiguous).
    v: FlexTensor,
    /// Rotated prefix keys `[1, P, KV, hd]`.
    kpr: Arc<Vec<f32>>,
    /// Prefix values `[1, P, KV, hd]` (contiguous).
    vp: FlexTensor,
    /// Probabilities `[B, H, C, P + C]` (zero above each row's causal limit).
    probs: Arc<Vec<f32>>,
    rope: Arc<RopeTables>,
    dims: PrefixDims,
}

/// Row-wise softmax of `p` `[C, L]` over each row's first `P + i + 1` entries; the rest
/// become 0.
fn masked_softmax(p: &mut [f32], d: PrefixDims) {
    let l = d.l();
    for (i, row) in p.chunks_exact_mut(l).enumerate() {
        let (live, masked) = row.split_at_mut(d.p + i + 1);
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
}

/// Forward kernel. `q` `[B, C, H, hd]`, `k`/`v` `[B, C, KV, hd]`, `kp`/`vp` `[1, P, KV, hd]`,
/// all contiguous. Returns the output `[B, C, H·hd]`, and the saved state when `keep` is set.
#[allow(clippy::too_many_arguments)]
fn prefix_forward(
    q: &[f32],
    k: &[f32],
    v: &FlexTensor,
    kp: &[f32],
    vp: &FlexTensor,
    rope: &Arc<RopeTables>,
    d: PrefixDims,
    keep: bool,
) -> (Vec<f32>, Option<PrefixSaved>) {
    let PrefixDims {
        b,
        p: np,
        c,
        h,
        kv,
        hd,
    } = d;
    let (group, l) = (d.group(), d.l());
    let mut qr = q.to_vec();
    let mut kr = k.to_vec();
    let mut kpr = kp.to_vec();
    rope.apply(&mut qr, np, c, h, false);
    rope.apply(&mut kr, np, c, kv, false);
    rope.apply(&mut kpr, 0, np, kv, false);
    let (vs, vps) = (slice(v), slice(vp));
    let mut out = vec![0f32; b * c * h * hd];
    let chunk = group * c * l;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (qs, ks, kps) = (&qr[..], &kr[..], &kpr[..]);
    let task = |task: usize, p_all: &mut [f32]| {
        let (bi, kvh) = (task / kv, task % kv);
        let k_base = (bi * c * kv + kvh) * hd;
        let (kk, vv) = (
            View::rows(&ks[k_base..], kv * hd),
            View::rows(&vs[k_base..], kv * hd),
        );
        let (kpv, vpv) = (
            View::rows(&kps[kvh * hd..], kv * hd),
            View::rows(&vps[kvh * hd..], kv * hd),
        );
        for (g, p) in p_all.chunks_exact_mut(c * l).enumerate() {
            let q_base = (bi * c * h + kvh * group + g) * hd;
            let qv = View::rows(&qs[q_base..], h * hd);
            // SAFETY: the views address C (or P) rows of hd within qr/kr/kpr/v/vp; `p` is this
            // task's own [C, L] buffer, and only this task writes the output rows of the
            // heads of kv head `kvh` in batch row `bi`.
            unsafe {
                let par = gemm::Parallelism::None;
                gemm_view(
                    c,
                    np,
                    hd,
                    p.as_mut_ptr(),
                    l,
                    false,
                    qv,
                    kpv.t(),
                    d.scale(),
                    par,
                );
                causal_scores_ld(&mut p[np..], l, qv, kk, c, hd, d.scale());
                masked_softmax(p, d);
                let o = { out_ptr }.0.add(q_base);
                causal_mix_ld(o, h * hd, &p[np..], l, vv, c, hd);
                gemm_view(c, hd, np, o, h * hd, true, View::rows(p, l), vpv, 1.0, par);
            }
        }
    };
    let probs = run_attention_tasks(b * kv, chunk, keep, task);
    let saved = keep.then(|| PrefixSaved {
        qr: Arc::new(qr),
        kr: Arc::new(kr),
        v: v.clone(),
        kpr: Arc::new(kpr),
        vp: vp.clone(),
        probs: Arc::new(probs),
        rope: rope.clone(),
        dims: d,
    });
    (out, saved)
}

/// Gradients of one prefix-attention call, in the input layouts.
struct PrefixGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dkp: Vec<f32>,
    dvp: Vec<f32>,
}

/// Backward kernel: from `dout` `[B, C, H·hd]` to the five inputs' gradients. The prefix's
/// are accumulated per batch row (disjoint writes) and then summed over rows.
fn prefix_backward(dout: &[f32], s: &PrefixSaved) -> PrefixGrads {
    let PrefixDims {
        b,
        p: np,
        c,
        h,
        kv,
        hd,
    } = s.dims;
    let (group, l, scale) = (s.dims.group(), s.dims.l(), s.dims.scale());
    let mut dq = vec![0f32; b * c * h * hd];
    let mut dk = vec![0f32; b * c * kv * hd];
    let mut dv = vec![0f32; b * c * kv * hd];
    let mut dkp_rows = vec![0f32; b * np * kv * hd];
    let mut dvp_rows = vec![0f32; b * np * kv * hd];
    let ptrs = [&mut dq, &mut dk, &mut dv, &mut dkp_rows, &mut dvp_rows]
        .map(|x| SharedMut(x.as_mut_ptr()));
    let (qs, ks, vs, probs) = (&s.qr[..], &s.kr[..], slice(&s.v), &s.probs[..]);
    let (kps, vps) = (&s.kpr[..], slice(&s.vp));
    (0..b * kv).into_par_iter().for_each_init(
        || vec![0f32; c * l],
        |ds, task| {
            let [dq_ptr, dk_ptr, dv_ptr, dkp_ptr, dvp_ptr] = ptrs;
            let (bi, kvh) = (task / kv, task % kv);
            let k_base = (bi * c * kv + kvh) * hd;
            let kp_base = (bi * np * kv + kvh) * hd;
            let (kk, vv) = (
                View::rows(&ks[k_base..], kv * hd),
                View::rows(&vs[k_base..], kv * hd),
            );
            let (kpv, vpv) = (
                View::rows(&kps[kvh * hd..], kv * hd),
                View::rows(&vps[kvh * hd..], kv * hd),
            );
            for g in 0..group {
                let head = kvh * group + g;
                let q_base = (bi * c * h + head) * hd;
                let p = &probs[(bi * h + head) * c * l..(bi * h + head + 1) * c * l];
                let (qv, dov) = (
                    View::rows(&qs[q_base..], h * hd),
                    View::rows(&dout[q_base..], h * hd),
                );
                // SAFETY: the views address C (or P) rows of hd within the saved tensors and
                // dout; `ds` is this task's scratch; this task alone writes the dq rows of the
                // heads of kv head `kvh` in batch row `bi`, the dk/dv rows of (bi, kvh), and
                // the (bi, kvh) part of the per-row prefix gradients.
                unsafe {
                    let par = gemm::Parallelism::None;
                    // dP = dO · [vp; v]ᵀ.
                    gemm_view(c, np, hd, ds.as_mut_ptr(), l, false, dov, vpv.t(), 1.0, par);
                    causal_scores_ld(&mut ds[np..], l, dov, vv, c, hd, 1.0);
                    // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, zero past the causal limit.
                    for i in 0..c {
                        let live = np + i + 1;
                        let pr = &p[i * l..i * l + live];
                        let row = &mut ds[i * l..(i + 1) * l];
                        let dot: f32 = pr.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pp) in row.iter_mut().zip(pr) {
                            *x = pp * (*x - dot) * scale;
                        }
                        row[live..].fill(0.0);
                    }
                    let (dsv, pv) = (View::rows(ds, l), View::rows(p, l));
                    // dq = dS · [kp; k].
                    let dqo = { dq_ptr }.0.add(q_base);
                    causal_mix_ld(dqo, h * hd, &ds[np..], l, kk, c, hd);
                    gemm_view(c, hd, np, dqo, h * hd, true, dsv, kpv, 1.0, par);
                    // dk += dSᵀ · q, dv += Pᵀ · dO over the continuation's own keys.
                    causal_mix_t_ld({ dk_ptr }.0.add(k_base), kv * hd, &ds[np..], l, qv, c, hd);
                    causal_mix_t_ld({ dv_ptr }.0.add(k_base), kv * hd, &p[np..], l, dov, c, hd);
                    // The prefix keys and values: every query row sees every prefix column.
                    let (dkpo, dvpo) = ({ dkp_ptr }.0.add(kp_base), { dvp_ptr }.0.add(kp_base));
                    gemm_view(np, hd, c, dkpo, kv * hd, true, dsv.t(), qv, 1.0, par);
                    gemm_view(np, hd, c, dvpo, kv * hd, true, pv.t(), dov, 1.0, par);
                }
            }
        },
    );
    let sum_rows = |rows: Vec<f32>| -> Vec<f32> {
        let n = np * kv * hd;
        let mut total = rows[..n].to_vec();
        for part in rows[n..].chunks_exact(n) {
            total.iter_mut().zip(part).for_each(|(t, x)| *t += x);
        }
        total
    };
    let (mut dkp, dvp) = (sum_rows(dkp_rows), sum_rows(dvp_rows));
    s.rope.apply(&mut dq, np, c, h, true);
    s.rope.apply(&mut dk, np, c, kv, true);
    s.rope.apply(&mut dkp, 0, np, kv, true);
    PrefixGrads {
        dq,
        dk,
        dv,
        dkp,
        dvp,
    }
}

#[derive(Debug)]
struct PrefixBackward;

impl Backward<Flex, 5> for PrefixBackward {
    type State = PrefixSaved;

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq, nk, nv, nkp, nvp] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node).to_contiguous();
        let s = ops.state;
        let PrefixDims { b, p, c, h, kv, hd } = s.dims;
        let g = prefix_backward(slice(&dout), &s);
        let parts = [
            (nq, g.dq, vec![b, c, h, hd]),
            (nk, g.dk, vec![b, c, kv, hd]),
            (nv, g.dv, vec![b, c, kv, hd]),
            (nkp, g.dkp, vec![1, p, kv, hd]),
            (nvp, g.dvp, vec![1, p, kv, hd]),
        ];
        for (node, grad, shape) in parts {
            if let Some(n) = node {
                grads.register::<Flex>(n.id, flex(grad, shape));
            }
        }
    }
}

/// Attention of `B` continuation rows over one shared prefix and, causally, over
/// themselves, with RoPE and grouped kv heads, fused; see the module docs.
///
/// `q`: `[B, C, heads, hd]`, `k`, `v`: `[B, C, kv_heads, hd]` (the continuations'
/// projections, not rotated; continuation token `i` sits at position `P + i`); `kp`, `vp`:
/// `[1, P, kv_heads, hd]` (the prefix's projections, positions `0..P`); `rope` covers at
/// least `P + C` positions. Continuation row `i` of every batch row sees all `P` prefix keys
/// and its own keys `0..=i`: the attention that row would get in a plain
/// [`super::causal_attention`] over `[prefix, continuation]`. Returns `[B, C, heads·hd]`, or
/// `None` on a backend without the fused kernels.
pub fn prefix_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    kp: Tensor<B, 4>,
    vp: Tensor<B, 4>,
    rope: &Arc<RopeTables>,
) -> Option<Tensor<B, 3>> {
    let kind = kind::<B>()?;
    let [b, c, h, hd] = q.dims();
    let [_, p, kv, _] = kp.dims();
    let d = PrefixDims { b, p, c, h, kv, hd };
    let shape = vec![b, c, h * hd];
    match kind {
        Kind::Flex => {
            let [q, k, v, kp, vp] =
                [q, k, v, kp, vp].map(|x| primitive::<B, 4, FlexTensor>(x).to_contiguous());
            let (out, _) =
                prefix_forward(slice(&q), slice(&k), &v, slice(&kp), &vp, rope, d, false);
            Some(from_primitive::<B, 3, _>(flex(out, shape)))
        }
        Kind::Autodiff => {
            let ad: [AdTensor; 5] = [q, k, v, kp, vp].map(primitive::<B, 4, _>);
            let [q, k, v, kp, vp] = ad.each_ref().map(|x| x.primitive.to_contiguous());
            let nodes = ad.each_ref().map(|x| x.node.clone());
            let run =
                |keep| prefix_forward(slice(&q), slice(&k), &v, slice(&kp), &vp, rope, d, keep);
            let out = match PrefixBackward
                .prepare::<NoCheckpointing>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, saved) = run(true);
                    prep.finish(saved.expect("kept"), flex(out, shape))
                }
                OpsKind::UnTracked(prep) => prep.finish(flex(run(false).0, shape)),
            };
            Some(from_primitive::<B, 3, _>(out))
        }
    }
}
