//! Token log-probabilities and the clipped policy loss.
//!
//! [`token_logprobs`] runs the model over right-padded sequences and gathers
//! `log π(x_{t+1} | x_{≤t})`. [`policy_loss`] is PPO's clipped surrogate (Schulman et al.
//! 2017) as GRPO and Reinforce++ use it, plus GRPO's KL term (k1, k2 or k3; Schulman 2020,
//! "Approximating KL divergence"), averaged over all masked tokens of the whole batch: each
//! micro-batch divides by the batch's total masked-token count, so accumulated gradients
//! equal the gradient of the batch mean.
//!
//! **One update per batch, so the ratio is 1 and the clip never acts.** The trainer takes one
//! optimizer step per rollout batch, so π_old (the policy that sampled) and π_θ (the policy
//! being differentiated) are the same weights: it passes the detached current log-probs as
//! `old_logp`, `ρ_t = exp(log π_θ − sg(log π_θ)) = 1` in value with gradient `∇ log π_θ`, and
//! the surrogate reduces to the policy gradient `−A ∇ log π_θ` (`clip_frac` is 0). That is
//! correct for this schedule, not an omission; several updates per batch (PPO epochs) would
//! need the rollout-time log-probs here. What differs between sampling and scoring is the
//! weights' *precision* (Q8_0 rollouts, f32 loss): [`LossInputs::is_weight`] corrects that
//! with truncated importance sampling.
//!
//! Only the positions that carry loss reach the output head: the decoder runs over every
//! token (documents are context), but the `[hidden → vocab]` projection, the log-softmax and
//! its backward run on the rows of [`PackedBatch::scored`] alone. In a search episode most
//! tokens are inserted documents (mask 0), and the head is the largest GEMM of the model
//! (576 × 49,152 for the default) and its `[tokens, vocab]` activations the largest tensors
//! of the pass. Measured with `examples/profile_update.rs` on 2 × 800-token episodes with
//! 25 % policy tokens: 0.83× the update's time and 0.66 GB less peak memory on 2 cores. On
//! burn-flex the head, log-softmax and gather run as one fused kernel
//! ([`crate::model::fused::head_logprobs`]); other backends use the composed ops below.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::model::{fused, Llama};

/// A padded micro-batch on a device.
#[derive(Debug, Clone)]
pub struct PackedBatch<B: Backend> {
    /// Token ids `[B, T]`, right-padded with 0.
    pub tokens: Tensor<B, 2, Int>,
    /// First position scored: log-probs cover targets `start+1..T`, so tensors below are
    /// `[B, T − 1 − start]`.
    pub start: usize,
    /// Leading tokens every row has in common (the group's prompt, or the system prompt and
    /// demonstration that different questions share), at most `start`; 0 for one row. The
    /// forward runs them once ([`Llama::forward_shared`]); set it to 0 to run every row whole.
    pub shared: usize,
    /// Loss mask over targets `[B, T']` (1 on policy tokens).
    pub mask: Tensor<B, 2>,
    /// Host copy of the mask, row-major `[B][T']`.
    pub mask_host: Vec<Vec<u8>>,
    /// Flat indices into `[B·T']` (row-major) of the targets with mask 1, `[N]`: the only
    /// positions whose log-probs are computed. Never empty: a batch without policy tokens
    /// lists position 0, which its mask then zeroes.
    pub scored: Tensor<B, 1, Int>,
}

/// Splits sequences of lengths `lens` (tokens), in order, into micro-batches of at most
/// `max_seqs` sequences and at most `max_tokens` padded tokens; a sequence longer than
/// `max_tokens` goes alone. `max_tokens = 0` caps only the count. Returns indices into `lens`.
///
/// `shared[i]` is how many leading tokens sequence `i` shares with sequence `i − 1` and
/// runs once with it ([`shared_with_previous`]; all 0 when the forward runs every row whole):
/// a micro-batch's padded size is then `s + count × (longest − s)`, `s` the least `shared`
/// inside it, the tokens the forward actually computes ([`PackedBatch::shared`]).
///
/// Why a token cap: training memory grows with the padded shape — the saved attention
/// probabilities are `[B, heads, T, T]` per layer and the logits `[B, T, vocab]` — so two
/// 2,048-token episodes (eight searches' documents) in one pass need about twice the memory
/// of one, which on a 24 GiB machine is the difference between a step and the OOM killer.
pub fn micro_batches(
    lens: &[usize],
    shared: &[usize],
    max_seqs: usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let max_seqs = max_seqs.max(1);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut longest, mut common) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        let with_prev = shared.get(i).copied().unwrap_or(0);
        let fits = out.last().is_some_and(|mb| {
            let (l, s) = (longest.max(len), common.min(with_prev));
            mb.len() < max_seqs && (max_tokens == 0 || s + (mb.len() + 1) * (l - s) <= max_tokens)
        });
        if fits {
            out.last_mut().expect("checked").push(i);
            longest = longest.max(len);
            common = common.min(with_prev);
        } else {
            out.push(vec![i]);
            (longest, common) = (len, len);
        }
    }
    out
}

