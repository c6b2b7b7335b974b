//! The rollout environment (DESIGN §3, after R1-Searcher, arXiv 2503.05592).
//!
//! The policy writes; when it closes a query with `<|end_of_query|>` the environment searches
//! and inserts `<|begin_of_documents|> … <|end_of_documents|>`, then generation resumes, for at
//! most [`RolloutConfig::max_searches`] searches per episode. An episode ends at `</answer>`
//! (finished), at end-of-sequence or the token budget (unfinished), at an empty query, or at a
//! search request past the budget (unfinished, prediction "I don't know.").
//!
//! [`protocol`] holds the tags and the text surgery (query extraction, document blocks);
//! [`prompt`] the configurable template with optional demonstrations; [`mod@rollout`] the batched
//! episode loop over [`crate::model::BatchGenerator`] and the [`Policy`] seam; [`tree`] tree
//! rollouts that branch at searches (Tree-GRPO); [`endpoint`] where a completions server is;
//! [`remote`] the
//! same loop against an OpenAI-compatible completions server. The environment owns no model state: it
//! drives a generator and a [`crate::search::Retriever`], so the same loop serves training,
//! evaluation and (later) the chat server.

pub mod endpoint;
pub mod prompt;
pub mod protocol;
pub mod remote;
pub mod rollout;
pub mod tree;

use std::sync::Arc;

pub use prompt::PromptConfig;
pub use rollout::{
    rollout, rollout_from, rollout_observed, Episode, EpisodeEnd, EpisodeStart, NodeSelect, Policy,
    RolloutConfig, RolloutEngine, RolloutMode, RolloutObserver, RolloutStats, SearchCall,
    TreeConfig,
};
pub use tree::{rollout_trees, Leaf};

/// The environment a policy acts in: the tokenizer that turns its text into tokens, the
/// retriever its queries search, the prompt template and the rollout settings. Built once from
/// a config (the binary's `cli::env_for`, the curriculum) and handed whole to training;
/// cloning it shares the retriever, so every phase of a curriculum searches one open index.
#[derive(Clone)]
pub struct Env {
    /// The policy's tokenizer.
    pub tokenizer: crate::model::Tokenizer,
    /// What `<|begin_of_query|> … <|end_of_query|>` searches.
    pub retriever: Arc<dyn crate::search::Retriever>,
    /// Prompt template.
    pub prompt: PromptConfig,
    /// Rollout settings (samples per question, token budget, searches, sampling).
    pub rollout: RolloutConfig,
}
