//! Tree rollouts (Tree-GRPO: Ji et al. 2025, "Tree Search for LLM Agent Reinforcement
//! Learning", arXiv 2509.21240, §3.1): per question, `trees` (M) chains are sampled, then
//! `expansions` (L) rounds each pick `expand_nodes` (N) nodes per tree and sample a
//! continuation from each node's prefix to the end of the episode.
//!
//! **A node is one agent step.** The paper's node is a whole thought–action–observation
//! step; here that is the text up to and including the documents block one search inserted.
//! A leaf's nodes are the ends of its documents blocks ([`Episode::node_ends`]); the root is
//! the prompt itself, so a tree whose chains never searched can still grow (a root expansion
//! is a fresh chain). Nodes a leaf inherited from the leaf it branched from belong to that
//! leaf; each node is counted once per tree. Picks are uniform over a tree's nodes (the
//! paper's rule; `[rollout.tree] select = "searched"` leaves the root out while the tree has
//! another node), without replacement when the tree has at least N nodes, with it otherwise,
//! so every question gets `M × (1 + L × N)` leaves ([`super::TreeConfig::leaves_per_question`]).
//!
//! **The environment is the chain's.** An expansion is an ordinary episode that starts from
//! its node's tokens, mask, log-probs and searches instead of the prompt
//! ([`EpisodeStart::at_node`], [`rollout_from`]): the same search, document insertion,
//! `max_searches`, token budget (counted from the start of the episode), context limit and
//! stop strings apply, so every leaf is a complete episode whose tokens are exactly the tokens
//! fed to the policy, scored by the same reward as a chain.
//!
//! **Shared prefixes are prefilled once.** The starts of one round run as one batch; starts
//! from the same node have the same tokens, and the generator prefills identical prefixes once
//! and forks the KV cache row ([`crate::model::BatchGenerator`]); distinct nodes of one
//! question still share the prompt's prefill. The update scores every leaf as a full sequence
//! (its prompt shared, `[train] share_prompt`): leaves that share a node recompute that node's
//! tokens — correct, not yet the cheapest.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::rollout::{rollout_from, Episode, EpisodeStart, RolloutError, RolloutStats};
use super::Env;
use crate::model::{Decoder, Sampler};

/// Where a leaf sits in its question's forest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The tree (0..M) within the question.
    pub tree: usize,
    /// The node it grew from: `(leaf, node)` — a leaf of the same question (index in its
    /// leaves) and the index of that leaf's node ([`Episode::node_ends`]); `None` for the tree's
    /// first chain and for expansions from the root.
    pub branch: Option<(usize, usize)>,
    /// Index of this leaf's first own node (the nodes before it are the branch's).
    pub own_from: usize,
}

/// What a tree rollout did, besides the episodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeStats {
    /// Nodes expanded, over all questions and rounds (`questions × M × L × N`).
    pub nodes_expanded: usize,
    /// Tokens after the prompt that expansions started from instead of sampling them and
    /// searching again: Σ over expansions of the node's position − prompt length.
    pub shared_prefix_tokens: usize,
    /// Time and token counts of all rounds together.
    pub rollout: RolloutStats,
}

/// Runs tree rollouts for `questions` in `env`, shaped by `env.rollout.tree` (module docs):
/// returns every leaf as an
/// episode, question-major (each question's `leaves_per_question` leaves: its M first chains,
/// then each round's expansions, tree by tree), with its [`Leaf`] beside it.
///
/// # Errors
/// [`RolloutError`] when a prompt cannot be built or does not fit the context.
pub fn rollout_trees<M: Decoder + ?Sized>(
    model: &M,
    env: &Env,
    questions: &[String],
    sampler: &mut Sampler,
) -> Result<(Vec<Episode>, Vec<Leaf>, TreeStats), RolloutError> {
    let tree = &env.rollout.tree;
    let m = tree.trees.max(1);
    let n = tree.expand_nodes.max(1);
    let mut prompts = Vec::with_capacity(questions.len());
    for q in questions {
        prompts.push(env.prompt.encode(&env.tokenizer, q)?);
    }
    // Per question: its leaves so far, with their place in the forest.
    let mut forest: Vec<Vec<(Episode, Leaf)>> = questions.iter().map(|_| Vec::new()).collect();
    let mut stats = TreeStats::default();

    // Initialization: M independent chains per question.
    let starts: Vec<EpisodeStart> = prompts
        .iter()
        .enumerate()
        .flat_map(|(q, p)| (0..m).map(move |_| EpisodeStart::question(q, p.clone())))
        .collect();
    let (episodes, st) = rollout_from(model, env, &starts, sampler)?;
    stats.rollout += &st;
    for (i, ep) in episodes.into_iter().enumerate() {
        let leaf = Leaf {
            tree: i % m,
            branch: None,
            own_from: 0,
        };
        forest[ep.question_index].push((ep, leaf));
    }

    // Expansion rounds. Node picks draw on their own generator, seeded from the step's
    // sampler, so a resumed step picks the same nodes.
    let mut rng = StdRng::seed_from_u64(sampler.next_seed());
    for _ in 0..tree.expansions {
        let mut starts = Vec::new();
        let mut placed: Vec<(usize, Leaf)> = Vec::new();
        for (q, leaves) in forest.iter().enumerate() {
            for t in 0..m {
                let nodes = tree_nodes(leaves, t, &env.rollout);
                let picks: Vec<Option<(usize, usize)>> = if nodes.len() >= n {
                    nodes.choose_multiple(&mut rng, n).copied().collect()
                } else {
                    (0..n)
                        .filter_map(|_| nodes.choose(&mut rng).copied())
                        .collect()
                };
                for node in picks {
                    let start = match node {
                        None => EpisodeStart::question(q, prompts[q].clone()),
                        Some((i, k)) => {
                            let parent = &leaves[i].0;
                            EpisodeStart::at_node(parent, k)
                        }
                    };
                    stats.nodes_expanded += 1;
                    stats.shared_prefix_tokens += start.row.tokens.len() - start.row.prompt_len;
                    placed.push((
                        q,
                        Leaf {
                            tree: t,
                            branch: node,
                            own_from: node.map_or(0, |(_, k)| k + 1),
                        },
                    ));
                    starts.push(start);
                }
            }
        }
        let (episodes, st) = rollout_from(model, env, &starts, sampler)?;
        stats.rollout += &st;
        for (ep, (q, leaf)) in episodes.into_iter().zip(placed) {
            forest[q].push((ep, leaf));
        }
    }
    let (episodes, leaves) = forest.into_iter().flatten().unzip();
    Ok((episodes, leaves, stats))
}

/// The nodes of tree `t` among `leaves` that can still grow: the root (`None`) and each
/// leaf's own nodes `(leaf, k)` whose prefix leaves policy tokens to sample and context room.
fn tree_nodes(
    leaves: &[(Episode, Leaf)],
    t: usize,
    cfg: &super::RolloutConfig,
) -> Vec<Option<(usize, usize)>> {
    let mut nodes = vec![None];
    for (i, (ep, leaf)) in leaves.iter().enumerate() {
        if leaf.tree != t {
            continue;
        }
        for (k, &end) in ep.node_ends().iter().enumerate().skip(leaf.own_from) {
            let policy = ep.mask.iter().take(end).filter(|&&m| m == 1).count();
            if policy < cfg.max_new_tokens && end + 1 < cfg.context_tokens {
                nodes.push(Some((i, k)));
            }
        }
    }
    if cfg.tree.select == super::NodeSelect::Searched && nodes.len() > 1 {
        nodes.remove(0);
    }
    nodes
}
