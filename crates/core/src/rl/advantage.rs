//! Advantage estimators (DESIGN §5), on the host over per-sample rewards and per-token
//! log-probabilities.
//!
//! - GRPO (Shao et al. 2024, DeepSeekMath): `A_i = (R_i − mean_g R) / (std_g R + ε)` for every
//!   token of sample i; `std` is the sample standard deviation (n−1), as in TRL.
//! - Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", arXiv 2503.20783,
//!   eq. 3): `A_i = R_i − mean_g R`, no division by the group's std. Dividing by the std makes
//!   the advantages of every informative group the same size, so rewards `[0.3, 0.3, 0.3, 0.6]`
//!   (one more gold title found) push as hard as `[0.3, 0.3, 0.3, 2.3]` (one answer right);
//!   without it the update is proportional to what the reward paid. Dr. GRPO's other change,
//!   no per-response `1/|o_i|` in the loss, sleuth already has: [`super::loss`] sums token
//!   losses over the batch and divides by the batch's policy-token count.
//! - Tree-GRPO (Ji et al. 2025, "Tree Search for LLM Agent Reinforcement Learning", arXiv
//!   2509.21240, §3.2): for leaf i of tree t of a question's forest,
//!   `A_i = Â_intra(i) + Â_inter(i)`, where `Â_intra(i) = (R_i − mean_{j∈t} R_j) / (std_{j∈t} R_j + ε)`
//!   over the leaves of the same tree and `Â_inter(i) = (R_i − mean_j R_j) / (std_j R_j + ε)`
//!   over all leaves of the question's trees ([`tree_grpo`]). Leaves that share a node compare
//!   the steps after it (the intra-tree term: step-level credit), and the inter-tree term keeps
//!   the question-level baseline of chain GRPO. With `advantage = "dr_grpo"` neither term
//!   divides by the std.
//! - Reinforce++ (Hu 2025, OpenRLHF): per-token reward `r_t = −β (log π_old − log π_ref)_t`,
//!   plus `R` at the last policy token; return `G_t = Σ_{k≥t} r_k` over policy tokens; then
//!   normalized over all policy tokens of the batch. The `baseline` variant first subtracts
//!   the group mean from `R` (R1-Searcher's setting, with β = 0).

use serde::{Deserialize, Serialize};

/// Which estimator the trainer uses (`algo` in `[train]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// Group-relative advantages, KL as a loss term.
    Grpo,
    /// Reinforce++ with KL in the reward and global normalization.
    ReinforcePp,
    /// Reinforce++ with group-mean baseline subtraction first.
    ReinforcePpBaseline,
}

impl Algo {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Algo::Grpo => "grpo",
            Algo::ReinforcePp => "reinforce_pp",
            Algo::ReinforcePpBaseline => "reinforce_pp_baseline",
        }
    }
}

/// Epsilon in GRPO's denominator (TRL's value).
pub const GRPO_EPS: f32 = 1e-4;

/// GRPO advantages: one scalar per sample; `rewards` is ordered group by group, `group` wide.
pub fn grpo(rewards: &[f32], group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group.max(1)) {
        let n = g.len() as f32;
        let mean = g.iter().sum::<f32>() / n;
        let var = if g.len() > 1 {
            g.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1.0)
        } else {
            0.0
        };
        let std = var.sqrt();
        out.extend(g.iter().map(|r| (r - mean) / (std + GRPO_EPS)));
    }
    out
}

/// Tree-GRPO advantages (module docs): one scalar per leaf. `rewards` is ordered question by
/// question, `group` leaves each; `trees[i]` is leaf i's tree within its question; `norm`
/// scales both terms as GRPO ([`grpo`]) or Dr. GRPO ([`dr_grpo`]) would.
pub fn tree_grpo(rewards: &[f32], trees: &[usize], group: usize, norm: GroupNorm) -> Vec<f32> {
    let relative = |r: &[f32]| match norm {
        GroupNorm::Grpo => grpo(r, r.len()),
        GroupNorm::DrGrpo => dr_grpo(r, r.len()),
    };
    let mut out = Vec::with_capacity(rewards.len());
    let group = group.max(1);
    for (q, chunk) in rewards.chunks(group).enumerate() {
        let base = q * group;
        let mut adv = relative(chunk);
        let tree_of = |i: usize| trees.get(base + i).copied().unwrap_or(0);
        let mut seen: Vec<usize> = Vec::new();
        for i in 0..chunk.len() {
            let t = tree_of(i);
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let members: Vec<usize> = (0..chunk.len()).filter(|&j| tree_of(j) == t).collect();
            let r: Vec<f32> = members.iter().map(|&j| chunk[j]).collect();
            for (&j, a) in members.iter().zip(relative(&r)) {
                adv[j] += a;
            }
        }
        out.extend(adv);
    }
    out
}

