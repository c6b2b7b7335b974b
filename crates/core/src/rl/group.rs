//! The group sampler: draws a step's questions, rolls each out `G` times, pays every episode,
//! and keeps the groups worth training on.
//!
//! **Informative groups.** A GRPO group whose G rewards are equal has zero advantage. With
//! `dynamic_sampling` (DAPO, Yu et al. 2025, arXiv 2503.14476) the sampler keeps drawing
//! questions until it holds `questions_per_step` groups whose rewards differ, for at most
//! `max_resample` extra rounds; `groups_sampled` / `groups_kept` report it. Every question's
//! pass rate is tracked in the checkpointed [`TrainState`]; with `retire_after` a question
//! that is always or never solved after that many groups stops being drawn.
//!
//! **Chains or trees.** With `[rollout] mode = "tree"` a question's group is the leaves of its
//! trees ([`crate::env::tree`]): `M × (1 + L × N)` episodes, each with its tree, so the
//! advantages can be tree-relative ([`super::advantage::tree_grpo`]); a group whose leaves all
//! tie is as uninformative as a chain group that ties and is redrawn the same way.

use std::time::Instant;

use super::checkpoint::{PassRecord, TrainState};
use super::metrics::TreeMetrics;
use super::{TrainConfig, TrainError};
use crate::env::{rollout, rollout_trees, Env, Episode, Policy, RolloutMode, RolloutStats};
use crate::model::{Decoder, Sampler};
use crate::reward::{normalize_answer, Paid, Rewards};

/// A training question with its gold answers and, when the data has them, its gold support
/// titles (HotpotQA `support_titles`) and type (`bridge` / `comparison`).
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// Question text.
    pub question: String,
    /// Acceptable answers.
    pub answers: Vec<String>,
    /// Gold support-paragraph titles; empty when unknown. Used by the step-level retrieval
    /// reward and by multi-hop scripted episodes.
    pub support_titles: Vec<String>,
    /// HotpotQA question type when known (`bridge`, `comparison`).
    pub kind: Option<String>,
}

impl From<crate::qa::QaExample> for Question {
    fn from(q: crate::qa::QaExample) -> Self {
        Self {
            question: q.question,
            answers: q.answers,
            support_titles: q.support_titles,
            kind: q.kind,
        }
    }
}

/// One sampled episode with its pay.
pub(super) struct Sampled {
    pub episode: Episode,
    pub paid: Paid,
    /// Its tree within the question's forest (tree rollouts; 0 for chains).
    pub tree: usize,
}

/// Time and token counts of a step's rollout rounds, summed.
#[derive(Debug, Default)]
pub(super) struct RolloutTotals {
    /// Wall time of the rollout calls, seconds.
    pub seconds_rollout: f64,
    /// Wall time of reward scoring, seconds.
    pub seconds_reward: f64,
    /// The rollouts' own counts and times, summed over rounds.
    pub rollout: RolloutStats,
}

/// What a step's rollouts produced.
pub(super) struct Groups {
    /// Every episode sampled this step, group by group.
    pub sampled: Vec<Sampled>,
    /// Indices into `sampled` of the episodes to train on: whole groups, in order.
    pub kept: Vec<usize>,
    pub groups_sampled: usize,
    pub groups_kept: usize,
    pub totals: RolloutTotals,
    /// Tree rollouts' figures (`None` for chains).
    pub tree: Option<TreeMetrics>,
    /// Mean distinct predicted answers per group.
    pub distinct_answers: f64,
}

/// What samples a step's episodes: the local decoding engine (chains or trees) or a served
/// one ([`super::served`]; chains only).
pub(super) enum Sampling<'a, M: ?Sized> {
    /// This process's decoder.
    Local(&'a M),
    /// A served engine under the adapter it samples with.
    Served(&'a dyn Policy),
}

// By hand: a derive would ask `M: Copy` of the decoder behind the reference.
impl<M: ?Sized> Clone for Sampling<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: ?Sized> Copy for Sampling<'_, M> {}

/// Draws and scores groups for one step (module docs).
pub(super) struct GroupSampler<'a> {
    pub env: &'a Env,
    pub rewards: &'a Rewards,
    pub cfg: &'a TrainConfig,
    pub data: &'a [Question],
}

