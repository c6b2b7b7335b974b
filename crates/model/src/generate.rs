//! Batched, resumable generation with stop strings: the engine under the rollout loop.
//!
//! A [`BatchGenerator`] holds `rows` sequences in one KV cache. [`BatchGenerator::generate`]
//! samples every unfinished row in lock-step (one batched decode step per token) until each
//! row hits a stop string, an end-of-sequence token, its token budget or the cache capacity.
//! The caller may then [`BatchGenerator::resume`] a row with inserted tokens (retrieved
//! documents) and generate again: only the new tokens are prefilled.
//!
//! **Shared prompts.** Rows with identical prompts prefill once and fork the cache row (a
//! rollout's G samples of one question); distinct prompts prefill the prefix they all share
//! once and fork it before each prefills its own rest (a chat server's system turn, a
//! rollout's template and demonstration), as llama.cpp's server reuses a cached prefix.
//!
//! Every token carries a mask bit: 1 when the policy sampled it, 0 for prompt and inserted
//! tokens. The tokens in [`Row::tokens`] are exactly the tokens the model was fed, so training
//! re-scores the same ids (no re-tokenization drift).
//!
//! **Stop strings inside a token.** Byte-level BPE tokens can run past a stop string (the
//! token `>\n` completes `<|end_of_query|>` and adds a newline). The token the policy sampled
//! is kept as sampled, with mask 1: closing a query or an answer is a decision of the policy
//! and must carry loss (an earlier version dropped it and re-encoded the text with mask 0, so
//! the act of closing a query was never reinforced). The *segment text* — what the caller
//! reads the query from — is cut right after the stop string, and the bytes past the cut are
//! kept in [`Row::overshoot`] so the caller can insert only what the policy did not already
//! write (the rollout strips them from the front of the documents block when they are its
//! prefix). Row tokens stay exactly the tokens fed to the model, in order: the kept token is
//! fed before any insertion when the row resumes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;

use super::decoder::{DecodeCache, Decoder};
use super::sampling::Sampler;
use super::tokenizer::Tokenizer;
use super::ModelError;

/// Why a row stopped generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The decoded text reached `stops[i]`.
    Stop(usize),
    /// The policy sampled an end-of-sequence token.
    Eos,
    /// The row's generation budget (tokens) ran out.
    Length,
    /// The KV cache (context window) is full.
    Capacity,
}

/// The bytes token `id` decodes to: the byte-level table when the tokenizer has one, else
/// the decoded text of the lone token.
fn piece(tokenizer: &Tokenizer, id: u32) -> Cow<'_, [u8]> {
    match tokenizer.token_bytes(id) {
        Some(b) => Cow::Borrowed(b),
        None => Cow::Owned(
            tokenizer
                .decode(&[id], false)
                .unwrap_or_default()
                .into_bytes(),
        ),
    }
}

/// The text of `ids` as the generator sees it: the tokens' bytes concatenated, decoded as
/// UTF-8 (lossily, so a sequence cut inside a character still prints).
pub fn text_of(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| piece(tokenizer, i).into_owned())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One sequence of the batch.
#[derive(Debug, Clone)]
pub struct Row {
    /// Every token of the sequence: prompt, sampled, inserted.
    pub tokens: Vec<u32>,
    /// 1 where the policy sampled the token, 0 elsewhere; same length as `tokens`.
    pub mask: Vec<u8>,
    /// Log-probability of each sampled token under the distribution the generator drew it
    /// from (the decoding engine's logits; [`Sampler::sample_logprob`]); 0 where `mask` is 0.
    /// Same length as `tokens`.
    pub logprobs: Vec<f32>,
    /// Number of prompt tokens at the start.
    pub prompt_len: usize,
    /// Policy tokens sampled so far.
    pub generated: usize,
    /// Why the current segment stopped (`None` while generating).
    pub stop: Option<StopReason>,
    /// Bytes the last sampled token added past the stop string it completed (empty when it
    /// ended exactly there, or when the segment did not stop at a stop string).
    pub overshoot: Vec<u8>,
    segment_start: usize,
    segment_bytes: Vec<u8>,
    fed: usize,
    next_logits: Option<Vec<f32>>,
}

