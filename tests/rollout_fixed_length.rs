//! `[rollout] fixed_length`: every episode samples exactly `max_new_tokens` tokens even from
//! a policy that wants to stop at once, and the default still stops at end-of-sequence.

mod common;

use sleuth::env::{rollout, EpisodeEnd, PromptConfig, RolloutConfig};
use sleuth::model::{DecodeCache, Decoder, Sampler};
use sleuth::search::{Hit, Retriever, SearchError};

/// A policy that puts all its mass on one token (end-of-sequence here), whatever it has seen.
struct AlwaysToken {
    vocab: usize,
    token: u32,
}

/// Counts tokens per row; holds no activations.
struct CountCache {
    capacity: usize,
    lens: Vec<usize>,
}

impl DecodeCache for CountCache {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn len(&self, row: usize) -> usize {
        self.lens[row]
    }
    fn fork_row(&mut self, src: usize, dst: &[usize]) {
        for &d in dst {
            self.lens[d] = self.lens[src];
        }
    }
}

impl AlwaysToken {
    fn logits(&self) -> Vec<f32> {
        let mut l = vec![-1e9; self.vocab];
        l[self.token as usize] = 0.0;
        l
    }
}

impl Decoder for AlwaysToken {
    type Cache = CountCache;
    fn new_cache(&self, rows: usize, capacity: usize) -> CountCache {
        CountCache {
            capacity,
            lens: vec![0; rows],
        }
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn prefill_row(&self, row: usize, tokens: &[u32], cache: &mut CountCache) -> Vec<f32> {
        cache.lens[row] += tokens.len();
        self.logits()
    }
    fn decode_step(&self, tokens: &[u32], active: &[bool], cache: &mut CountCache) -> Vec<f32> {
        let mut out = Vec::with_capacity(tokens.len() * self.vocab);
        for (r, &a) in active.iter().enumerate() {
            cache.lens[r] += usize::from(a);
            out.extend(self.logits());
        }
        out
    }
}

struct NoHits;
impl Retriever for NoHits {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(Vec::new())
    }
}

#[test]
fn fixed_length_samples_the_whole_budget_past_end_of_sequence() {
    let Some(tok) = common::default_tokenizer() else {
        return;
    };
    let eos = tok.eos_id().expect("the default model has an EOS token");
    let model = AlwaysToken {
        vocab: tok.vocab_size(),
        token: eos,
    };
    let questions = vec![
        "What is a cat?".to_string(),
        "Who wrote Hamlet?".to_string(),
    ];
    let run = |fixed_length: bool| {
        let cfg = RolloutConfig {
            samples_per_question: 3,
            max_new_tokens: 12,
            fixed_length,
            ..Default::default()
        };
        let mut sampler = Sampler::new(cfg.sampling(7));
        let (eps, stats) = rollout(
            &model,
            &sleuth::env::Env {
                tokenizer: tok.clone(),
                retriever: std::sync::Arc::new(NoHits),
                prompt: PromptConfig::default().clone(),
                rollout: cfg.clone(),
            },
            &questions,
            &mut sampler,
        )
        .unwrap();
        assert_eq!(eps.len(), 6);
        (eps, stats)
    };

    let (eps, stats) = run(false);
    assert!(eps
        .iter()
        .all(|e| e.end == EpisodeEnd::Eos && e.policy_tokens() == 1));
    assert_eq!(stats.sampled_tokens, 6);

    let (eps, stats) = run(true);
    for e in &eps {
        assert_eq!(e.end, EpisodeEnd::Length);
        assert_eq!(e.policy_tokens(), 12);
        assert!(e.tokens[e.prompt_len..].iter().all(|&t| t == eos));
        assert!(e.searches.is_empty());
    }
    assert_eq!(stats.sampled_tokens, 6 * 12);
}
