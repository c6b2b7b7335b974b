//! The batched episode loop.
//!
//! All `questions × G` episodes share one [`BatchGenerator`]: every unfinished row decodes in
//! lock-step; rows that stopped at `<|end_of_query|>` are searched (one batched retriever call
//! per round), their documents inserted, and they rejoin the batch. The loop ends when no row
//! is waiting for documents.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::prompt::PromptError;
use super::protocol::{documents_block, extract_query, END_ANSWER, END_QUERY, NO_ANSWER};
use super::Env;
use crate::model::generate::{Row, RowStart};
use crate::model::{
    text_of, BatchGenerator, DecodeWeights, Decoder, Sampler, SamplingConfig, StopReason,
};
use crate::search::{Hit, SearchError};

/// Rollout settings (`[rollout]` in an env config). Defaults stated once, in `impl Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Samples per question (the GRPO group size G). Default 4.
    pub samples_per_question: usize,
    /// Policy tokens an episode may sample in total (excluding prompt and documents). Default 512.
    pub max_new_tokens: usize,
    /// Searches allowed per episode; one more request ends it unfinished. Default 8.
    pub max_searches: usize,
    /// Passages per search (top-k). Default 5.
    pub top_k: usize,
    /// Words kept per inserted passage; 0 keeps all. Default 0.
    pub doc_max_words: usize,
    /// Context capacity per row in tokens (prompt + generation + documents). Default 4096.
    pub context_tokens: usize,
    /// Sampling temperature. Default 1.0.
    pub temperature: f32,
    /// Nucleus mass. Default 1.0.
    pub top_p: f32,
    /// Top-k sampling cut-off; 0 disables. Default 0.
    pub top_k_sampling: usize,
    /// Weights generation decodes from: `q8_0` (the quantized CPU engine, default), `q4_1`,
    /// or `f32` (burn's forward pass, bit-for-bit the weights training scores with). Training
    /// re-quantizes after every optimizer step and logs the rollout/training log-prob gap
    /// (`logprob_mismatch`). Default `q8_0`.
    pub weights: DecodeWeights,
    /// Every episode samples exactly `max_new_tokens` policy tokens (fewer only when the
    /// context fills): end-of-sequence and the stop strings (`<|end_of_query|>`, `</answer>`)
    /// end nothing, so no search runs and every episode ends as [`EpisodeEnd::Length`]. For
    /// throughput benchmarks at a fixed token budget (the counterpart of Hugging Face's
    /// `min_new_tokens = max_new_tokens`), not for training runs. Local decoders only; a
    /// remote policy ignores it. Default false.
    pub fixed_length: bool,
    /// How RL samples a question's episodes: `chain` (`samples_per_question` independent
    /// episodes) or `tree` (trees that branch at searches, `[rollout.tree]`; training only:
    /// evaluation, collection and serving always run chains). Default `chain`.
    pub mode: RolloutMode,
    /// Tree-rollout settings (`[rollout.tree]`), read when `mode = "tree"`.
    pub tree: TreeConfig,
    /// Where RL samples its episodes: `local` (this process's decoding engine, `weights`) or
    /// `openai` (a served engine, `[rollout.openai]`, sampling in token ids with the LoRA
    /// adapter pushed after each update; needs `[train] lora` and chain rollouts;
    /// [`super::remote`]). Training only: `eval` and `collect` use `[model] backend`.
    /// Default `local`.
    pub engine: RolloutEngine,
    /// The server of `engine = "openai"`: an OpenAI-compatible completions endpoint with
    /// vLLM's runtime LoRA API (`[rollout.openai]`, the same fields as `[model.openai]`;
    /// its `model` is unused, every request names the pushed adapter).
    pub openai: super::endpoint::RemoteOptions,
}

impl RolloutConfig {
    /// Where RL's episodes come from, for progress lines: `rollouts decode q8_0` (the local
    /// engine and its weights) or `rollouts sampled by <endpoint> (LoRA adapters pushed after
    /// each update)`.
    pub fn engine_desc(&self) -> String {
        match self.engine {
            RolloutEngine::Local => format!("rollouts decode {}", self.weights.name()),
            RolloutEngine::Openai => format!(
                "rollouts sampled by {} (LoRA adapters pushed after each update)",
                self.openai.endpoint()
            ),
        }
    }