/// For sequences (`tokens`, `prompt_len`) in order: how many leading tokens each shares with
/// the one before (0 for the first), counting only prompt tokens before the first scored
/// position, as [`pack`] does. The input [`micro_batches`] takes to size shared-prompt passes.
pub fn shared_with_previous(seqs: &[(&[u32], usize)]) -> Vec<usize> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut prev: Option<(&[u32], usize)> = None;
    for &(tokens, prompt_len) in seqs {
        out.push(prev.map_or(0, |(p, p_len)| {
            let cap = prompt_len.min(p_len).saturating_sub(1);
            p.iter()
                .zip(tokens)
                .take(cap)
                .take_while(|(a, b)| a == b)
                .count()
        }));
        prev = Some((tokens, prompt_len));
    }
    out
}

/// [`micro_batches`] of sequences (`tokens`, `prompt_len`), each pass's shared prompt counted
/// once when `share_prompt` ([`shared_with_previous`]), every row whole otherwise: the plan
/// the RL trainer and SFT both follow (`[train] micro_batch`, `micro_batch_tokens`,
/// `share_prompt`). Returns indices into `seqs`.
pub fn plan_micro_batches(
    seqs: &[(&[u32], usize)],
    share_prompt: bool,
    max_seqs: usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let lens: Vec<usize> = seqs.iter().map(|(t, _)| t.len()).collect();
    let shared = match share_prompt {
        true => shared_with_previous(seqs),
        false => Vec::new(),
    };
    micro_batches(&lens, &shared, max_seqs, max_tokens)
}

/// Packs sequences (`tokens`, `mask`, `prompt_len`) into a [`PackedBatch`]; positions before
/// the shortest prompt are skipped since they never carry loss, and with `share_prompt` the
/// tokens all rows share up to there become [`PackedBatch::shared`] (0 without: the forward
/// runs every row whole).
pub fn pack<B: Backend>(
    seqs: &[(&[u32], &[u8], usize)],
    share_prompt: bool,
    device: &B::Device,
) -> PackedBatch<B> {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(1).max(2);
    let start = seqs
        .iter()
        .map(|s| s.2.saturating_sub(1))
        .min()
        .unwrap_or(0)
        .min(t - 2);
    let shared = match seqs.split_first() {
        Some((first, rest)) if share_prompt && !rest.is_empty() => (0..start)
            .take_while(|&j| {
                let x = first.0.get(j);
                x.is_some() && rest.iter().all(|s| s.0.get(j) == x)
            })
            .count(),
        _ => 0,
    };
    let tp = t - 1 - start;
    let mut ids = vec![0i64; b * t];
    let mut mask = vec![0f32; b * tp];
    let mut mask_host = vec![vec![0u8; tp]; b];
    let mut scored: Vec<i64> = Vec::new();
    for (i, (tok, m, _)) in seqs.iter().enumerate() {
        for (j, &x) in tok.iter().enumerate() {
            ids[i * t + j] = x as i64;
        }
        for j in 0..tp {
            let target = start + 1 + j;
            if target < m.len() && m[target] == 1 {
                mask[i * tp + j] = 1.0;
                mask_host[i][j] = 1;
                scored.push((i * tp + j) as i64);
            }
        }
    }
    if scored.is_empty() {
        scored.push(0);
    }
    let n = scored.len();
    PackedBatch {
        scored: Tensor::from_data(TensorData::new(scored, [n]), device),
        tokens: Tensor::from_data(TensorData::new(ids, [b, t]), device),
        start,
        shared,
        mask: Tensor::from_data(TensorData::new(mask, [b, tp]), device),
        mask_host,
    }
}

