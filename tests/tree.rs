//! Tree rollouts (`[rollout] mode = "tree"`, Tree-GRPO): leaves are complete episodes that
//! extend their node, the chain environment replays them token for token, expansions from one
//! node prefill its prefix once, and the trainer runs a tree step end to end.

mod common;

use std::sync::{Arc, Mutex};

use sleuth::env::{
    rollout, rollout_from, rollout_trees, Env, EpisodeStart, PromptConfig, RolloutConfig,
};
use sleuth::env::{NodeSelect, TreeConfig};
use sleuth::model::{DecodeCache, Decoder, Sampler, Tokenizer};
use sleuth::search::{Hit, Retriever, SearchError};

/// Every row's full history (prefilled and decoded tokens) and what was prefilled when.
#[derive(Clone, Default)]
struct History {
    tokens: Vec<u32>,
    /// Tokens fed by decode steps since the last prefill.
    since_prefill: usize,
}

struct ScriptCache {
    capacity: usize,
    rows: Vec<History>,
    /// Token counts of every prefill call, in order.
    prefills: Arc<Mutex<Vec<usize>>>,
}

impl DecodeCache for ScriptCache {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn len(&self, row: usize) -> usize {
        self.rows[row].tokens.len()
    }
    fn fork_row(&mut self, src: usize, dst: &[usize]) {
        for &d in dst {
            self.rows[d] = self.rows[src].clone();
        }
    }
}

/// A policy that follows a script: in step `k` (after `k` queries) it writes one of
/// the step's alternatives, choosing uniformly among those that match what it wrote so far;
/// past every alternative it writes end-of-sequence.
struct ScriptPolicy {
    vocab: usize,
    eos: u32,
    steps: Vec<Vec<Vec<u32>>>,
    /// The alternatives that end in a query: each one written so far is one step done.
    queries: Vec<Vec<u32>>,
    prefills: Arc<Mutex<Vec<usize>>>,
}

impl ScriptPolicy {
    fn new(tok: &Tokenizer, steps: &[&[&str]]) -> Self {
        let enc = |s: &str| tok.encode(s, false).unwrap();
        Self {
            vocab: tok.vocab_size(),
            eos: tok.eos_id().unwrap(),
            steps: steps
                .iter()
                .map(|alts| alts.iter().map(|a| enc(a)).collect())
                .collect(),
            queries: steps
                .iter()
                .flat_map(|alts| alts.iter())
                .filter(|a| a.contains("<|begin_of_query|>"))
                .map(|a| enc(a))
                .collect(),
            prefills: Arc::default(),
        }
    }

    fn logits(&self, h: &History) -> Vec<f32> {
        let step: usize = self
            .queries
            .iter()
            .map(|q| h.tokens.windows(q.len()).filter(|w| w == q).count())
            .sum();
        let written = &h.tokens[h.tokens.len() - h.since_prefill..];
        let next: Vec<u32> = self
            .steps
            .get(step)
            .map(|alts| {
                alts.iter()
                    .filter(|a| a.len() > written.len() && a.starts_with(written))
                    .map(|a| a[written.len()])
                    .collect()
            })
            .unwrap_or_default();
        let mut l = vec![-1e9f32; self.vocab];
        if next.is_empty() {
            l[self.eos as usize] = 0.0;
        }
        for t in next {
            l[t as usize] = 0.0;
        }
        l
    }
}

impl Decoder for ScriptPolicy {
    type Cache = ScriptCache;
    fn new_cache(&self, rows: usize, capacity: usize) -> ScriptCache {
        ScriptCache {
            capacity,
            rows: vec![History::default(); rows],
            prefills: self.prefills.clone(),
        }
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut ScriptCache) -> Vec<f32> {
        cache.prefills.lock().unwrap().push(tokens.len());
        let h = &mut cache.rows[row];
        h.tokens.extend_from_slice(tokens);
        h.since_prefill = 0;
        self.logits(h)
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut ScriptCache) -> Vec<f32> {
        let mut out = Vec::with_capacity(tokens.len() * self.vocab);
        for (r, (&t, &a)) in tokens.iter().zip(active).enumerate() {
            let h = &mut cache.rows[r];
            if a {
                h.tokens.push(t);
                h.since_prefill += 1;
            }
            out.extend(self.logits(h));
        }
        out
    }
}

