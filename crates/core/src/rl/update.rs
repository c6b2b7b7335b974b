//! The RL loss of one step: advantages from the kept groups' rewards, the clipped surrogate
//! with optional KL and truncated importance weights, back-propagated micro-batch by
//! micro-batch through the shared [`Learner`].
//!
//! **Sampling and scoring agree.** Tokens are scored under the distribution the rollout
//! sampled from: `softmax(logits / T)` at the rollout temperature, untruncated
//! ([`super::loss::token_logprobs_entropy`]).
//!
//! **Why the ratio is 1.** One rollout batch feeds exactly one optimizer step, so
//! `old_logp` is the detached current log-prob: π_old equals π_θ at update time, the ratio is
//! 1 and the clip never acts; its gradient is the plain policy gradient. The clipped form is
//! kept so that multi-epoch updates can be added without changing the loss. Where rollouts
//! were decoded from other weights (a quantized engine, a remote server), the truncated
//! importance weight `min(π_train / π_rollout, tis_cap)` is the correction (Yao et al. 2025).

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::advantage::{self, Algo};
use super::learner::Learner;
use super::loss::{policy_loss, token_logprobs_entropy, LossInputs, PackedBatch};
use crate::env::Episode;
use crate::model::Llama;

/// The episodes of one update with their pay.
#[derive(Clone, Copy)]
pub(super) struct Batch<'a> {
    /// Kept episodes, whole groups in order.
    pub episodes: &'a [Episode],
    /// Each episode's reward.
    pub rewards: &'a [f32],
    /// Each episode's advantage (`algo = "grpo"`: chain or tree GRPO).
    pub advantages: &'a [f32],
    /// Episodes per group (Reinforce++'s baseline).
    pub group: usize,
}

/// What the update measured.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UpdateStats {
    /// Surrogate loss per policy token.
    pub loss: f64,
    /// Mean KL to the reference per policy token (when a reference is kept).
    pub kl: Option<f64>,
    /// Mean policy entropy per policy token, nats.
    pub entropy: Option<f64>,
    /// Mean |log π_train − log π_rollout| per policy token, nats.
    pub logprob_mismatch: Option<f64>,
    /// Largest |log π_train − log π_rollout| of a policy token, nats.
    pub logprob_mismatch_max: Option<f64>,
    /// Share of policy tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Log-probs of the next tokens at the rollout temperature, no entropy.
/// Only the batch's policy-token positions are scored (the rest read 0).
fn logprobs_at<B: Backend>(model: &Llama<B>, p: &PackedBatch<B>, temperature: f32) -> Tensor<B, 2> {
    token_logprobs_entropy(
        model,
        p.tokens.clone(),
        p.start,
        p.shared,
        temperature,
        false,
        Some(p.scored.clone()),
    )
    .0
}