/// Log-probabilities of each next token under the model's own distribution (temperature 1):
/// `[B, T − 1 − start]`, at every position (the full-head path; see
/// [`token_logprobs_entropy`] for scoring only the positions that carry loss).
pub fn token_logprobs<B: Backend>(
    model: &Llama<B>,
    tokens: Tensor<B, 2, Int>,
    start: usize,
) -> Tensor<B, 2> {
    token_logprobs_entropy(model, tokens, start, 0, 1.0, false, None).0
}

/// Log-probabilities of each next token under the distribution the rollout sampled from,
/// `softmax(logits / temperature)` (`[B, T − 1 − start]`), plus, when `entropy` is set, that
/// distribution's entropy at each position (`−Σ_v p_v log p_v` over the vocabulary, nats,
/// `[B, T − 1 − start]`, detached).
///
/// The first `shared ≤ start` tokens must be the same in every row ([`PackedBatch::shared`]);
/// when `shared > 0` and `B > 1` the forward runs them once ([`Llama::forward_shared`]) and the
/// result is the same (tested against the unshared forward). Pass 0 to run every row whole.
///
/// `scored` (flat indices into `[B·(T − 1 − start)]`, as [`PackedBatch::scored`]) limits the
/// output head to those positions; every other position of both outputs is 0. `None` scores
/// all positions. The values at scored positions are the same either way (tested).
///
/// The policy gradient is only unbiased when the loss scores the tokens under the
/// distribution they were drawn from, so RL passes the rollout temperature here (as verl's
/// `compute_log_prob` divides logits by the rollout temperature) and samples without top-k /
/// top-p truncation (which this function does not model; the trainer refuses truncated
/// rollouts). `temperature` must be > 0.
pub fn token_logprobs_entropy<B: Backend>(
    model: &Llama<B>,
    tokens: Tensor<B, 2, Int>,
    start: usize,
    shared: usize,
    temperature: f32,
    entropy: bool,
    scored: Option<Tensor<B, 1, Int>>,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let [b, t] = tokens.dims();
    let tp = t - 1 - start;
    // `hidden` covers positions `first..T`.
    let (hidden, first) = match shared.min(start) {
        s if s > 0 && b > 1 => {
            let prefix = tokens.clone().slice([0..1, 0..s]);
            let rest = tokens.clone().slice([0..b, s..t]);
            (model.forward_shared(prefix, rest), s)
        }
        _ => (model.forward(tokens.clone()), 0),
    };
    let h = hidden.dims()[2];
    let hidden = hidden
        .slice([0..b, start - first..t - 1 - first, 0..h])
        .reshape([b * tp, h]);
    let targets = tokens.slice([0..b, start + 1..t]).reshape([b * tp]);
    let (hidden, targets) = match &scored {
        Some(idx) => (
            hidden.select(0, idx.clone()),
            targets.select(0, idx.clone()),
        ),
        None => (hidden, targets),
    };
    let n = targets.dims()[0];
    // Back to `[B, T']`, zeros where nothing was scored.
    let spread = |v: Tensor<B, 1>| -> Tensor<B, 2> {
        match &scored {
            Some(idx) => Tensor::<B, 1>::zeros([b * tp], &v.device())
                .select_assign(0, idx.clone(), v, IndexingUpdateOp::Add)
                .reshape([b, tp]),
            None => v.reshape([b, tp]),
        }
    };
    if fused::enabled::<B>() {
        let ids: Vec<usize> = targets
            .clone()
            .into_data()
            .convert::<i64>()
            .iter::<i64>()
            .map(|t| t.max(0) as usize)
            .collect();
        let (w, tied) = model.head_weight();
        if let Some((lp, ent)) = fused::head_logprobs(
            hidden.clone(),
            w,
            tied,
            &ids,
            temperature,
            model.precision(),
        ) {
            return (spread(lp), entropy.then(|| spread(ent)));
        }
    }
    let mut logits = model
        .logits(hidden.unsqueeze_dim::<3>(0))
        .reshape([n, model.vocab_size()]);
    if temperature != 1.0 {
        logits = logits.div_scalar(temperature);
    }
    let logp = log_softmax(logits, 1);
    let ent = entropy.then(|| {
        let lp = logp.clone().detach();
        (lp.clone().exp() * lp).sum_dim(1).reshape([n]).neg()
    });
    let lp = logp.gather(1, targets.unsqueeze_dim::<2>(1)).reshape([n]);
    (spread(lp), ent.map(spread))
}