/// A policy that replays one recorded sequence: wherever the record has a sampled token it
/// puts all its mass there.
struct Replay {
    vocab: usize,
    tokens: Vec<u32>,
    mask: Vec<u8>,
}

impl Replay {
    fn logits(&self, pos: usize) -> Vec<f32> {
        let mut l = vec![-1e9f32; self.vocab];
        if let (Some(&t), Some(1)) = (self.tokens.get(pos), self.mask.get(pos)) {
            l[t as usize] = 0.0;
        } else {
            l[0] = 0.0;
        }
        l
    }
}

impl Decoder for Replay {
    type Cache = ScriptCache;
    fn new_cache(&self, rows: usize, capacity: usize) -> ScriptCache {
        ScriptCache {
            capacity,
            rows: vec![History::default(); rows],
            prefills: Arc::default(),
        }
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut ScriptCache) -> Vec<f32> {
        cache.rows[row].tokens.extend_from_slice(tokens);
        self.logits(cache.rows[row].tokens.len())
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut ScriptCache) -> Vec<f32> {
        let mut out = Vec::new();
        for (r, (&t, &a)) in tokens.iter().zip(active).enumerate() {
            if a {
                cache.rows[r].tokens.push(t);
            }
            out.extend(self.logits(cache.rows[r].tokens.len()));
        }
        out
    }
}

/// Every query finds one passage named after it.
struct Echo;
impl Retriever for Echo {
    fn search(&self, q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(vec![Hit {
            id: q.into(),
            title: q.into(),
            text: format!("{q} is a word."),
            score: 1.0,
        }])
    }
}

fn env(tok: &Tokenizer) -> Env {
    Env {
        tokenizer: tok.clone(),
        retriever: Arc::new(Echo),
        prompt: PromptConfig::default(),
        rollout: RolloutConfig {
            max_new_tokens: 96,
            context_tokens: 1024,
            top_k: 1,
            ..Default::default()
        },
    }
}

/// Step 0 searches one of two words; step 1 answers or searches again; step 2 answers.
fn policy(tok: &Tokenizer) -> ScriptPolicy {
    ScriptPolicy::new(
        tok,
        &[
            &[
                "<think> look </think> <|begin_of_query|> alpha <|end_of_query|>",
                "<think> look </think> <|begin_of_query|> beta <|end_of_query|>",
            ],
            &[
                "<answer> yes </answer>",
                "<answer> no </answer>",
                "<|begin_of_query|> gamma <|end_of_query|>",
            ],
            &["<answer> maybe </answer>"],
        ],
    )
}

#[test]
fn leaves_extend_their_node_and_replay_through_the_chain_environment() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let mut env = env(&tok);
    env.rollout.tree = TreeConfig {
        trees: 2,
        expansions: 2,
        expand_nodes: 2,
        ..Default::default()
    };
    let tree = env.rollout.tree.clone();
    let model = policy(&tok);
    let questions = vec!["Is it?".to_string(), "Was it?".to_string()];
    let mut sampler = Sampler::new(env.rollout.sampling(3));
    let (episodes, leaves, stats) = rollout_trees(&model, &env, &questions, &mut sampler).unwrap();
    let per_q = tree.leaves_per_question();
    assert_eq!(per_q, 2 * (1 + 2 * 2));
    assert_eq!(episodes.len(), questions.len() * per_q);
    assert_eq!(stats.nodes_expanded, questions.len() * 2 * 2 * 2);
    let mut branched = 0;
    for (i, (ep, leaf)) in episodes.iter().zip(&leaves).enumerate() {
        let q = i / per_q;
        assert_eq!(ep.question_index, q);
        assert_eq!(ep.tokens.len(), ep.mask.len());
        assert_eq!(ep.tokens.len(), ep.logprobs.len());
        assert!(ep.finished(), "{}", ep.solution);
        assert_eq!(ep.node_ends().len(), ep.searches.len());
        if let Some((p, k)) = leaf.branch {
            branched += 1;
            let parent = &episodes[q * per_q + p];
            assert_eq!(
                leaves[q * per_q + p].tree,
                leaf.tree,
                "a branch stays in its tree"
            );
            let node = EpisodeStart::at_node(parent, k);
            assert!(ep.tokens.starts_with(&node.row.tokens));
            assert!(ep.mask.starts_with(&node.row.mask));
            assert_eq!(
                &ep.logprobs[..node.row.tokens.len()],
                &node.row.logprobs[..]
            );
            let queries = |e: &sleuth::env::Episode| -> Vec<String> {
                e.searches.iter().map(|s| s.query.clone()).collect()
            };
            assert_eq!(queries(ep)[..k + 1], queries(parent)[..k + 1]);
            assert_eq!(leaf.own_from, k + 1);
        }
        // Replayed token by token through the chain environment, the leaf's sampled tokens
        // bring back the same documents at the same places: same tokens, same mask.
        let replay = Replay {
            vocab: tok.vocab_size(),
            tokens: ep.tokens.clone(),
            mask: ep.mask.clone(),
        };
        let chain = Env {
            rollout: RolloutConfig {
                samples_per_question: 1,
                ..env.rollout.clone()
            },
            ..env.clone()
        };
        let (again, _) = rollout(
            &replay,
            &chain,
            &questions[q..=q],
            &mut Sampler::new(chain.rollout.sampling(0)),
        )
        .unwrap();
        assert_eq!(again[0].tokens, ep.tokens, "leaf {i}");
        assert_eq!(again[0].mask, ep.mask, "leaf {i}");
        assert_eq!(again[0].end, ep.end);
    }
    assert!(branched > 0, "some expansion grew from a search node");
    assert!(stats.shared_prefix_tokens > 0);
}