    /// How RL samples a question's group, for progress lines: `G=4` for chains,
    /// `2 trees × (1 + 1×1) = 4 leaves` for trees.
    pub fn group_desc(&self) -> String {
        match self.mode {
            RolloutMode::Chain => format!("G={}", self.samples_per_question),
            RolloutMode::Tree => {
                let t = &self.tree;
                format!(
                    "{} trees × (1 + {}×{}) = {} leaves",
                    t.trees,
                    t.expansions,
                    t.expand_nodes,
                    t.leaves_per_question()
                )
            }
        }
    }

    /// The sampler settings these rollouts use, with `seed`.
    pub fn sampling(&self, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k_sampling,
            seed,
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            samples_per_question: 4,
            max_new_tokens: 512,
            max_searches: 8,
            top_k: 5,
            doc_max_words: 0,
            context_tokens: 4096,
            temperature: 1.0,
            top_p: 1.0,
            top_k_sampling: 0,
            weights: DecodeWeights::default(),
            fixed_length: false,
            mode: RolloutMode::Chain,
            tree: TreeConfig::default(),
            engine: RolloutEngine::Local,
            openai: super::endpoint::RemoteOptions::default(),
        }
    }
}

/// How RL rollouts are sampled (`[rollout] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    /// `samples_per_question` independent episodes per question.
    #[default]
    Chain,
    /// Trees that branch at searches ([`TreeConfig`], module docs).
    Tree,
}

/// Where RL rollouts are sampled (`[rollout] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutEngine {
    /// This process's decoding engine ([`RolloutConfig::weights`]).
    #[default]
    Local,
    /// An OpenAI-compatible completions server ([`super::remote`], "Exact tokens").
    Openai,
}

/// How an expansion round picks the nodes it grows from (`[rollout.tree] select`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSelect {
    /// Every node of the tree equally likely, the root (a fresh chain) included: Tree-GRPO's
    /// rule.
    #[default]
    Uniform,
    /// Only nodes that end in a search's documents, equally likely; the root only while the
    /// tree has no other node. Every expansion then shares a searched prefix with its
    /// parent, so the tokens spent buy branches rather than new chains.
    Searched,
}

/// Tree-rollout settings (`[rollout.tree]`; used when `[rollout] mode = "tree"`). Defaults
/// stated once, here: two trees of one expansion each, four leaves per question at about the
/// token cost of three chains, sized for a two-core CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TreeConfig {
    /// Trees per question (M), each started from an independent chain. Default 2.
    pub trees: usize,
    /// Expansion rounds (L). Default 1.
    pub expansions: usize,
    /// Nodes expanded per tree and round (N). Default 1.
    pub expand_nodes: usize,
    /// Which nodes a round picks (`uniform` or `searched`). Default `uniform`.
    pub select: NodeSelect,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            trees: 2,
            expansions: 1,
            expand_nodes: 1,
            select: NodeSelect::Uniform,
        }
    }
}

impl TreeConfig {
    /// Leaves each question gets: `M × (1 + L × N)`.
    pub fn leaves_per_question(&self) -> usize {
        self.trees.max(1) * (1 + self.expansions * self.expand_nodes.max(1))
    }
}