impl Row {
    /// Appends the sampled token `id` (mask 1) whose bytes are `bytes`; when it completes one
    /// of `stops` (longest `max_stop` bytes), stops the row at it, cuts the segment text right
    /// after the stop string and keeps the bytes past it in [`Row::overshoot`]. Returns
    /// whether the row stopped. The token itself is always kept (module docs).
    fn push_sampled(
        &mut self,
        id: u32,
        logprob: f32,
        bytes: &[u8],
        stops: &[String],
        max_stop: usize,
    ) -> bool {
        self.generated += 1;
        self.tokens.push(id);
        self.mask.push(1);
        self.logprobs.push(logprob);
        let before = self.segment_bytes.len();
        self.segment_bytes.extend_from_slice(bytes);
        let Some((i, end)) = find_stop(&self.segment_bytes, before, stops, max_stop) else {
            return false;
        };
        self.stop = Some(StopReason::Stop(i));
        self.overshoot = self.segment_bytes.split_off(end);
        true
    }

    /// Bytes of the current segment (since the prompt or the last insertion), as text.
    pub fn segment_text(&self) -> String {
        String::from_utf8_lossy(&self.segment_bytes).into_owned()
    }

    /// Token index where the current segment begins.
    pub fn segment_start(&self) -> usize {
        self.segment_start
    }
}

/// Counters for throughput reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenStats {
    /// Batched decode steps run.
    pub decode_steps: usize,
    /// Policy tokens sampled.
    pub sampled_tokens: usize,
    /// Tokens prefilled (prompts and insertions).
    pub prefill_tokens: usize,
    /// Seconds in decode steps (forward + sampling).
    pub decode_seconds: f64,
    /// Seconds in prefill.
    pub prefill_seconds: f64,
}

/// Where a generator row starts: a prompt, or a sequence to continue (its sampled tokens keep
/// their mask and log-probs; [`BatchGenerator::from_starts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RowStart {
    /// The tokens fed before generation starts.
    pub tokens: Vec<u32>,
    /// 1 on tokens the policy sampled, 0 elsewhere; same length as `tokens`.
    pub mask: Vec<u8>,
    /// Log-probs of the sampled tokens (0 where `mask` is 0); same length as `tokens`.
    pub logprobs: Vec<f32>,
    /// Prompt tokens at the start (≤ `tokens.len()`).
    pub prompt_len: usize,
}

impl RowStart {
    /// A bare prompt: nothing sampled yet.
    pub fn prompt(tokens: Vec<u32>) -> Self {
        let n = tokens.len();
        Self {
            mask: vec![0; n],
            logprobs: vec![0.0; n],
            prompt_len: n,
            tokens,
        }
    }
}

/// Shortest common prompt prefix (tokens) that [`BatchGenerator::new`] prefills once for all
/// rows: below it, the fork's copy of the cache rows is not worth saving the prefill.
pub const MIN_SHARED_PREFIX: usize = 16;

/// Batched generation over a shared KV cache; see the module docs. `M` is the forward pass
/// ([`Decoder`]: burn's f32 [`super::Llama`], the quantized engine, or an
/// [`super::decoder::Engine`] choosing between them).
pub struct BatchGenerator<'m, M: Decoder + ?Sized> {
    model: &'m M,
    tokenizer: &'m Tokenizer,
    cache: M::Cache,
    rows: Vec<Row>,
    stops: Vec<String>,
    eos: Vec<u32>,
    stats: GenStats,
}

impl<'m, M: Decoder + ?Sized> BatchGenerator<'m, M> {
    /// Prefills `prompts` (one per row; identical prompts are prefilled once and forked, and
    /// the longest prefix all distinct prompts share, when at least [`MIN_SHARED_PREFIX`]
    /// tokens, is prefilled once and forked before each prefills its own rest) into a cache
    /// of `capacity` tokens per row.
    ///
    /// # Errors
    /// [`ModelError::ContextOverflow`] when a prompt does not fit, or is empty.
    pub fn new(
        model: &'m M,
        tokenizer: &'m Tokenizer,
        prompts: &[Vec<u32>],
        capacity: usize,
        stops: Vec<String>,
        eos: Vec<u32>,
    ) -> Result<Self, ModelError> {
        let starts: Vec<RowStart> = prompts.iter().cloned().map(RowStart::prompt).collect();
        Self::from_starts(model, tokenizer, starts, capacity, (stops, eos))
    }