/// How GRPO scales a group's centred rewards (`[train] advantage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupNorm {
    /// Divide by the group's std ([`grpo`]).
    #[default]
    Grpo,
    /// Only subtract the group's mean ([`dr_grpo`]).
    DrGrpo,
}

impl GroupNorm {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupNorm::Grpo => "grpo",
            GroupNorm::DrGrpo => "dr_grpo",
        }
    }
}

/// Dr. GRPO advantages (arXiv 2503.20783, eq. 3): `A_i = R_i − mean_g R`, one scalar per
/// sample; `rewards` is ordered group by group, `group` wide. A group of equal rewards gets
/// zeros, as with [`grpo`].
pub fn dr_grpo(rewards: &[f32], group: usize) -> Vec<f32> {
    subtract_group_mean(rewards, group)
}

/// Subtracts each group's mean reward (the Reinforce++-baseline first step).
pub fn subtract_group_mean(rewards: &[f32], group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group.max(1)) {
        let mean = g.iter().sum::<f32>() / g.len() as f32;
        out.extend(g.iter().map(|r| r - mean));
    }
    out
}

/// Reinforce++ token advantages for one batch.
///
/// `mask[i][t]` marks policy tokens of sample i; `kl[i][t]` is `log π_old − log π_ref` at
/// those positions (ignored when `beta == 0`). Returns per-token advantages, zero off-mask,
/// normalized to mean 0 / std 1 over all masked tokens of the batch.
pub fn reinforce_pp(
    rewards: &[f32],
    mask: &[Vec<u8>],
    kl: &[Vec<f32>],
    beta: f32,
) -> Vec<Vec<f32>> {
    let mut adv: Vec<Vec<f32>> = Vec::with_capacity(rewards.len());
    for (i, m) in mask.iter().enumerate() {
        let mut a = vec![0.0f32; m.len()];
        let last = m.iter().rposition(|&x| x == 1);
        let mut ret = 0.0f32;
        for t in (0..m.len()).rev() {
            if m[t] == 0 {
                continue;
            }
            let mut r = if beta != 0.0 { -beta * kl[i][t] } else { 0.0 };
            if Some(t) == last {
                r += rewards[i];
            }
            ret += r;
            a[t] = ret;
        }
        adv.push(a);
    }
    let vals: Vec<f32> = adv
        .iter()
        .zip(mask)
        .flat_map(|(a, m)| a.iter().zip(m).filter(|(_, &m)| m == 1).map(|(v, _)| *v))
        .collect();
    if vals.is_empty() {
        return adv;
    }
    let n = vals.len() as f32;
    let mean = vals.iter().sum::<f32>() / n;
    let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
    for (a, m) in adv.iter_mut().zip(mask) {
        for (v, &mm) in a.iter_mut().zip(m) {
            *v = if mm == 1 {
                (*v - mean) / (std + 1e-8)
            } else {
                0.0
            };
        }
    }
    adv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built forest: one question, tree 0 with leaves paid [1, 0, 0], tree 1 with
    /// [0, 2]. Worked by hand (sample std, ε = 1e-4):
    /// - inter: mean 0.6, std √(((0.4)² + 3 (0.6)² + (1.4)²) / 4) = √0.8;
    /// - intra, tree 0: mean 1/3, std √(((2/3)² + 2 (1/3)²) / 2) = √(1/3); tree 1: mean 1,
    ///   std √2.
    #[test]
    fn tree_advantage_is_intra_plus_inter_as_computed_by_hand() {
        let rewards = [1.0, 0.0, 2.0, 0.0, 0.0];
        let trees = [0, 0, 1, 1, 0];
        let inter = |r: f32| (r - 0.6) / (0.8f32.sqrt() + GRPO_EPS);
        let t0 = |r: f32| (r - 1.0 / 3.0) / ((1.0f32 / 3.0).sqrt() + GRPO_EPS);
        let t1 = |r: f32| (r - 1.0) / (2.0f32.sqrt() + GRPO_EPS);
        let want = [
            inter(1.0) + t0(1.0),
            inter(0.0) + t0(0.0),
            inter(2.0) + t1(2.0),
            inter(0.0) + t1(0.0),
            inter(0.0) + t0(0.0),
        ];
        let got = tree_grpo(&rewards, &trees, 5, GroupNorm::Grpo);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // Dr. GRPO: centred only. Leaf 2: (2 − 0.6) + (2 − 1) = 2.4.
        let dr = tree_grpo(&rewards, &trees, 5, GroupNorm::DrGrpo);
        assert!((dr[2] - 2.4).abs() < 1e-6, "{dr:?}");
        // Two questions are independent forests: the second question's leaves alone.
        let two = tree_grpo(&[1.0, 0.0, 5.0, 5.0], &[0, 1, 0, 1], 2, GroupNorm::DrGrpo);
        assert_eq!(two, vec![0.5, -0.5, 0.0, 0.0]);
        // A tree of one leaf has no intra-tree spread: its intra term is 0.
        let single = tree_grpo(&[1.0, 0.0], &[0, 1], 2, GroupNorm::Grpo);
        assert!((single[0] - grpo(&[1.0, 0.0], 2)[0]).abs() < 1e-6);
    }

    #[test]
    fn grpo_normalizes_within_groups() {
        let a = grpo(&[1.0, 0.0, 0.0, 1.0, 5.0, 5.0], 2);
        // group 1: mean .5, sample std .7071
        assert!((a[0] - 0.5 / (0.70710677 + GRPO_EPS)).abs() < 1e-5);
        assert!((a[0] + a[1]).abs() < 1e-6);
        assert!((a[2] + a[3]).abs() < 1e-6 && a[3] > 0.0);
        // identical rewards carry no signal
        assert_eq!(&a[4..], &[0.0, 0.0]);
    }

    #[test]
    fn dr_grpo_keeps_the_size_of_what_the_reward_paid() {
        // A group that differs by one extra gold title (+0.3) and one where a sample answered
        // right (+2.0): GRPO's std division gives both the same advantages; Dr. GRPO does not.
        let side = [0.3f32, 0.3, 0.3, 0.6];
        let answer = [0.3f32, 0.3, 0.3, 2.3];
        let (gs, ga) = (grpo(&side, 4), grpo(&answer, 4));
        for (x, y) in gs.iter().zip(&ga) {
            assert!((x - y).abs() < 1e-3, "GRPO: {gs:?} vs {ga:?}");
        }
        let (ds, da) = (dr_grpo(&side, 4), dr_grpo(&answer, 4));
        // A = R − mean: mean 0.375 → [−0.075 ×3, 0.225]; mean 0.8 → [−0.5 ×3, 1.5].
        for (got, want) in ds.iter().zip([-0.075f32, -0.075, -0.075, 0.225]) {
            assert!((got - want).abs() < 1e-6, "{ds:?}");
        }
        for (got, want) in da.iter().zip([-0.5f32, -0.5, -0.5, 1.5]) {
            assert!((got - want).abs() < 1e-6, "{da:?}");
        }
        assert!(da[3] / ds[3] > 6.0);
        // Groups stay independent, and equal rewards give zeros.
        assert_eq!(dr_grpo(&[1.0, 1.0, 0.0, 2.0], 2), vec![0.0, 0.0, -1.0, 1.0]);
        // The config spelling.
        let n: GroupNorm = serde_json::from_str(r#""dr_grpo""#).unwrap();
        assert_eq!(n, GroupNorm::DrGrpo);
        assert_eq!(n.as_str(), "dr_grpo");
    }

    #[test]
    fn baseline_subtracts_group_mean() {
        assert_eq!(
            subtract_group_mean(&[1.0, 3.0, 2.0, 2.0], 2),
            vec![-1.0, 1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn reinforce_pp_returns_then_normalizes() {
        // Sample 0: policy tokens at 1, 2 (token 3 inserted); sample 1: token 0 only.
        let mask = vec![vec![0, 1, 1, 0], vec![1, 0, 0, 0]];
        let kl = vec![vec![0.0, 0.5, 0.5, 9.0], vec![0.2, 0.0, 0.0, 0.0]];
        let adv = reinforce_pp(&[1.0, -1.0], &mask, &kl, 0.1);
        // raw returns: s0 t2 = 1 - .05 = .95, t1 = .95 - .05 = .9; s1 t0 = -1 - .02 = -1.02
        let raw = [0.9f32, 0.95, -1.02];
        let mean = raw.iter().sum::<f32>() / 3.0;
        let std = (raw.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0).sqrt();
        assert!((adv[0][1] - (0.9 - mean) / std).abs() < 1e-4);
        assert!((adv[0][2] - (0.95 - mean) / std).abs() < 1e-4);
        assert!((adv[1][0] - (-1.02 - mean) / std).abs() < 1e-4);
        assert_eq!(adv[0][0], 0.0);
        assert_eq!(adv[0][3], 0.0);
    }
}