/// One search the environment ran for an episode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchCall {
    /// The cleaned query.
    pub query: String,
    /// Rendered passages returned (`"title" text`), best first.
    pub documents: Vec<String>,
    /// The titles of those passages, same order (the step-level retrieval reward compares
    /// them with gold support titles).
    #[serde(default)]
    pub titles: Vec<String>,
    /// Error text when the backend failed (the documents block then says `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SearchCall {
    /// The record of one search for `query` and the documents block it inserts
    /// ([`documents_block`], `max_words` per passage): the hits of `result`, or none and the
    /// error text when the backend failed (the block then says `None`).
    pub fn from_result(
        query: String,
        result: Result<Vec<Hit>, SearchError>,
        max_words: usize,
    ) -> (Self, String) {
        let (hits, error) = match result {
            Ok(h) => (h, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let block = documents_block(&hits, max_words);
        let call = SearchCall {
            query,
            documents: hits.iter().map(|h| h.render()).collect(),
            titles: hits.iter().map(|h| h.title.clone()).collect(),
            error,
        };
        (call, block)
    }
}

/// What a segment that stopped at `<|end_of_query|>` asks for, after `searches_done`
/// searches: a search, or the end of the episode — an empty query, or a query past
/// `max_searches` (then answered "I don't know.").
pub(crate) enum QueryTurn {
    /// Search for this cleaned query.
    Search(String),
    /// End the episode this way, with this forced prediction.
    End(EpisodeEnd, Option<String>),
}

/// Classifies a query turn; see [`QueryTurn`]. One rule for the local and the remote loop.
pub(crate) fn query_turn(segment: &str, searches_done: usize, max_searches: usize) -> QueryTurn {
    match extract_query(segment) {
        None => QueryTurn::End(EpisodeEnd::EmptyQuery, None),
        Some(_) if searches_done >= max_searches => {
            QueryTurn::End(EpisodeEnd::SearchBudget, Some(NO_ANSWER.to_string()))
        }
        Some(q) => QueryTurn::Search(q),
    }
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeEnd {
    /// The policy closed `</answer>`.
    Answered,
    /// The policy emitted end-of-sequence without an answer.
    Eos,
    /// The token budget or context ran out.
    Length,
    /// The policy closed an empty query.
    EmptyQuery,
    /// The policy asked for more searches than allowed.
    SearchBudget,
}

/// One finished episode: the trajectory and what happened in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episode {
    /// Index of the question in the batch.
    pub question_index: usize,
    /// Token ids: prompt, then policy and inserted tokens.
    pub tokens: Vec<u32>,
    /// 1 on policy-sampled tokens, 0 on prompt and inserted tokens; same length as `tokens`.
    pub mask: Vec<u8>,
    /// Log-probability of each sampled token under the rollout's sampling distribution (the
    /// decoding engine's logits), 0 on mask-0 tokens; same length as `tokens`. Empty in
    /// episodes read from files written before it existed.
    #[serde(default)]
    pub logprobs: Vec<f32>,
    /// Number of prompt tokens.
    pub prompt_len: usize,
    /// The solution text: everything after the prompt (policy text and documents).
    pub solution: String,
    /// The searches run, in order.
    pub searches: Vec<SearchCall>,
    /// How the episode ended.
    pub end: EpisodeEnd,
    /// Forced prediction (`"I don't know."` on a search-budget overrun); otherwise `None`
    /// and the prediction is read from the solution's `<answer>`.
    pub forced_prediction: Option<String>,
    /// The token ids were re-encoded locally from text a remote policy wrote
    /// ([`super::remote`]), not the ids it sampled, and `logprobs` is empty: fine for
    /// evaluation and supervised fine-tuning, not for a policy-gradient update.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retokenized: bool,
    /// The served model or adapter that sampled the episode (`[rollout] engine = "openai"`,
    /// e.g. `sleuth-step-3`: the weights after optimizer step 3); `None` for local rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_by: Option<String>,
}

impl Episode {
    /// Policy-sampled tokens in the episode.
    pub fn policy_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }

    /// Whether the policy closed `</answer>`.
    pub fn finished(&self) -> bool {
        self.end == EpisodeEnd::Answered
    }

    /// Token positions right after each inserted documents block, in order: where one agent
    /// step (reasoning, query, documents) ends and the next begins — the nodes a tree rollout
    /// can branch from ([`super::tree`]). Entry `k` follows search `k`. Documents blocks are
    /// the only mask-0 tokens after the prompt, so these are the ends of the mask-0 runs there.
    pub fn node_ends(&self) -> Vec<usize> {
        let after = self.mask.get(self.prompt_len..).unwrap_or_default();
        let mut ends = Vec::new();
        for (j, w) in after.iter().enumerate() {
            let next = after.get(j + 1);
            if *w == 0 && next.is_none_or(|&m| m == 1) {
                ends.push(self.prompt_len + j + 1);
            }
        }
        ends.truncate(self.searches.len());
        ends
    }
}

/// Where an episode starts: a question's prompt, or a node of an earlier episode (a tree
/// rollout's expansion, [`super::tree`]), whose tokens, mask, log-probs and searches it keeps.
#[derive(Debug, Clone)]
pub struct EpisodeStart {
    /// Index of the question in the batch (copied to [`Episode::question_index`]).
    pub question_index: usize,
    /// What the generator row starts from: the prompt, then any earlier steps, with their
    /// mask and rollout log-probs.
    pub row: RowStart,
    /// Searches already run (they count against `max_searches`).
    pub searches: Vec<SearchCall>,
}