    /// As [`Self::new`], each row starting from `starts` instead of a bare prompt: a row
    /// continues a sequence whose earlier tokens (sampled ones with their mask and log-probs)
    /// are kept as they were and count towards the row's budget. The whole start is prefilled
    /// (identical starts once, forked; a prefix all distinct starts share once, as for
    /// prompts); generation resumes in a new segment. `stop` is the stop strings and the
    /// end-of-sequence ids.
    ///
    /// # Errors
    /// [`ModelError::ContextOverflow`] when a start does not fit, or is empty.
    pub fn from_starts(
        model: &'m M,
        tokenizer: &'m Tokenizer,
        starts: Vec<RowStart>,
        capacity: usize,
        stop: (Vec<String>, Vec<u32>),
    ) -> Result<Self, ModelError> {
        let (stops, eos) = stop;
        let cache = model.new_cache(starts.len(), capacity);
        let prompts: Vec<Vec<u32>> = starts.iter().map(|s| s.tokens.clone()).collect();
        let rows = starts
            .into_iter()
            .map(|s| Row {
                generated: s.mask.iter().filter(|&&m| m == 1).count(),
                segment_start: s.tokens.len(),
                tokens: s.tokens,
                mask: s.mask,
                logprobs: s.logprobs,
                prompt_len: s.prompt_len,
                stop: None,
                overshoot: Vec::new(),
                segment_bytes: Vec::new(),
                fed: 0,
                next_logits: None,
            })
            .collect();
        let mut gen = Self {
            model,
            tokenizer,
            cache,
            rows,
            stops,
            eos,
            stats: GenStats::default(),
        };
        let mut first_of: HashMap<&[u32], usize> = HashMap::new();
        let mut forks: Vec<(usize, Vec<usize>)> = Vec::new();
        for (r, p) in prompts.iter().enumerate() {
            if p.is_empty() || p.len() >= capacity {
                return Err(ModelError::ContextOverflow {
                    tokens: p.len(),
                    capacity,
                });
            }
            match first_of.get(p.as_slice()) {
                Some(&src) => forks
                    .iter_mut()
                    .find(|(s, _)| *s == src)
                    .expect("fork entry")
                    .1
                    .push(r),
                None => {
                    first_of.insert(p.as_slice(), r);
                    forks.push((r, Vec::new()));
                }
            }
        }
        // Distinct prompts that open alike (a chat server's system turn, a rollout's template
        // and demonstration) share that prefix's prefill: it runs once, on the first one, and
        // its keys/values are forked into the others, which then prefill only their own rest.
        // Every distinct prompt keeps at least one token of its own (its logits come from it).
        let distinct: Vec<usize> = forks.iter().map(|(src, _)| *src).collect();
        if let [first, others @ ..] = distinct.as_slice() {
            let shared = others.iter().fold(prompts[*first].len() - 1, |n, &o| {
                n.min(prompts[o].len() - 1).min(
                    prompts[*first]
                        .iter()
                        .zip(&prompts[o])
                        .take_while(|(a, b)| a == b)
                        .count(),
                )
            });
            if !others.is_empty() && shared >= MIN_SHARED_PREFIX {
                let t0 = std::time::Instant::now();
                gen.model
                    .prefill_row(*first, &prompts[*first][..shared], &mut gen.cache);
                gen.cache.fork_row(*first, others);
                for &r in &distinct {
                    gen.rows[r].fed = shared;
                }
                gen.stats.prefill_tokens += shared;
                gen.stats.prefill_seconds += t0.elapsed().as_secs_f64();
            }
        }
        for (src, dsts) in forks {
            gen.feed(src, &[])?;
            gen.cache.fork_row(src, &dsts);
            let logits = gen.rows[src].next_logits.clone();
            for d in dsts {
                gen.rows[d].fed = gen.rows[src].fed;
                gen.rows[d].next_logits = logits.clone();
            }
        }
        Ok(gen)
    }

    /// The rows, in input order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Consumes the generator, returning its rows.
    pub fn into_rows(self) -> Vec<Row> {
        self.rows
    }