/// `select = "searched"` never restarts from the root while a tree has a searched node (every
/// scripted chain searches, so every expansion branches); `uniform` on the same seed does.
#[test]
fn searched_selection_expands_only_searched_nodes() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let model = policy(&tok);
    let questions: Vec<String> = (0..4).map(|i| format!("Question {i}?")).collect();
    let mut roots = Vec::new();
    for select in [NodeSelect::Uniform, NodeSelect::Searched] {
        let mut env = env(&tok);
        env.rollout.tree = TreeConfig {
            trees: 2,
            expansions: 2,
            expand_nodes: 2,
            select,
        };
        let mut sampler = Sampler::new(env.rollout.sampling(5));
        let (_, leaves, stats) = rollout_trees(&model, &env, &questions, &mut sampler).unwrap();
        let per_q = env.rollout.tree.leaves_per_question();
        let expanded: Vec<_> = leaves
            .iter()
            .enumerate()
            .filter(|(i, _)| i % per_q >= 2)
            .collect();
        assert_eq!(expanded.len(), stats.nodes_expanded);
        roots.push(expanded.iter().filter(|(_, l)| l.branch.is_none()).count());
    }
    assert!(roots[0] > 0, "uniform picks include the root");
    assert_eq!(roots[1], 0, "searched picks never take the root here");
}

#[test]
fn expansions_from_one_node_prefill_its_prefix_once() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let env = env(&tok);
    let model = policy(&tok);
    let q = vec!["Is it?".to_string()];
    let one = Env {
        rollout: RolloutConfig {
            samples_per_question: 1,
            ..env.rollout.clone()
        },
        ..env.clone()
    };
    let mut sampler = Sampler::new(one.rollout.sampling(1));
    let (eps, _) = rollout(&model, &one, &q, &mut sampler).unwrap();
    let node = EpisodeStart::at_node(&eps[0], 0);
    assert!(node.row.tokens.len() > node.row.prompt_len && !node.searches.is_empty());
    model.prefills.lock().unwrap().clear();
    let starts = vec![node.clone(), node.clone(), node.clone()];
    let (out, stats) = rollout_from(&model, &env, &starts, &mut sampler).unwrap();
    assert_eq!(out.len(), 3);
    let prefills = model.prefills.lock().unwrap().clone();
    // One prefill of the whole node for three rows; any later prefill is a documents block.
    assert_eq!(prefills[0], node.row.tokens.len(), "{prefills:?}");
    assert!(prefills[1..]
        .iter()
        .all(|&n| n < node.row.tokens.len() - node.row.prompt_len));
    assert_eq!(stats.prefill_tokens, prefills.iter().sum::<usize>());
}