impl EpisodeStart {
    /// A fresh episode of question `question_index` from its encoded prompt.
    pub fn question(question_index: usize, prompt: Vec<u32>) -> Self {
        Self {
            question_index,
            row: RowStart::prompt(prompt),
            searches: Vec::new(),
        }
    }

    /// The state of `episode` at its node `k` ([`Episode::node_ends`]): everything up to and
    /// including the documents of search `k`. A `k` past the last node starts at the last.
    pub fn at_node(episode: &Episode, k: usize) -> Self {
        let ends = episode.node_ends();
        let end = ends
            .get(k)
            .or(ends.last())
            .copied()
            .unwrap_or(episode.prompt_len)
            .min(episode.tokens.len());
        let searches = k.min(ends.len().saturating_sub(1)) + usize::from(!ends.is_empty());
        let mut logprobs = episode.logprobs.get(..end).unwrap_or_default().to_vec();
        logprobs.resize(end, 0.0);
        Self {
            question_index: episode.question_index,
            row: RowStart {
                tokens: episode.tokens.get(..end).unwrap_or_default().to_vec(),
                mask: episode.mask.get(..end).unwrap_or_default().to_vec(),
                logprobs,
                prompt_len: episode.prompt_len,
            },
            searches: episode.searches.iter().take(searches).cloned().collect(),
        }
    }
}

/// Wall-clock split of a rollout, for the per-phase metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RolloutStats {
    /// Seconds in prefill and decode (model time).
    pub seconds_generate: f64,
    /// Seconds in the retriever.
    pub seconds_search: f64,
    /// Policy tokens sampled.
    pub sampled_tokens: usize,
    /// Tokens prefilled (prompts and documents).
    pub prefill_tokens: usize,
    /// Seconds of `seconds_generate` spent prefilling (the rest is decode steps).
    pub seconds_prefill: f64,
    /// Seconds of the whole rollout.
    pub seconds_total: f64,
}

impl std::ops::AddAssign<&RolloutStats> for RolloutStats {
    /// Sums two rollouts' counts and times (e.g. the rounds of one step).
    fn add_assign(&mut self, s: &RolloutStats) {
        self.seconds_generate += s.seconds_generate;
        self.seconds_search += s.seconds_search;
        self.sampled_tokens += s.sampled_tokens;
        self.prefill_tokens += s.prefill_tokens;
        self.seconds_prefill += s.seconds_prefill;
        self.seconds_total += s.seconds_total;
    }
}

/// Errors that abort a rollout (model or prompt failures; search failures do not abort, they
/// become a `None` document block and an error note in the episode).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The prompt could not be built.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The model failed (e.g. a prompt longer than the context).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A remote policy's server failed (a [`super::remote::RemoteError`], boxed so that this
    /// loop does not depend on the remote module).
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync>),
}

/// Where episodes come from: the seam between the environment and a policy.
///
/// Every local [`Decoder`] (burn's f32 forward, the quantized engine) is a policy through
/// [`rollout`], batched in lock-step; a [`super::remote::RemotePolicy`] samples from an
/// OpenAI-compatible completions server. Evaluation and `collect` take any policy; training
/// needs a local one (it re-quantizes the weights it updates, and scores sampled ids).
pub trait Policy {
    /// Runs `env.rollout.samples_per_question` episodes for each question in `env`;
    /// episodes ordered question-major, with the timing split. `sampler` supplies the
    /// randomness.
    ///
    /// # Errors
    /// [`RolloutError`] when a prompt cannot be built or does not fit, or the policy failed.
    fn rollout(
        &self,
        env: &Env,
        questions: &[String],
        sampler: &mut Sampler,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError>;
}

impl<M: Decoder + ?Sized> Policy for M {
    fn rollout(
        &self,
        env: &Env,
        questions: &[String],
        sampler: &mut Sampler,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        rollout(self, env, questions, sampler)
    }
}

/// Watches a rollout as it runs (the chat server streams from it). Every method has a no-op
/// default; rows are numbered as in the returned episodes (question-major).
pub trait RolloutObserver {
    /// A policy token was sampled for `row`; `text` is the bytes it added to the row's text
    /// (cut at a stop string; empty for end-of-sequence). [`ControlFlow::Break`] stops the row
    /// (it ends as [`EpisodeEnd::Length`]), e.g. when its client went away.
    fn on_token(&mut self, row: usize, id: u32, text: &[u8]) -> ControlFlow<()> {
        let _ = (row, id, text);
        ControlFlow::Continue(())
    }