    /// Throughput counters so far.
    pub fn stats(&self) -> GenStats {
        self.stats
    }

    /// Feeds row `r`'s unfed tokens plus `insert` (mask 0) to the model.
    ///
    /// The capacity is checked before anything is appended: an insertion that does not fit
    /// leaves the row's tokens as they were, so a trajectory never holds tokens (e.g. a
    /// documents block) that the model did not see.
    fn feed(&mut self, r: usize, insert: &[u32]) -> Result<(), ModelError> {
        let row = &mut self.rows[r];
        let needed = row.tokens.len() + insert.len();
        if needed > row.fed && needed >= self.cache.capacity() {
            return Err(ModelError::ContextOverflow {
                tokens: needed,
                capacity: self.cache.capacity(),
            });
        }
        row.tokens.extend_from_slice(insert);
        row.mask.extend(std::iter::repeat_n(0u8, insert.len()));
        row.logprobs.extend(std::iter::repeat_n(0f32, insert.len()));
        let pending = &row.tokens[row.fed..];
        if pending.is_empty() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let logits = self.model.prefill_row(r, pending, &mut self.cache);
        self.stats.prefill_tokens += pending.len();
        row.fed = needed;
        row.next_logits = Some(logits);
        self.stats.prefill_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Appends `insert` (e.g. retrieved documents; mask 0) to a stopped row and makes it
    /// ready to generate again; a new segment starts after the insertion.
    ///
    /// # Errors
    /// [`ModelError::ContextOverflow`] when the insertion does not fit; the row then stays
    /// stopped with [`StopReason::Capacity`].
    pub fn resume(&mut self, r: usize, insert: &[u32]) -> Result<(), ModelError> {
        if let Err(e) = self.feed(r, insert) {
            self.rows[r].stop = Some(StopReason::Capacity);
            return Err(e);
        }
        let row = &mut self.rows[r];
        row.stop = None;
        row.overshoot.clear();
        row.segment_start = row.tokens.len();
        row.segment_bytes.clear();
        Ok(())
    }

    /// Generates until every unstopped row stops; `budget[r]` caps row `r`'s total sampled
    /// tokens (across segments).
    pub fn generate(&mut self, sampler: &mut Sampler, budget: &[usize]) {
        self.generate_with(sampler, budget, |_, _, _| ControlFlow::Continue(()));
    }

    /// [`generate`](Self::generate) with a per-token hook, for streaming and cancellation.
    ///
    /// `on_token(row, id, text)` runs after each sampled token with the bytes the token added
    /// to the row's text (cut at a stop string; empty for an end-of-sequence token).
    /// Returning [`ControlFlow::Break`] stops that row as if its budget ran out
    /// ([`StopReason::Length`]), unless the token already stopped it.
    pub fn generate_with(
        &mut self,
        sampler: &mut Sampler,
        budget: &[usize],
        mut on_token: impl FnMut(usize, u32, &[u8]) -> ControlFlow<()>,
    ) {
        let _span = tracing::debug_span!("generate", rows = self.rows.len()).entered();
        let max_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        loop {
            let t0 = std::time::Instant::now();
            let mut step_tokens = vec![0u32; self.rows.len()];
            let mut active = vec![false; self.rows.len()];
            for (r, row) in self.rows.iter_mut().enumerate() {
                if row.stop.is_some() {
                    continue;
                }
                if row.generated >= budget[r] {
                    row.stop = Some(StopReason::Length);
                    continue;
                }
                if row.fed + 1 >= self.cache.capacity() {
                    row.stop = Some(StopReason::Capacity);
                    continue;
                }
                let Some(logits) = row.next_logits.take() else {
                    continue;
                };
                let (id, logprob) = sampler.sample_logprob(&logits);
                self.stats.sampled_tokens += 1;
                if self.eos.contains(&id) {
                    row.push_sampled(id, logprob, &[], &[], 0);
                    row.stop = Some(StopReason::Eos);
                    let _ = on_token(r, id, &[]);
                    continue;
                }
                let before = row.segment_bytes.len();
                if row.push_sampled(
                    id,
                    logprob,
                    &piece(self.tokenizer, id),
                    &self.stops,
                    max_stop,
                ) {
                    let _ = on_token(r, id, &row.segment_bytes[before..]);
                    continue;
                }
                if on_token(r, id, &row.segment_bytes[before..]).is_break() {
                    row.stop = Some(StopReason::Length);
                    continue;
                }
                step_tokens[r] = id;
                active[r] = true;
            }
            self.stats.decode_seconds += t0.elapsed().as_secs_f64();
            if !active.iter().any(|&a| a) {
                break;
            }
            let t0 = std::time::Instant::now();
            let flat = self
                .model
                .decode_step(&step_tokens, &active, &mut self.cache);
            let vocab = self.model.vocab_size();
            for (r, row) in self.rows.iter_mut().enumerate() {
                if active[r] {
                    row.fed += 1;
                    row.next_logits = Some(flat[r * vocab..(r + 1) * vocab].to_vec());
                }
            }
            self.stats.decode_steps += 1;
            self.stats.decode_seconds += t0.elapsed().as_secs_f64();
        }
    }
}

/// Finds the earliest stop string that ends after byte `new_from` of `text` (so only matches
/// that the newest token completed count). Returns (stop index, end byte).
fn find_stop(
    text: &[u8],
    new_from: usize,
    stops: &[String],
    max_stop: usize,
) -> Option<(usize, usize)> {
    let window_start = new_from.saturating_sub(max_stop.saturating_sub(1));
    let window = &text[window_start..];
    let mut best: Option<(usize, usize)> = None;
    for (i, s) in stops.iter().enumerate() {
        let s = s.as_bytes();
        if s.is_empty() || s.len() > window.len() {
            continue;
        }
        if let Some(pos) = window.windows(s.len()).position(|w| w == s) {
            let end = window_start + pos + s.len();
            if end > new_from && best.is_none_or(|(_, e)| end < e) {
                best = Some((i, end));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_row() -> Row {
        Row {
            tokens: vec![7],
            mask: vec![0],
            logprobs: vec![0.0],
            prompt_len: 1,
            generated: 0,
            stop: None,
            overshoot: Vec::new(),
            segment_start: 1,
            segment_bytes: Vec::new(),
            fed: 1,
            next_logits: None,
        }
    }

    /// The token that completes a stop string and runs past it is kept with mask 1 (the
    /// policy chose it), the segment text ends at the stop string, and the extra bytes are
    /// reported as overshoot.
    #[test]
    fn overshooting_stop_token_is_kept_and_trained() {
        let stops = vec!["<|end_of_query|>".to_string(), "</answer>".to_string()];
        let mut row = empty_row();
        assert!(!row.push_sampled(
            10,
            -1.0,
            b"<|begin_of_query|> cats <|end_of_query",
            &stops,
            16
        ));
        assert!(row.push_sampled(11, -1.0, b"|>\n", &stops, 16));
        assert_eq!(row.stop, Some(StopReason::Stop(0)));
        assert_eq!(row.tokens, vec![7, 10, 11]);
        assert_eq!(row.mask, vec![0, 1, 1]);
        assert_eq!(row.generated, 2);
        assert!(row.segment_text().ends_with("<|end_of_query|>"));
        assert_eq!(row.overshoot, b"\n");
        // A token ending exactly at the stop leaves no overshoot.
        let mut row = empty_row();
        assert!(row.push_sampled(12, -1.0, b" x </answer>", &stops, 16));
        assert_eq!(row.stop, Some(StopReason::Stop(1)));
        assert!(row.overshoot.is_empty());
        assert_eq!(row.mask, vec![0, 1]);
    }

    #[test]
    fn find_stop_only_counts_new_matches() {
        let stops = vec!["<|end_of_query|>".to_string(), "</answer>".to_string()];
        let text = b"x <|end_of_query|>\n";
        // The newest token started at byte 16 ("|>\n"): match ends at 18.
        assert_eq!(find_stop(text, 16, &stops, 16), Some((0, 18)));
        // A match that ended before the newest token is not reported again.
        assert_eq!(find_stop(text, 18, &stops, 16), None);
        assert_eq!(find_stop(b"a </answer> b", 5, &stops, 16), Some((1, 11)));
    }
}