/// One optimizer step of `learner` on `batch` at learning rate `lr`, scoring tokens at the
/// rollout `temperature`; `reference` is the frozen reference policy when KL is tracked or
/// penalised. With `algo = "grpo"` each episode's advantage is `batch.advantages` (chain or
/// tree GRPO, computed by the caller); Reinforce++ computes per-token advantages here from
/// `batch.rewards`.
///
/// Micro-batches whose advantages are all zero (e.g. a GRPO group with equal rewards)
/// carry no gradient when KL is not a loss term, so they skip the forward and backward
/// passes; the loss is still divided by every policy token of the batch, so the result is
/// the same as computing them.
pub(super) fn update<B: AutodiffBackend>(
    learner: &mut Learner<B>,
    reference: Option<&Llama<B::InnerBackend>>,
    temperature: f32,
    batch: &Batch<'_>,
    lr: f64,
) -> UpdateStats {
    let Batch {
        episodes,
        rewards,
        advantages: seq_adv,
        group: g,
    } = *batch;
    let _span = tracing::info_span!("update", episodes = episodes.len()).entered();
    let total_tokens: f64 = episodes.iter().map(|e| e.policy_tokens() as f64).sum();
    if total_tokens == 0.0 {
        return UpdateStats::default();
    }
    let cfg = learner.cfg.clone();
    let temp = temperature;
    let seqs: Vec<(&[u32], &[u8], usize)> = episodes
        .iter()
        .map(|e| (&e.tokens[..], &e.mask[..], e.prompt_len))
        .collect();
    let batches = learner.micro_batches(&seqs);
    let kl_in_loss = if cfg.algo == Algo::Grpo {
        cfg.kl_coef
    } else {
        0.0
    };

    // Reinforce++ with KL in the reward needs log π_old − log π_ref of every token before
    // any advantage can be normalized.
    let needs_kl_reward = cfg.algo != Algo::Grpo && cfg.kl_coef != 0.0;
    let mut ref_lp: Vec<Option<Vec<Vec<f32>>>> = vec![None; batches.len()];
    let mut kl_reward: Vec<Vec<Vec<f32>>> = batches
        .iter()
        .map(|mb| {
            mb.packed
                .mask_host
                .iter()
                .map(|row| vec![0.0; row.len()])
                .collect()
        })
        .collect();
    if needs_kl_reward {
        let inner = learner.model.valid();
        for (ci, mb) in batches.iter().enumerate() {
            let old = rows(logprobs_at(&inner, &mb.packed, temp));
            if let Some(r) = reference {
                let rf = rows(logprobs_at(r, &mb.packed, temp));
                kl_reward[ci] = old
                    .iter()
                    .zip(&rf)
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
                    .collect();
                ref_lp[ci] = Some(rf);
            }
        }
    }

    // Advantages per micro-batch, row, token.
    let adv: Vec<Vec<Vec<f32>>> = match cfg.algo {
        Algo::Grpo => {
            let a = seq_adv;
            batches
                .iter()
                .map(|mb| {
                    mb.rows
                        .iter()
                        .zip(&mb.packed.mask_host)
                        .map(|(&i, row)| vec![a[i]; row.len()])
                        .collect()
                })
                .collect()
        }
        Algo::ReinforcePp | Algo::ReinforcePpBaseline => {
            let r = if cfg.algo == Algo::ReinforcePpBaseline {
                advantage::subtract_group_mean(rewards, g)
            } else {
                rewards.to_vec()
            };
            let flat_mask: Vec<Vec<u8>> = batches
                .iter()
                .flat_map(|mb| mb.packed.mask_host.clone())
                .collect();
            let flat_kl: Vec<Vec<f32>> = kl_reward.into_iter().flatten().collect();
            let flat_r: Vec<f32> = batches
                .iter()
                .flat_map(|mb| mb.rows.iter().map(|&i| r[i]))
                .collect();
            let flat = advantage::reinforce_pp(&flat_r, &flat_mask, &flat_kl, cfg.kl_coef as f32);
            let mut it = flat.into_iter();
            batches
                .iter()
                .map(|mb| mb.rows.iter().map(|_| it.next().expect("row")).collect())
                .collect()
        }
    };

    // Forward/backward on the micro-batches that carry gradient, accumulated.
    let mut grads = learner.gradients();
    let (mut loss_sum, mut kl_sum, mut clipped, mut kl_tokens, mut entropy_sum) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut gap_sum, mut gap_tokens, mut gap_max) = (0.0f64, 0usize, 0.0f64);
    let device = learner.device().clone();
    for (ci, mb) in batches.iter().enumerate() {
        let p = &mb.packed;
        let carries = kl_in_loss != 0.0 || adv[ci].iter().flatten().any(|&a| a != 0.0);
        if !carries {
            continue;
        }
        if ref_lp[ci].is_none() {
            ref_lp[ci] = reference.map(|r| rows(logprobs_at(r, p, temp)));
        }
        let tokens = Tensor::<B, 2, Int>::from_inner(p.tokens.clone());
        let mask = Tensor::<B, 2>::from_inner(p.mask.clone());
        let scored = Tensor::<B, 1, Int>::from_inner(p.scored.clone());
        let (logp, ent) = token_logprobs_entropy(
            &learner.model,
            tokens,
            p.start,
            p.shared,
            temp,
            true,
            Some(scored),
        );
        if let Some(e) = ent {
            let m = Tensor::<B, 2>::from_inner(p.mask.clone());
            entropy_sum += (e * m).sum().into_scalar().elem::<f64>();
        }
        let [b, tp] = logp.dims();
        // Rollout log-probs of the same targets: the mismatch with the training forward,
        // and the truncated importance weights when `tis_cap` is set.
        let train_lp = rows(logp.clone().detach().inner());
        let (gap, gap_n, gap_top, is_w) = rollout_gap(
            &mb.rows
                .iter()
                .map(|&i| &episodes[i].logprobs[..])
                .collect::<Vec<_>>(),
            &p.mask_host,
            &train_lp,
            p.start,
            cfg.tis_cap,
        );
        gap_sum += gap;
        gap_tokens += gap_n;
        gap_max = gap_max.max(gap_top);
        let inputs = LossInputs {
            old_logp: logp.clone().detach(),
            ref_logp: ref_lp[ci]
                .as_ref()
                .map(|r| to_tensor::<B>(r, b, tp, &device)),
            advantages: to_tensor::<B>(&adv[ci], b, tp, &device),
            mask,
            is_weight: is_w.map(|w| to_tensor::<B>(&w, b, tp, &device)),
        };
        let (loss, parts) = policy_loss(
            logp,
            &inputs,
            cfg.clip_eps,
            kl_in_loss,
            cfg.kl_estimator,
            total_tokens,
        );
        loss_sum += parts.loss_sum;
        kl_sum += parts.kl_sum;
        clipped += parts.clipped;
        kl_tokens += p.mask_host.iter().flatten().filter(|&&m| m == 1).count() as f64;
        learner.backward(&mut grads, loss);
    }
    let Some(grad_norm) = learner.apply(grads, lr) else {
        return UpdateStats::default();
    };
    UpdateStats {
        loss: loss_sum / total_tokens,
        kl: (reference.is_some() && kl_tokens > 0.0).then(|| kl_sum / kl_tokens),
        entropy: (kl_tokens > 0.0).then(|| entropy_sum / kl_tokens),
        logprob_mismatch: (gap_tokens > 0).then(|| gap_sum / gap_tokens as f64),
        logprob_mismatch_max: (gap_tokens > 0).then_some(gap_max),
        clip_frac: clipped / total_tokens,
        grad_norm,
    }
}