    /// A search ran for `row`; `inserted` is the documents block fed back to the policy.
    fn on_search(&mut self, row: usize, call: &SearchCall, inserted: &str) {
        let _ = (row, call, inserted);
    }
}

/// The observer that watches nothing.
struct NoObserver;
impl RolloutObserver for NoObserver {}

/// Runs `env.rollout.samples_per_question` episodes for each question, all batched together:
/// `model` writes, `env.retriever` answers its queries, `env.prompt` frames each question.
///
/// `model` is any [`Decoder`]; callers build the one `cfg.weights` names once with
/// [`crate::model::Engine::new`] and reuse it across calls (quantizing costs a pass over the
/// weights).
///
/// Returns episodes ordered question-major (`question 0 sample 0..G`, `question 1 …`) and
/// the timing split. `sampler` supplies the randomness (seed it for reproducible rollouts).
///
/// # Errors
/// [`RolloutError`] when a prompt cannot be built or does not fit the context.
pub fn rollout<M: Decoder + ?Sized>(
    model: &M,
    env: &Env,
    questions: &[String],
    sampler: &mut Sampler,
) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
    rollout_observed(model, env, questions, sampler, &mut NoObserver)
}

/// An episode's state beside its generator row in [`rollout_observed`].
#[derive(Default)]
struct RowState {
    searches: Vec<SearchCall>,
    end: Option<EpisodeEnd>,
    forced: Option<String>,
}

/// [`rollout`] with an observer that sees each token and each search as it happens and may
/// stop rows early.
///
/// # Errors
/// As [`rollout`].
pub fn rollout_observed<M: Decoder + ?Sized>(
    model: &M,
    env: &Env,
    questions: &[String],
    sampler: &mut Sampler,
    observer: &mut dyn RolloutObserver,
) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
    let g = env.rollout.samples_per_question.max(1);
    let mut starts = Vec::with_capacity(questions.len() * g);
    for (q, text) in questions.iter().enumerate() {
        let ids = env.prompt.encode(&env.tokenizer, text)?;
        starts.extend(std::iter::repeat_n(EpisodeStart::question(q, ids), g));
    }
    rollout_from_observed(model, env, &starts, sampler, observer)
}

/// Runs one episode from each of `starts` (a prompt, or an earlier episode's node), all
/// batched together; episodes come back in the order of `starts`. Identical starts are
/// prefilled once and forked. Otherwise as [`rollout`].
///
/// # Errors
/// As [`rollout`].
pub fn rollout_from<M: Decoder + ?Sized>(
    model: &M,
    env: &Env,
    starts: &[EpisodeStart],
    sampler: &mut Sampler,
) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
    rollout_from_observed(model, env, starts, sampler, &mut NoObserver)
}

