//! The generation worker: one OS thread owns the model and runs the agent, fed by a bounded
//! queue of jobs. Jobs that arrive together and sample alike are batched into one
//! [`rollout_observed`] call (one row group per request), and every token and search is sent
//! to the request's event channel as it happens. A request whose channel is closed (client
//! gone, timeout) has its rows stopped at the next token.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::env::SearchCall;
use crate::env::{rollout_observed, Env, EpisodeEnd, RolloutObserver};
use crate::model::{Engine, Llama, Sampler, SamplingConfig};

use crate::env::protocol::{BEGIN_ANSWER as OPEN_ANSWER, END_ANSWER as CLOSE_ANSWER};

/// Everything the served agent needs: the policy, its tokenizer, the retriever and the same
/// prompt and rollout settings as training.
pub struct Agent<B: Backend> {
    /// Policy weights.
    pub model: Llama<B>,
    /// Tokenizer, search backend, prompt template (`[prompt]`) and rollout settings
    /// (`[rollout]`: search budget, top-k, context, and a request's default token budget and
    /// sampling). A request's own system prompt, token budget and sampling are set on a copy.
    pub env: Env,
}

/// Counters shown by `GET /health`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Jobs waiting in the queue or in the worker's pending list.
    pub queued: AtomicUsize,
    /// Requests answered completely.
    pub completed: AtomicUsize,
    /// Requests whose client went away (or timed out) before the end.
    pub cancelled: AtomicUsize,
    /// Rollout batches run.
    pub batches: AtomicUsize,
    /// Largest number of requests batched together so far.
    pub max_batch: AtomicUsize,
    /// Requests rejected because the queue was full.
    pub rejected: AtomicUsize,
}

/// Snapshot of [`ServerStats`].
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// See [`ServerStats::queued`].
    pub queued: usize,
    /// See [`ServerStats::completed`].
    pub completed: usize,
    /// See [`ServerStats::cancelled`].
    pub cancelled: usize,
    /// See [`ServerStats::batches`].
    pub batches: usize,
    /// See [`ServerStats::max_batch`].
    pub max_batch: usize,
    /// See [`ServerStats::rejected`].
    pub rejected: usize,
}