/// Per-token estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman 2020,
/// "Approximating KL divergence"), with `r = log π_ref − log π_θ`:
/// k1 = −r (unbiased, can be negative), k2 = r²/2 (biased, low variance),
/// k3 = eʳ − r − 1 (unbiased, always ≥ 0; GRPO's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `log π_θ − log π_ref`.
    K1,
    /// `(log π_θ − log π_ref)² / 2`.
    K2,
    /// `π_ref/π_θ − log(π_ref/π_θ) − 1`.
    #[default]
    K3,
}

impl KlEstimator {
    /// Per-token estimate from `logp` (π_θ) and `ref_logp` (π_ref), both `[B, T']`.
    pub fn estimate<B: Backend>(self, logp: Tensor<B, 2>, ref_logp: Tensor<B, 2>) -> Tensor<B, 2> {
        let r = ref_logp - logp;
        match self {
            KlEstimator::K1 => r.neg(),
            KlEstimator::K2 => r.powi_scalar(2).mul_scalar(0.5),
            KlEstimator::K3 => r.clone().exp() - r - 1.0,
        }
    }
}

/// Inputs of [`policy_loss`], all `[B, T']` on the training device.
#[derive(Debug, Clone)]
pub struct LossInputs<B: Backend> {
    /// Rollout-policy log-probs (constants).
    pub old_logp: Tensor<B, 2>,
    /// Reference log-probs (constants); `None` when no KL term is used.
    pub ref_logp: Option<Tensor<B, 2>>,
    /// Per-token advantages.
    pub advantages: Tensor<B, 2>,
    /// Loss mask.
    pub mask: Tensor<B, 2>,
    /// Per-token truncated importance weights `min(π_old / π_rollout, C)` (constants) that
    /// multiply the clipped surrogate (Yao et al. 2025); `None` = 1.
    pub is_weight: Option<Tensor<B, 2>>,
}

/// Scalar parts of a loss evaluation, for logging (sums over masked tokens).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossParts {
    /// Σ of per-token loss over masked tokens.
    pub loss_sum: f64,
    /// Σ of the KL estimate over masked tokens.
    pub kl_sum: f64,
    /// Masked tokens where the ratio was clipped.
    pub clipped: f64,
}

/// Clipped surrogate + `kl_coef`·KL (estimator `kl`), summed over masked tokens and divided by
/// `total_tokens` (the whole batch's masked-token count). Returns the scalar loss `[1]`.
pub fn policy_loss<B: Backend>(
    logp: Tensor<B, 2>,
    inp: &LossInputs<B>,
    clip_eps: f64,
    kl_coef: f64,
    kl: KlEstimator,
    total_tokens: f64,
) -> (Tensor<B, 1>, LossParts) {
    let ratio = (logp.clone() - inp.old_logp.clone()).exp();
    let adv = inp.advantages.clone();
    let surr1 = ratio.clone() * adv.clone();
    let clipped_ratio = ratio.clone().clamp(1.0 - clip_eps, 1.0 + clip_eps);
    let surr2 = clipped_ratio.clone() * adv;
    let mut per_token = surr1.min_pair(surr2).neg();
    if let Some(w) = &inp.is_weight {
        per_token = per_token * w.clone();
    }
    let mut kl_sum = 0.0;
    if let Some(r) = &inp.ref_logp {
        let kl = kl.estimate(logp, r.clone());
        kl_sum = scalar(kl.clone().detach() * inp.mask.clone());
        if kl_coef != 0.0 {
            per_token = per_token + kl.mul_scalar(kl_coef);
        }
    }
    let masked = per_token * inp.mask.clone();
    let loss_sum = scalar(masked.clone().detach());
    let clipped = scalar(
        (ratio.detach() - clipped_ratio.detach())
            .abs()
            .greater_elem(1e-6)
            .float()
            * inp.mask.clone(),
    );
    let loss = masked.sum().div_scalar(total_tokens.max(1.0));
    (
        loss,
        LossParts {
            loss_sum,
            kl_sum,
            clipped,
        },
    )
}

fn scalar<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    t.sum().into_scalar_f64()
}

trait IntoF64 {
    fn into_scalar_f64(self) -> f64;
}