impl GroupSampler<'_> {
    /// Samples step `step`'s groups with `engine`, drawing questions from `state`'s order and
    /// recording each group's outcome there.
    ///
    /// # Errors
    /// [`TrainError::Rollout`] when generation fails; [`TrainError::Sampling`] for tree
    /// rollouts asked of a served engine.
    pub fn sample<M: Decoder + ?Sized>(
        &self,
        engine: Sampling<'_, M>,
        sampler: &mut Sampler,
        state: &mut TrainState,
        step: usize,
    ) -> Result<Groups, TrainError> {
        let qps = self.cfg.questions_per_step.max(1);
        let mut out = Groups {
            sampled: Vec::new(),
            kept: Vec::new(),
            groups_sampled: 0,
            groups_kept: 0,
            totals: RolloutTotals::default(),
            tree: None,
            distinct_answers: 0.0,
        };
        let tree_mode = self.env.rollout.mode == RolloutMode::Tree;
        let mut rounds = 0usize;
        loop {
            let need = if self.cfg.dynamic_sampling {
                qps - out.groups_kept
            } else {
                qps
            };
            let qidx = self.next_question_indices(state, need);
            if qidx.is_empty() {
                break;
            }
            let t0 = Instant::now();
            let texts: Vec<String> = qidx
                .iter()
                .map(|&i| self.data[i].question.clone())
                .collect();
            let (episodes, trees, rstats) = if tree_mode {
                let Sampling::Local(engine) = engine else {
                    return Err(TrainError::Sampling {
                        reason: "[rollout] mode = \"tree\" runs on the local engine only \
                                 (engine = \"openai\" samples chains)"
                            .into(),
                    });
                };
                let (eps, leaves, ts) = rollout_trees(engine, self.env, &texts, sampler)?;
                let tm = out.tree.get_or_insert_with(TreeMetrics::default);
                tm.tree_trees += texts.len() * self.env.rollout.tree.trees.max(1);
                tm.tree_leaves += eps.len();
                tm.tree_nodes_expanded += ts.nodes_expanded;
                tm.tree_shared_prefix_tokens += ts.shared_prefix_tokens;
                let trees: Vec<usize> = leaves.iter().map(|l| l.tree).collect();
                (eps, trees, ts.rollout)
            } else {
                let (eps, st) = match engine {
                    Sampling::Local(engine) => rollout(engine, self.env, &texts, sampler)?,
                    Sampling::Served(policy) => policy.rollout(self.env, &texts, sampler)?,
                };
                let n = eps.len();
                (eps, vec![0; n], st)
            };
            out.totals.seconds_rollout += t0.elapsed().as_secs_f64();
            out.totals.rollout += &rstats;

            let t0 = Instant::now();
            let mut by_group: Vec<Vec<Sampled>> = (0..qidx.len()).map(|_| Vec::new()).collect();
            for (e, tree) in episodes.into_iter().zip(trees) {
                let q = &self.data[qidx[e.question_index]];
                let titles: Vec<Vec<String>> =
                    e.searches.iter().map(|c| c.titles.clone()).collect();
                let paid = self
                    .rewards
                    .score(&e.solution, &titles, &q.answers, &q.support_titles);
                by_group[e.question_index].push(Sampled {
                    episode: e,
                    paid,
                    tree,
                });
            }
            out.totals.seconds_reward += t0.elapsed().as_secs_f64();
            for (j, group) in by_group.into_iter().enumerate() {
                out.groups_sampled += 1;
                out.distinct_answers += distinct_answers(&group) as f64;
                let solved = group
                    .iter()
                    .filter(|s| s.paid.rule.metrics.cover_em)
                    .count();
                self.record_group(state, qidx[j], group.len(), solved, step);
                let informative = group.iter().any(|s| s.paid.total != group[0].paid.total);
                let keep = !self.cfg.dynamic_sampling || (informative && out.groups_kept < qps);
                let first = out.sampled.len();
                out.sampled.extend(group);
                if keep {
                    out.groups_kept += 1;
                    out.kept.extend(first..out.sampled.len());
                }
            }
            if !self.cfg.dynamic_sampling
                || out.groups_kept >= qps
                || rounds >= self.cfg.max_resample
            {
                break;
            }
            rounds += 1;
        }
        out.distinct_answers /= out.groups_sampled.max(1) as f64;
        Ok(out)
    }

    /// The indices of the next `n` questions that are not retired, advancing the data
    /// position (retired questions are skipped; at most two passes over the data are read).
    fn next_question_indices(&self, state: &mut TrainState, n: usize) -> Vec<usize> {
        let len = self.data.len();
        let mut out = Vec::with_capacity(n);
        let mut reads = 0;
        while out.len() < n && reads < 2 * len.max(1) {
            reads += 1;
            let i = state.next_indices(len, 1)[0];
            if !state.pass.get(i).is_some_and(|p| p.retired) {
                out.push(i);
            }
        }
        out
    }

    /// Records a group's outcome for question `qi`; retires the question when it has been
    /// drawn `retire_after` groups and is always or never solved, unless that would leave fewer
    /// than `questions_per_step` active questions.
    fn record_group(
        &self,
        state: &mut TrainState,
        qi: usize,
        samples: usize,
        solved: usize,
        step: usize,
    ) {
        if state.pass.len() < self.data.len() {
            state.pass.resize(self.data.len(), PassRecord::default());
        }
        let active = self.data.len() - retired(state);
        let k = self.cfg.retire_after;
        let rec = &mut state.pass[qi];
        rec.groups += 1;
        rec.samples += samples;
        rec.solved += solved;
        if k > 0
            && !rec.retired
            && rec.groups >= k
            && (rec.solved == 0 || rec.solved == rec.samples)
            && active > self.cfg.questions_per_step.max(1)
        {
            rec.retired = true;
            tracing::info!(
                step,
                question = qi,
                groups = rec.groups,
                pass_rate = rec.pass_rate(),
                text = %self.data[qi].question,
                "question retired: {} after {} groups",
                if rec.solved == 0 { "never solved" } else { "always solved" },
                rec.groups
            );
        }
    }
}

/// Distinct predicted answers (normalized; no answer counts as one value) in a question's
/// group.
fn distinct_answers(group: &[Sampled]) -> usize {
    let mut seen: Vec<String> = Vec::new();
    for s in group {
        let pred = normalize_answer(s.paid.rule.prediction.as_deref().unwrap_or_default());
        if !seen.contains(&pred) {
            seen.push(pred);
        }
    }
    seen.len()
}

/// Questions retired so far in `state`.
pub(super) fn retired(state: &TrainState) -> usize {
    state.pass.iter().filter(|p| p.retired).count()
}