impl ServerStats {
    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the worker reports about a request, in order.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// Trajectory text (reasoning, queries, inserted documents) of a choice.
    Reasoning { choice: usize, text: String },
    /// Answer text of a choice.
    Content { choice: usize, text: String },
    /// A search ran for a choice.
    Search { choice: usize, call: SearchCall },
    /// A choice is complete.
    Done {
        choice: usize,
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request failed.
    Error(String),
    /// The request cannot run as sent (its prompt does not fit the context): a 400.
    Invalid(String),
}

/// A validated request for the worker.
pub(crate) struct Job {
    pub question: String,
    pub system: Option<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub n: usize,
    pub stops: Vec<String>,
    pub seed: Option<u64>,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Job {
    /// Whether two jobs can share one rollout (same sampler, budget, group size, prompt).
    fn batches_with(&self, other: &Job) -> bool {
        self.seed.is_none()
            && other.seed.is_none()
            && self.temperature.to_bits() == other.temperature.to_bits()
            && self.top_p.to_bits() == other.top_p.to_bits()
            && self.max_tokens == other.max_tokens
            && self.n == other.n
            && self.system == other.system
    }
}

/// Starts the worker thread. It ends when every sender of the returned queue is dropped.
pub(crate) fn spawn<B: Backend>(
    agent: Agent<B>,
    queue: usize,
    max_batch: usize,
    stats: Arc<ServerStats>,
) -> std::io::Result<mpsc::Sender<Job>>
where
    Llama<B>: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
    std::thread::Builder::new()
        .name("sleuth-generate".into())
        .spawn(move || {
            // The decoding engine `[rollout] weights` names, built once (quantizing is a pass
            // over the weights).
            let engine = Engine::new(&agent.model, agent.env.rollout.weights);
            let mut pending: VecDeque<Job> = VecDeque::new();
            loop {
                if pending.is_empty() {
                    match rx.blocking_recv() {
                        Some(j) => pending.push_back(j),
                        None => return,
                    }
                }
                // Bounded: at most `queue` jobs wait here, as many again in the channel.
                while pending.len() < queue.max(1) {
                    match rx.try_recv() {
                        Ok(j) => pending.push_back(j),
                        Err(_) => break,
                    }
                }
                // Drop jobs whose client left while they waited.
                let before = pending.len();
                pending.retain(|j| !j.events.is_closed());
                let dropped = before - pending.len();
                stats.cancelled.fetch_add(dropped, Ordering::Relaxed);
                stats.queued.fetch_sub(dropped, Ordering::Relaxed);
                let Some(first) = pending.pop_front() else {
                    continue;
                };
                if !fits(&agent, &first) {
                    stats.queued.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let mut batch = vec![first];
                let mut i = 0;
                while i < pending.len() && batch.len() < max_batch.max(1) {
                    if batch[0].batches_with(&pending[i]) {
                        let job = pending.remove(i).expect("index in range");
                        if fits(&agent, &job) {
                            batch.push(job);
                        } else {
                            stats.queued.fetch_sub(1, Ordering::Relaxed);
                        }
                    } else {
                        i += 1;
                    }
                }
                stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.max_batch.fetch_max(batch.len(), Ordering::Relaxed);
                run_batch(&agent, &engine, &batch, &stats);
            }
        })?;
    Ok(tx)
}

/// Whether `job`'s prompt fits the context with room to generate; if not, tells its client
/// (one oversized request must not fail the others in its batch).
fn fits<B: Backend>(agent: &Agent<B>, job: &Job) -> bool {
    let mut prompt = agent.env.prompt.clone();
    if let Some(sys) = &job.system {
        prompt.system = format!("{}\n\n{}", prompt.system, sys);
    }
    let (len, err) = match prompt.encode(&agent.env.tokenizer, &job.question) {
        Ok(ids) => (ids.len(), None),
        Err(e) => (0, Some(e.to_string())),
    };
    let capacity = agent.env.rollout.context_tokens;
    let msg = match err {
        Some(e) => format!("cannot build the prompt: {e}"),
        None if len + 1 >= capacity => format!(
            "the conversation takes {len} tokens with the agent's prompt; the context holds {capacity}"
        ),
        None => return true,
    };
    let _ = job.events.send(Event::Invalid(msg));
    false
}

/// Runs one batch of compatible jobs and reports every event; never panics outward.
fn run_batch<B: Backend>(
    agent: &Agent<B>,
    engine: &Engine<'_, B>,
    batch: &[Job],
    stats: &ServerStats,
) {
    let _span = tracing::info_span!("serve_batch", requests = batch.len()).entered();
    let head = &batch[0];
    // The request's settings on a copy of the agent's environment (cheap: the tokenizer and
    // the retriever are shared).
    let mut env = agent.env.clone();
    env.rollout.samples_per_question = head.n;
    env.rollout.max_new_tokens = head.max_tokens;
    if let Some(sys) = &head.system {
        env.prompt.system = format!("{}\n\n{}", env.prompt.system, sys);
    }
    let seed = head.seed.unwrap_or_else(rand::random);
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: head.temperature,
        top_p: head.top_p,
        top_k: env.rollout.top_k_sampling,
        seed,
    });
    let questions: Vec<String> = batch.iter().map(|j| j.question.clone()).collect();
    let mut obs = Streamer::new(batch, head.n, stats);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rollout_observed(engine, &env, &questions, &mut sampler, &mut obs)
    }));
    match result {
        Ok(Ok((episodes, _))) => {
            // Counted before the last events go out, so a client that reads /health right
            // after its answer sees itself counted.
            for (j, job) in batch.iter().enumerate() {
                if !obs.cancelled[j] && !job.events.is_closed() {
                    stats.completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (r, ep) in episodes.iter().enumerate() {
                let policy = ep.policy_tokens();
                let finish = if ep.end == EpisodeEnd::Length && !obs.rows[r].user_stop {
                    Finish::Length
                } else {
                    Finish::Stop
                };
                obs.finish(r, ep.forced_prediction.as_deref());
                obs.send(
                    r,
                    Event::Done {
                        choice: r % head.n,
                        finish,
                        prompt_tokens: ep.tokens.len() - policy,
                        completion_tokens: policy,
                    },
                );
            }
        }
        Ok(Err(e)) => {
            for job in batch {
                let _ = job.events.send(Event::Error(e.to_string()));
            }
        }
        Err(_) => {
            tracing::error!("generation panicked; the request failed, the server goes on");
            for job in batch {
                let _ = job
                    .events
                    .send(Event::Error("internal error while generating".to_string()));
            }
        }
    }
}

/// Per-row streaming state.
struct RowState {
    utf8: Vec<u8>,
    split: Splitter,
    user_stop: bool,
}

impl RowState {
    /// Pushes any bytes still held back (an incomplete UTF-8 sequence at a row's end or
    /// before a search) into the splitter, lossily.
    fn flush_utf8(&mut self, out: &mut Vec<Piece>) {
        if !self.utf8.is_empty() {
            let text = String::from_utf8_lossy(&self.utf8).into_owned();
            self.utf8.clear();
            self.split.push(&text, out);
        }
    }
}

/// The observer: turns tokens and searches into [`Event`]s per request.
struct Streamer<'a> {
    jobs: &'a [Job],
    n: usize,
    rows: Vec<RowState>,
    cancelled: Vec<bool>,
    stats: &'a ServerStats,
}