/// The episode loop under [`rollout_observed`] and [`rollout_from`].
fn rollout_from_observed<M: Decoder + ?Sized>(
    model: &M,
    env: &Env,
    starts: &[EpisodeStart],
    sampler: &mut Sampler,
    observer: &mut dyn RolloutObserver,
) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
    let (tokenizer, retriever, cfg) = (&env.tokenizer, env.retriever.as_ref(), &env.rollout);
    let _span = tracing::info_span!("rollout", episodes = starts.len()).entered();
    let t_start = Instant::now();
    let (stops, eos) = if cfg.fixed_length {
        (Vec::new(), Vec::new())
    } else {
        let mut eos: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        if let Some(id) = tokenizer.token_to_id("<|endoftext|>") {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        (vec![END_QUERY.to_string(), END_ANSWER.to_string()], eos)
    };
    let rows: Vec<RowStart> = starts.iter().map(|s| s.row.clone()).collect();
    let mut gen =
        BatchGenerator::from_starts(model, tokenizer, rows, cfg.context_tokens, (stops, eos))?;
    let n = starts.len();
    let budget = vec![cfg.max_new_tokens; n];
    // One entry per generator row, in the same order.
    let mut state: Vec<RowState> = starts
        .iter()
        .map(|s| RowState {
            searches: s.searches.clone(),
            ..RowState::default()
        })
        .collect();
    let mut seconds_search = 0.0;
    loop {
        gen.generate_with(sampler, &budget, |r, id, text| {
            observer.on_token(r, id, text)
        });
        // Rows waiting for documents this round: (row, query).
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (r, (row, st)) in gen.rows().iter().zip(state.iter_mut()).enumerate() {
            if st.end.is_some() {
                continue;
            }
            match row.stop {
                Some(StopReason::Stop(0)) => {
                    match query_turn(&row.segment_text(), st.searches.len(), cfg.max_searches) {
                        QueryTurn::Search(q) => wanted.push((r, q)),
                        QueryTurn::End(end, prediction) => {
                            st.end = Some(end);
                            st.forced = prediction;
                        }
                    }
                }
                Some(StopReason::Stop(_)) => st.end = Some(EpisodeEnd::Answered),
                Some(StopReason::Eos) => st.end = Some(EpisodeEnd::Eos),
                Some(StopReason::Length) | Some(StopReason::Capacity) | None => {
                    st.end = Some(EpisodeEnd::Length)
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        let t0 = Instant::now();
        let queries: Vec<&str> = wanted.iter().map(|(_, q)| q.as_str()).collect();
        let results = {
            let _s = tracing::debug_span!("search", n = queries.len()).entered();
            match retriever.search_batch(&queries, cfg.top_k) {
                Ok(r) => r.into_iter().map(Ok).collect::<Vec<_>>(),
                // One failing query must not sink the others: retry one by one.
                Err(_) => queries
                    .iter()
                    .map(|q| retriever.search(q, cfg.top_k))
                    .collect(),
            }
        };
        seconds_search += t0.elapsed().as_secs_f64();
        for ((r, query), result) in wanted.into_iter().zip(results) {
            // `r` came from enumerating the rows zipped with `state` above.
            let (Some(row), Some(st)) = (gen.rows().get(r), state.get_mut(r)) else {
                continue;
            };
            let (call, block) = SearchCall::from_result(query, result, cfg.doc_max_words);
            // The token that closed the query may have written the block's first bytes
            // (`|>\n`): insert only the rest, so the text is the block exactly once.
            let inserted = std::str::from_utf8(&row.overshoot)
                .ok()
                .and_then(|o| block.strip_prefix(o))
                .unwrap_or(&block)
                .to_string();
            let ids = tokenizer
                .encode(&inserted, false)
                .map_err(crate::model::ModelError::from)?;
            if gen.resume(r, &ids).is_err() {
                // The documents do not fit the context: the episode ends without them (its
                // trajectory holds none of their tokens, so no reward pays for a block the
                // policy never saw).
                st.end = Some(EpisodeEnd::Length);
                continue;
            }
            observer.on_search(r, &call, &inserted);
            st.searches.push(call);
        }
    }
    let stats = gen.stats();
    let rows: Vec<Row> = gen.into_rows();
    let episodes = rows
        .into_iter()
        .zip(state)
        .zip(starts)
        .map(|((row, st), start)| {
            let solution = text_of(
                tokenizer,
                row.tokens.get(row.prompt_len..).unwrap_or_default(),
            );
            Episode {
                question_index: start.question_index,
                solution,
                prompt_len: row.prompt_len,
                tokens: row.tokens,
                mask: row.mask,
                logprobs: row.logprobs,
                searches: st.searches,
                end: st.end.unwrap_or(EpisodeEnd::Length),
                forced_prediction: st.forced,
                retokenized: false,
                sampled_by: None,
            }
        })
        .collect();
    let total = t_start.elapsed().as_secs_f64();
    Ok((
        episodes,
        RolloutStats {
            seconds_generate: stats.decode_seconds + stats.prefill_seconds,
            seconds_search,
            sampled_tokens: stats.sampled_tokens,
            prefill_tokens: stats.prefill_tokens,
            seconds_prefill: stats.prefill_seconds,
            seconds_total: total,
        },
    ))
}