/// Compares rollout and training log-probs of a micro-batch's policy tokens.
///
/// `rollout[i]` is episode `i`'s per-token rollout log-probs (indexed like its tokens; empty
/// when unknown), `mask`/`train` are `[B][T']` over targets `start + 1 + j`. Returns
/// (Σ |train − rollout|, tokens compared, max |train − rollout|, and with `cap > 0` the
/// truncated importance weights `min(exp(train − rollout), cap)` per target, 1 where unknown or
/// masked).
fn rollout_gap(
    rollout: &[&[f32]],
    mask: &[Vec<u8>],
    train: &[Vec<f32>],
    start: usize,
    cap: f64,
) -> (f64, usize, f64, Option<Vec<Vec<f32>>>) {
    let (mut sum, mut n, mut max) = (0.0f64, 0usize, 0.0f64);
    let mut weights: Vec<Vec<f32>> = mask.iter().map(|r| vec![1.0; r.len()]).collect();
    for (i, row) in mask.iter().enumerate() {
        for (j, &m) in row.iter().enumerate() {
            let Some(&lr) = rollout[i].get(start + 1 + j) else {
                continue;
            };
            if m == 0 {
                continue;
            }
            let d = train[i][j] - lr;
            sum += d.abs() as f64;
            max = max.max(d.abs() as f64);
            n += 1;
            if cap > 0.0 {
                weights[i][j] = (d.exp() as f64).min(cap) as f32;
            }
        }
    }
    (sum, n, max, (cap > 0.0).then_some(weights))
}

/// Rows of a `[b, t]` tensor on the host.
fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [b, tp] = t.dims();
    let v = t.into_data().to_vec::<f32>().expect("f32");
    (0..b).map(|i| v[i * tp..(i + 1) * tp].to_vec()).collect()
}

/// A `[b, tp]` tensor from host rows (each at least `tp` long; longer rows are cut).
fn to_tensor<B: Backend>(
    rows: &[Vec<f32>],
    b: usize,
    tp: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut flat = Vec::with_capacity(b * tp);
    for r in rows {
        flat.extend_from_slice(&r[..tp]);
    }
    Tensor::from_data(TensorData::new(flat, [b, tp]), device)
}

#[cfg(test)]
mod tests {
    use super::rollout_gap;

    /// The gap is measured on mask-1 targets only, target `j` of a row reading the episode's
    /// log-prob at token `start + 1 + j`; truncated weights are `min(exp(train − rollout), C)`.
    #[test]
    fn rollout_gap_compares_policy_tokens_and_truncates_weights() {
        // Episode tokens 0..5; targets start at token 1 (start = 0).
        let rollout: Vec<f32> = vec![0.0, -1.0, 0.0, -2.0, -0.5];
        let mask = vec![vec![1u8, 0, 1, 1]];
        let train = vec![vec![-1.5f32, 9.0, -1.0, -0.5]];
        let (sum, n, max, w) = rollout_gap(&[&rollout[..]], &mask, &train, 0, 2.0);
        assert_eq!(n, 3);
        assert!((max - 1.0).abs() < 1e-6, "{max}");
        assert!((sum - (0.5 + 1.0 + 0.0)).abs() < 1e-6, "{sum}");
        let w = w.expect("weights with a cap");
        assert!((w[0][0] - (-0.5f32).exp()).abs() < 1e-6);
        assert_eq!(w[0][1], 1.0, "masked target keeps weight 1");
        assert_eq!(w[0][2], 2.0, "exp(1) is truncated at the cap");
        assert!((w[0][3] - 1.0).abs() < 1e-6);
        // No cap: no weights; unknown rollout log-probs (old files): nothing compared.
        assert!(rollout_gap(&[&rollout[..]], &mask, &train, 0, 0.0)
            .3
            .is_none());
        assert_eq!(rollout_gap(&[&[][..]], &mask, &train, 0, 2.0).1, 0);
    }

    /// Rollouts decode from quantized weights by default, so TIS is on by default: the default
    /// cap yields importance weights, truncated at 2 (Yao et al. 2025).
    #[test]
    fn tis_is_on_by_default_with_quantized_rollouts() {
        let rollout_cfg = crate::env::RolloutConfig::default();
        assert_ne!(rollout_cfg.weights, crate::model::DecodeWeights::F32);
        let cfg = crate::rl::TrainConfig::default();
        assert_eq!(cfg.tis_cap, 2.0);
        let rollout: Vec<f32> = vec![0.0, -3.0, -0.1];
        let train = vec![vec![-1.0f32, -0.2]];
        let (_, n, _, w) = rollout_gap(&[&rollout[..]], &[vec![1, 1]], &train, 0, cfg.tis_cap);
        let w = w.expect("TIS weights by default");
        assert_eq!(n, 2);
        assert_eq!(w[0][0], 2.0, "exp(2) truncated at the default cap");
        assert!((w[0][1] - (-0.1f32).exp()).abs() < 1e-6);
    }
}