impl<B: Backend> IntoF64 for Tensor<B, 1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data()
            .to_vec::<f32>()
            .map(|v| v[0] as f64)
            .unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};

    use crate::model::backend::Train;
    use crate::model::{Llama, LlamaConfig};

    type Grads = <Train as AutodiffBackend>::Gradients;

    use sleuth_model::testing::{flat, rel_err};

    /// The fused output head gives the composed log-softmax's log-probs, entropies and
    /// gradients (head weight and a deeper weight), tied and untied, at T = 0.8, scoring a
    /// subset of positions as the trainer does.
    #[test]
    fn fused_head_matches_composed_log_softmax() {
        let device = Default::default();
        for tied in [true, false] {
            Train::seed(&device, 11);
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..LlamaConfig::tiny(97)
            };
            let model = Llama::<Train>::random(&cfg, &device);
            let (b, t, start) = (2, 20, 3);
            let tp = t - 1 - start;
            let ids: Vec<i64> = (0..b * t).map(|i| ((i * 29 + 5) % 97) as i64).collect();
            let tokens = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
            let idx: Vec<i64> = (0..(b * tp) as i64).filter(|i| i % 3 != 1).collect();
            let n = idx.len();
            let scored = Tensor::<Train, 1, Int>::from_data(TensorData::new(idx, [n]), &device);
            let r = Tensor::<Train, 2>::random([b, tp], Distribution::Normal(0.0, 1.0), &device);
            let run = || {
                let (lp, ent) = token_logprobs_entropy(
                    &model,
                    tokens.clone(),
                    start,
                    0,
                    0.8,
                    true,
                    Some(scored.clone()),
                );
                let grads: Grads = (lp.clone() * r.clone()).sum().backward();
                let (w, _) = model.head_weight();
                vec![
                    flat(lp),
                    flat(ent.expect("asked for entropy")),
                    flat(w.grad(&grads).expect("head grad")),
                    flat(
                        model.layers[1]
                            .mlp
                            .down_proj
                            .weight
                            .val()
                            .grad(&grads)
                            .expect("grad"),
                    ),
                ]
            };
            let fused = run();
            let composed = crate::model::fused::with_composite(run);
            for ((name, f), c) in ["logp", "entropy", "head grad", "down grad"]
                .iter()
                .zip(fused)
                .zip(composed)
            {
                let err = rel_err(f, c);
                assert!(err < 2e-4, "tied={tied} {name}: relative error {err}");
            }
        }
    }

    #[test]
    fn micro_batches_cap_count_and_padded_tokens() {
        // Count cap only.
        assert_eq!(
            micro_batches(&[5, 5, 5], &[], 2, 0),
            vec![vec![0, 1], vec![2]]
        );
        // 2 × 600 ≤ 1,500 pairs; a 1,000-token sequence cannot join (2 × 1,000 > 1,500), and
        // one longer than the cap goes alone.
        assert_eq!(
            micro_batches(&[600, 500, 1000, 2000, 100, 100], &[0; 6], 4, 1500),
            vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]
        );
        // Every index once, in order, whatever the caps.
        let lens = [7, 300, 2048, 1, 1, 900, 900, 900];
        for (s, t) in [(1, 0), (3, 0), (2, 2048), (8, 1000), (8, 1)] {
            let flat: Vec<usize> = micro_batches(&lens, &[], s, t).concat();
            assert_eq!(flat, (0..lens.len()).collect::<Vec<_>>(), "caps {s}, {t}");
            for mb in micro_batches(&lens, &[], s, t) {
                let longest = mb.iter().map(|&i| lens[i]).max().unwrap();
                assert!(mb.len() <= s);
                assert!(t == 0 || mb.len() == 1 || mb.len() * longest <= t);
            }
        }
        assert!(micro_batches(&[], &[], 2, 100).is_empty());
    }

    /// A group sharing its prompt counts the prompt once against the token cap: four
    /// 800-token episodes with a 600-token common prompt are 600 + 4 × 200 = 1,400 tokens,
    /// one pass under a 2,048 cap (3,200 unshared: two passes); a different question breaks
    /// the sharing.
    #[test]
    fn micro_batches_count_a_shared_prompt_once() {
        let prompt: Vec<u32> = (0..600).collect();
        let episode = |q: u32| -> Vec<u32> {
            let mut t = prompt.clone();
            t.extend((0..200).map(|i| i + q));
            t
        };
        let mut other = episode(0);
        other[10] = 9999;
        let eps = [episode(1), episode(2), episode(3), episode(4), other];
        let seqs: Vec<(&[u32], usize)> = eps.iter().map(|t| (&t[..], 601)).collect();
        let shared = shared_with_previous(&seqs);
        assert_eq!(shared, vec![0, 600, 600, 600, 10]);
        let lens = vec![800; 5];
        assert_eq!(
            micro_batches(&lens, &shared, 8, 2048),
            vec![vec![0, 1, 2, 3], vec![4]]
        );
        assert_eq!(
            micro_batches(&lens, &[0; 5], 8, 2048),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        // Prompt tokens only: identical prompts share up to the first scored position.
        let a = episode(1);
        assert_eq!(shared_with_previous(&[(&a, 601), (&a, 601)]), vec![0, 600]);
    }
    use burn::backend::Flex;

    fn t(v: &[f32]) -> Tensor<Flex, 2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [1, v.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn kl_estimators_match_their_formulas() {
        let logp = t(&[-1.0, -2.0, -0.5]);
        let refp = t(&[-1.5, -1.0, -0.5]);
        let get = |k: KlEstimator| -> Vec<f32> {
            k.estimate(logp.clone(), refp.clone())
                .into_data()
                .to_vec()
                .unwrap()
        };
        let r = [-0.5f32, 1.0, 0.0];
        for (i, &ri) in r.iter().enumerate() {
            assert!((get(KlEstimator::K1)[i] + ri).abs() < 1e-6);
            assert!((get(KlEstimator::K2)[i] - ri * ri / 2.0).abs() < 1e-6);
            assert!((get(KlEstimator::K3)[i] - (ri.exp() - ri - 1.0)).abs() < 1e-6);
        }
        // k3 is never negative; k1 is, where the policy is less likely than the reference.
        assert!(get(KlEstimator::K3).iter().all(|&x| x >= 0.0));
        assert!(get(KlEstimator::K1)[1] < 0.0);
    }

    /// Scoring only the policy positions gives the full head's log-probs and entropy there,
    /// zeros elsewhere, and the same gradient of a masked loss (tiny random model, 1e-5).
    #[test]
    fn scored_positions_match_the_full_head() {
        use crate::model::LlamaConfig;
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        A::seed(&device, 7);
        let model = Llama::<A>::random(&LlamaConfig::tiny(97), &device);
        // Two rows: prompt 3 / 2, documents (mask 0) inside the policy spans, padding.
        let t1: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 97).collect();
        let m1 = [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1];
        let t2: Vec<u32> = (0..9).map(|i| (i * 11 + 5) % 97).collect();
        let m2 = [0, 0, 1, 0, 0, 1, 1, 0, 1];
        let p = pack::<A>(&[(&t1, &m1, 3), (&t2, &m2, 2)], true, &device);
        let run = |scored: Option<Tensor<A, 1, Int>>| {
            let (lp, ent) =
                token_logprobs_entropy(&model, p.tokens.clone(), p.start, 0, 0.8, true, scored);
            let loss = (lp.clone() * p.mask.clone()).sum();
            let grads = loss.backward();
            let g = model.layers[0]
                .mlp
                .up_proj
                .weight
                .grad(&grads)
                .expect("gradient")
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let lp: Vec<f32> = lp.into_data().to_vec().unwrap();
            let ent: Vec<f32> = ent.expect("entropy").into_data().to_vec().unwrap();
            (lp, ent, g)
        };
        let (lp_full, ent_full, g_full) = run(None);
        let (lp_s, ent_s, g_s) = run(Some(p.scored.clone()));
        let mask: Vec<u8> = p.mask_host.concat();
        assert_eq!(p.scored.dims()[0], mask.iter().filter(|&&m| m == 1).count());
        for (i, &m) in mask.iter().enumerate() {
            if m == 1 {
                assert!((lp_full[i] - lp_s[i]).abs() < 1e-5, "log-prob {i}");
                assert!((ent_full[i] - ent_s[i]).abs() < 1e-5, "entropy {i}");
                assert!(lp_s[i] < 0.0);
            } else {
                assert_eq!((lp_s[i], ent_s[i]), (0.0, 0.0), "unscored position {i}");
            }
        }
        let scale = g_full.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(scale > 0.0);
        for (a, b) in g_full.iter().zip(&g_s) {
            assert!((a - b).abs() <= 1e-5 * scale.max(1.0), "{a} vs {b}");
        }
    }

    /// `pack` finds the tokens all rows share, at most up to the first scored position, and
    /// the log-probs and gradients of a micro-batch with that prefix run once equal the
    /// unshared forward's (rows with different questions after a common system prompt, one
    /// row shorter than the others; tiny random model, 1e-5 relative).
    #[test]
    fn shared_prompt_is_detected_and_changes_nothing() {
        use crate::model::LlamaConfig;
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        A::seed(&device, 3);
        let model = Llama::<A>::random(&LlamaConfig::tiny(97), &device);
        let system: Vec<u32> = (0..70).map(|i| (i * 7 + 3) % 97).collect();
        let row = |q: u32, len: usize| -> (Vec<u32>, Vec<u8>) {
            let mut t = system.clone();
            t.extend((0..len).map(|i| (i as u32 * 13 + q) % 97));
            let m = (0..t.len()).map(|i| u8::from(i >= 75)).collect();
            (t, m)
        };
        let rows = [row(1, 30), row(2, 24), row(5, 30)];
        let seqs: Vec<(&[u32], &[u8], usize)> =
            rows.iter().map(|(t, m)| (&t[..], &m[..], 75)).collect();
        let p = pack::<A>(&seqs, true, &device);
        assert_eq!(p.start, 74);
        // The questions differ from token 70 on: 70 tokens shared.
        assert_eq!(p.shared, 70);
        // Identical prompts share up to the first scored position, not beyond.
        let same = [row(1, 30), row(1, 30)];
        let seqs_same: Vec<(&[u32], &[u8], usize)> =
            same.iter().map(|(t, m)| (&t[..], &m[..], 75)).collect();
        assert_eq!(pack::<A>(&seqs_same, true, &device).shared, 74);
        assert_eq!(pack::<A>(&seqs, false, &device).shared, 0, "sharing off");
        assert_eq!(pack::<A>(&seqs[..1], true, &device).shared, 0, "one row");
        let run = |shared: usize| {
            let scored = Some(p.scored.clone());
            let (lp, _) = token_logprobs_entropy(
                &model,
                p.tokens.clone(),
                p.start,
                shared,
                1.0,
                false,
                scored,
            );
            let grads = (lp.clone() * p.mask.clone()).sum().backward();
            let g = model.layers[0]
                .self_attn
                .k_proj
                .weight
                .grad(&grads)
                .expect("gradient");
            let lp: Vec<f32> = lp.into_data().to_vec().unwrap();
            (lp, g.into_data().to_vec::<f32>().unwrap())
        };
        let (lp_s, g_s) = run(p.shared);
        let (lp_u, g_u) = run(0);
        let close = |a: &[f32], b: &[f32], what: &str| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{what} is all zero");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-5 * scale, "{what} {i}: {x} vs {y}");
            }
        };
        close(&lp_s, &lp_u, "log-prob");
        close(&g_s, &g_u, "k_proj gradient");
    }

    #[test]
    fn pack_lists_at_least_one_scored_position() {
        let device = Default::default();
        let p = pack::<Flex>(&[(&[1, 2, 3, 4], &[0, 0, 0, 0], 2)], true, &device);
        assert_eq!(
            p.scored.into_data().iter::<i64>().collect::<Vec<_>>(),
            vec![0]
        );
    }

    #[test]
    fn loss_is_masked_mean_of_negative_advantage_at_ratio_one() {
        let logp = t(&[-1.0, -2.0, -3.0]);
        let inputs = LossInputs {
            old_logp: logp.clone(),
            ref_logp: None,
            advantages: t(&[2.0, 2.0, 5.0]),
            mask: t(&[1.0, 1.0, 0.0]),
            is_weight: None,
        };
        let (loss, parts) = policy_loss(logp.clone(), &inputs, 0.2, 0.0, KlEstimator::K3, 4.0);
        // Two masked tokens with A = 2 each, divided by the batch's 4 tokens.
        let v: f32 = loss.into_scalar();
        assert!((v + 1.0).abs() < 1e-6, "{v}");
        assert!((parts.loss_sum + 4.0).abs() < 1e-6);
        assert_eq!(parts.clipped, 0.0);
        // Truncated importance weights scale each token's surrogate: 0.5·2 + 3·2 over 4.
        let weighted = LossInputs {
            is_weight: Some(t(&[0.5, 3.0, 7.0])),
            ..inputs
        };
        let (loss, _) = policy_loss(logp, &weighted, 0.2, 0.0, KlEstimator::K3, 4.0);
        let v: f32 = loss.into_scalar();
        assert!((v + 1.75).abs() < 1e-6, "{v}");
    }
}