impl<'a> Streamer<'a> {
    fn new(jobs: &'a [Job], n: usize, stats: &'a ServerStats) -> Self {
        let rows = (0..jobs.len() * n)
            .map(|r| RowState {
                utf8: Vec::new(),
                split: Splitter::new(jobs[r / n].stops.clone()),
                user_stop: false,
            })
            .collect();
        Self {
            jobs,
            n,
            rows,
            cancelled: vec![false; jobs.len()],
            stats,
        }
    }

    /// Sends an event for `row`'s request; false (and the request marked cancelled) when
    /// its client is gone.
    fn send(&mut self, row: usize, ev: Event) -> bool {
        let j = row / self.n;
        if self.cancelled[j] {
            return false;
        }
        if self.jobs[j].events.send(ev).is_err() {
            self.cancelled[j] = true;
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn emit(&mut self, row: usize, pieces: Vec<Piece>) -> bool {
        let choice = row % self.n;
        let mut ok = true;
        for p in pieces {
            let ev = match p {
                Piece::Reasoning(text) => Event::Reasoning { choice, text },
                Piece::Content(text) => Event::Content { choice, text },
            };
            ok &= self.send(row, ev);
        }
        ok && !self.cancelled[row / self.n]
    }

    /// Flushes a finished row's text (and the forced prediction, if any).
    fn finish(&mut self, row: usize, forced: Option<&str>) {
        let st = &mut self.rows[row];
        let mut out = Vec::new();
        st.flush_utf8(&mut out);
        st.split.finish(&mut out);
        if let Some(f) = forced {
            if !st.split.content_started {
                out.push(Piece::Content(f.to_string()));
            }
        }
        self.emit(row, out);
    }
}

impl RolloutObserver for Streamer<'_> {
    fn on_token(&mut self, row: usize, _id: u32, text: &[u8]) -> ControlFlow<()> {
        if self.cancelled[row / self.n] || self.jobs[row / self.n].events.is_closed() {
            if !self.cancelled[row / self.n] {
                self.cancelled[row / self.n] = true;
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            return ControlFlow::Break(());
        }
        let st = &mut self.rows[row];
        st.utf8.extend_from_slice(text);
        let valid = match std::str::from_utf8(&st.utf8) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => st.utf8.len(),
            Err(e) => e.valid_up_to(),
        };
        let chunk: Vec<u8> = st.utf8.drain(..valid).collect();
        let text = String::from_utf8_lossy(&chunk);
        let mut out = Vec::new();
        let hit_user_stop = st.split.push(&text, &mut out) == Some(Terminator::UserStop);
        if hit_user_stop {
            st.user_stop = true;
        }
        let alive = self.emit(row, out);
        if alive && !hit_user_stop {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn on_search(&mut self, row: usize, call: &SearchCall, inserted: &str) {
        let st = &mut self.rows[row];
        let mut out = Vec::new();
        st.flush_utf8(&mut out);
        st.split.flush_reasoning(&mut out);
        self.emit(row, out);
        let choice = row % self.n;
        self.send(
            row,
            Event::Search {
                choice,
                call: call.clone(),
            },
        );
        self.send(
            row,
            Event::Reasoning {
                choice,
                text: inserted.to_string(),
            },
        );
    }
}

/// A piece of a choice's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Reasoning(String),
    Content(String),
}

/// What ended the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Terminator {
    CloseTag,
    UserStop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reasoning,
    Content,
    Done,
}

/// Splits the policy's text, as it streams in, into reasoning (before `<answer>`) and
/// content (the answer, trimmed, up to `</answer>` or a client stop string). Text that could
/// be the start of a tag, and trailing whitespace of the answer, is held back until the next
/// piece decides it, so streamed pieces concatenate to exactly the non-streamed fields.
pub(crate) struct Splitter {
    mode: Mode,
    pending: String,
    stops: Vec<String>,
    content_started: bool,
}

/// Length of the longest proper suffix of `s` that is a prefix of one of `tags`.
fn partial_suffix(s: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for tag in tags {
        for k in (1..tag.len().min(s.len() + 1)).rev() {
            if k <= best {
                break;
            }
            let start = s.len() - k;
            if s.is_char_boundary(start) && tag.is_char_boundary(k) && tag.starts_with(&s[start..])
            {
                best = k;
                break;
            }
        }
    }
    best
}

impl Splitter {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            mode: Mode::Reasoning,
            pending: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            content_started: false,
        }
    }

    fn content(&mut self, text: &str, out: &mut Vec<Piece>) {
        let text = if self.content_started {
            text
        } else {
            text.trim_start()
        };
        if !text.is_empty() {
            self.content_started = true;
            out.push(Piece::Content(text.to_string()));
        }
    }

    /// Adds text; returns what ended the answer if this text did.
    pub(crate) fn push(&mut self, text: &str, out: &mut Vec<Piece>) -> Option<Terminator> {
        if self.mode == Mode::Done {
            return None;
        }
        self.pending.push_str(text);
        loop {
            match self.mode {
                Mode::Reasoning => {
                    if let Some(p) = self.pending.find(OPEN_ANSWER) {
                        if p > 0 {
                            out.push(Piece::Reasoning(self.pending[..p].to_string()));
                        }
                        self.pending.drain(..p + OPEN_ANSWER.len());
                        self.mode = Mode::Content;
                        continue;
                    }
                    let keep = partial_suffix(&self.pending, &[OPEN_ANSWER]);
                    let cut = self.pending.len() - keep;
                    if cut > 0 {
                        out.push(Piece::Reasoning(self.pending[..cut].to_string()));
                        self.pending.drain(..cut);
                    }
                    return None;
                }
                Mode::Content => {
                    let mut first: Option<(usize, Terminator)> = None;
                    let tags = std::iter::once((CLOSE_ANSWER, Terminator::CloseTag)).chain(
                        self.stops
                            .iter()
                            .map(|s| (s.as_str(), Terminator::UserStop)),
                    );
                    for (tag, kind) in tags {
                        if let Some(p) = self.pending.find(tag) {
                            if first.is_none_or(|(q, _)| p < q) {
                                first = Some((p, kind));
                            }
                        }
                    }
                    if let Some((p, kind)) = first {
                        let text = self.pending[..p].trim_end().to_string();
                        self.content(&text, out);
                        self.pending.clear();
                        self.mode = Mode::Done;
                        return Some(kind);
                    }
                    let mut tags: Vec<&str> = vec![CLOSE_ANSWER];
                    tags.extend(self.stops.iter().map(String::as_str));
                    // Hold back a possible tag start and the whitespace before it.
                    let partial = partial_suffix(&self.pending, &tags);
                    let head = &self.pending[..self.pending.len() - partial];
                    let cut = head.trim_end().len();
                    if cut > 0 {
                        let text = self.pending[..cut].to_string();
                        self.content(&text, out);
                        self.pending.drain(..cut);
                    }
                    return None;
                }
                Mode::Done => return None,
            }
        }
    }

    /// Emits held-back reasoning text (the segment ended: a search follows).
    pub(crate) fn flush_reasoning(&mut self, out: &mut Vec<Piece>) {
        if self.mode == Mode::Reasoning && !self.pending.is_empty() {
            out.push(Piece::Reasoning(std::mem::take(&mut self.pending)));
        }
    }

    /// Emits everything held back (the row is finished).
    pub(crate) fn finish(&mut self, out: &mut Vec<Piece>) {
        match self.mode {
            Mode::Reasoning => self.flush_reasoning(out),
            Mode::Content => {
                let text = self.pending.trim_end().to_string();
                self.content(&text, out);
                self.pending.clear();
            }
            Mode::Done => {}
        }
        self.mode = Mode::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str], stops: &[&str]) -> (String, String, Option<Terminator>) {
        let mut s = Splitter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        let mut term = None;
        for p in pieces {
            if let Some(t) = s.push(p, &mut out) {
                term = Some(t);
            }
        }
        s.finish(&mut out);
        let (mut r, mut c) = (String::new(), String::new());
        for p in out {
            match p {
                Piece::Reasoning(t) => r.push_str(&t),
                Piece::Content(t) => c.push_str(&t),
            }
        }
        (r, c, term)
    }

    #[test]
    fn splits_reasoning_and_trimmed_answer_across_token_boundaries() {
        let whole = " x </think>\n<answer> Kauffman  Stadium </answer>";
        let (r, c, t) = run(&[whole], &[]);
        assert_eq!(
            (r.as_str(), c.as_str()),
            (" x </think>\n", "Kauffman  Stadium")
        );
        assert_eq!(t, Some(Terminator::CloseTag));
        // Same result when every character arrives alone.
        let chars: Vec<String> = whole.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&refs, &[]), (r, c, t));
    }

    #[test]
    fn streamer_reports_tokens_searches_and_answer_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = Job {
            question: "q".into(),
            system: None,
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 10,
            n: 1,
            stops: Vec::new(),
            seed: None,
            events: tx,
        };
        let jobs = [job];
        let stats = ServerStats::default();
        let mut s = Streamer::new(&jobs, 1, &stats);
        for piece in [" look <|begin_of_query|> Paris", "<|end_of_query|>"] {
            assert!(s.on_token(0, 1, piece.as_bytes()).is_continue());
        }
        let call = SearchCall {
            query: "Paris".into(),
            documents: vec!["\"Paris\" capital".into()],
            titles: vec!["Paris".into()],
            error: None,
        };
        s.on_search(
            0,
            &call,
            "\n\n<|begin_of_documents|>\n(1)\"Paris\" capital\n<|end_of_documents|>\n\n",
        );
        // A multi-byte character split across two tokens arrives whole.
        let e_acute = "é".as_bytes();
        for piece in [
            &b"</think> <answer> Caf"[..],
            &e_acute[..1],
            &e_acute[1..],
            b" </answer>",
        ] {
            let _ = s.on_token(0, 1, piece);
        }
        s.finish(0, None);
        drop(s);
        drop(jobs);
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut searches = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Reasoning { text, .. } => reasoning.push_str(&text),
                Event::Content { text, .. } => content.push_str(&text),
                Event::Search { call, .. } => {
                    assert!(reasoning.ends_with("<|end_of_query|>"), "{reasoning}");
                    searches.push(call.query);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(searches, ["Paris"]);
        assert!(reasoning.contains("<|begin_of_documents|>\n(1)\"Paris\" capital"));
        assert!(reasoning.ends_with("</think> "), "{reasoning}");
        assert_eq!(content, "Café");
        // A client that hung up stops its row at the next token.
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let jobs = [Job {
            events: tx,
            question: String::new(),
            system: None,
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 1,
            n: 1,
            stops: vec![],
            seed: None,
        }];
        let mut s = Streamer::new(&jobs, 1, &stats);
        assert!(s.on_token(0, 1, b"x").is_break());
        assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn user_stop_ends_answer_and_unfinished_text_stays_reasoning() {
        let (_, c, t) = run(&["<answer> one. two </answer>"], &["."]);
        assert_eq!((c.as_str(), t), ("one", Some(Terminator::UserStop)));
        let (r, c, t) = run(&["thinking <ans"], &[]);
        assert_eq!((r.as_str(), c.as_str(), t), ("thinking <ans", "", None));
    }
}
