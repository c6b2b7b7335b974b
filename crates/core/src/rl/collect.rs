//! Rejection-sampled demonstrations for the cold start (DeepSeek-R1's recipe).
//!
//! Rollouts run with the demonstration prompt (which makes a small model write queries at
//! all), from the base weights or from a cold-started checkpoint (R1's second SFT round);
//! only trajectories whose format checks all hold, that searched at least `min_searches`
//! times and — when `require_correct` — whose answer is cover-EM correct are kept
//! ([`judge`]). Each kept trajectory is stored **without** the demonstrations: the prompt is
//! re-encoded from the same template with no demonstrations, and the policy's response tokens
//! (with their mask; inserted documents stay mask 0) are appended unchanged, so SFT teaches
//! the format the policy will later be asked for without the crutch.
//!
//! [`scripted`] is the fallback when the policy is too weak for rejection sampling to keep
//! anything (the 135M default kept 0 of 64 format-valid rollouts, docs/learning.md): one
//! episode per training question, built from real retrieval. Hop 1 searches the question
//! itself; when the question's gold support titles (HotpotQA) are not all among the hits,
//! follow-up hops search the missing entities by name (the bridge entity, or each compared
//! entity) — **but only entities the policy has seen**, in the question or in the documents
//! inserted so far. Documents are inserted exactly as the environment inserts them (mask 0).
//! Before the answer the reasoning **quotes the documents sentence that holds it**, so every
//! kept episode shows where its answer was read; questions whose documents hold no such
//! sentence are skipped. Yes/no comparisons are kept when both compared passages were found,
//! quoting each. The reasoning between blocks is drawn from [`ScriptPhrases`] pools, varied
//! per question.
//!
//! Why these rules: the first script searched each missing support title even when nothing
//! the policy had read named it, and ended with a generic "the documents say the answer is
//! X". The policy trained on it learned to search the question's entity again as a "second
//! hop" and seldom took the answer from its documents: on 100 eval questions the gold answer
//! was in the inserted documents for 65 and answered right for 15. A demonstration should only
//! use what the policy can see, and should show the reading step.

use serde::Serialize;

use super::sft::SftExample;
use super::Question;
use crate::env::protocol::{documents_block, extract_query, BEGIN_QUERY, END_ANSWER, END_QUERY};
use crate::env::rollout::RolloutError;
use crate::env::{Env, Policy, PromptConfig, RolloutConfig};
use crate::model::{Sampler, Tokenizer};
use crate::reward::{score_answer, FormatReport};
use crate::search::{Hit, Retriever};

/// Counts from a collection run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CollectStats {
    /// Questions rolled out.
    pub questions: usize,
    /// Trajectories sampled (scripted: questions tried).
    pub sampled: usize,
    /// Trajectories whose format checks all hold.
    pub format_ok: usize,
    /// Format-valid trajectories dropped for searching fewer than `min_searches` times.
    pub too_few_searches: usize,
    /// Scripted: questions skipped because no sentence of their inserted documents covers a
    /// gold answer (cover-EM), or, for a yes/no comparison, because the searches did not
    /// return every support passage.
    pub uncovered: usize,
    /// Scripted: well-formed episodes dropped for exceeding `max_new_tokens` policy tokens or
    /// `context_tokens` in all.
    pub too_long: usize,
    /// Trajectories kept (format ok, enough searches, and correct when required).
    pub kept: usize,
    /// Kept trajectories by number of searches: entry `n` counts those with `n` searches, the
    /// last entry those with 3 or more.
    pub kept_by_searches: [usize; 4],
    /// Scripted, over all questions tried: follow-up hops not taken because their entity (a
    /// support title missing from the hits) appeared neither in the question nor in any
    /// documents block of the episode, so the policy could not have known to search it.
    pub hops_unseen: usize,
    /// Scripted: kept episodes with at least one such unseen hop skipped (they answer from
    /// what the visible hops found; included in `kept`).
    pub kept_with_unseen_hop: usize,
    /// Scripted: kept yes/no comparison episodes (both support passages returned and
    /// quoted; included in `kept`).
    pub kept_yes_no: usize,
}

impl CollectStats {
    fn count_kept(&mut self, searches: usize) {
        self.kept += 1;
        self.kept_by_searches[searches.min(3)] += 1;
    }
}

/// What [`judge`] decided about one sampled trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A format check failed.
    BadFormat,
    /// Well-formed, but fewer searches than required.
    TooFewSearches,
    /// Well-formed and searched enough, but the answer is not cover-EM correct (and
    /// correctness was required).
    Incorrect,
    /// Kept.
    Keep,
}

/// The rejection-sampling filter: all format checks hold, at least `min_searches` searches,
/// and — when `require_correct` — the answer is cover-EM correct against `answers`.
pub fn judge(
    report: &FormatReport,
    answers: &[String],
    require_correct: bool,
    min_searches: usize,
) -> Verdict {
    if !report.all_ok() {
        return Verdict::BadFormat;
    }
    if report.searches < min_searches {
        return Verdict::TooFewSearches;
    }
    let correct = report
        .answer
        .as_deref()
        .is_some_and(|a| score_answer(a, answers).cover_em);
    if require_correct && !correct {
        return Verdict::Incorrect;
    }
    Verdict::Keep
}

/// How [`collect`] samples and what it keeps. No defaults here: `sleuth collect`'s flags and
/// a curriculum's `[[phase]]` state theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectOptions {
    /// Questions per rollout call (each sampled `samples_per_question` times).
    pub batch: usize,
    /// Keep only trajectories whose answer is cover-EM correct.
    pub require_correct: bool,
    /// Fewest searches a kept trajectory made.
    pub min_searches: usize,
    /// Sampling seed.
    pub seed: u64,
}

/// Rolls out `questions` in `env` (`opts.batch` per rollout call, G =
/// `env.rollout.samples_per_question`) with `model` (base weights or a checkpoint's, or a
/// remote [`Policy`]), keeps the trajectories [`judge`] accepts and hands each to `keep` as an
/// [`SftExample`].
///
/// # Errors
/// [`RolloutError`] when a prompt cannot be built or does not fit the context.
pub fn collect<P: Policy + ?Sized>(
    model: &P,
    env: &Env,
    questions: &[Question],
    opts: &CollectOptions,
    mut keep: impl FnMut(&SftExample),
) -> Result<CollectStats, RolloutError> {
    let (tokenizer, prompt, rollout_cfg) = (&env.tokenizer, &env.prompt, &env.rollout);
    let CollectOptions {
        batch,
        require_correct,
        min_searches,
        seed,
    } = *opts;
    let bare = PromptConfig {
        demonstrations: Vec::new(),
        ..prompt.clone()
    };
    let mut sampler = Sampler::new(rollout_cfg.sampling(seed));
    let mut stats = CollectStats::default();
    for chunk in questions.chunks(batch.max(1)) {
        let texts: Vec<String> = chunk.iter().map(|q| q.question.clone()).collect();
        let (episodes, _) = model.rollout(env, &texts, &mut sampler)?;
        stats.questions += chunk.len();
        for ep in episodes {
            stats.sampled += 1;
            let q = &chunk[ep.question_index];
            let report = FormatReport::check(&ep.solution);
            match judge(&report, &q.answers, require_correct, min_searches) {
                Verdict::BadFormat => continue,
                Verdict::TooFewSearches => {
                    stats.format_ok += 1;
                    stats.too_few_searches += 1;
                    continue;
                }
                Verdict::Incorrect => {
                    stats.format_ok += 1;
                    continue;
                }
                Verdict::Keep => stats.format_ok += 1,
            }
            stats.count_kept(report.searches);
            keep(&example(
                &bare,
                tokenizer,
                &q.question,
                &ep.tokens[ep.prompt_len..],
                &ep.mask[ep.prompt_len..],
            )?);
        }
    }
    Ok(stats)
}

/// An SFT example: `question` under the bare prompt (mask 0), then `response` with its mask.
fn example(
    bare: &PromptConfig,
    tokenizer: &Tokenizer,
    question: &str,
    response: &[u32],
    response_mask: &[u8],
) -> Result<SftExample, RolloutError> {
    let mut tokens = bare.encode(tokenizer, question)?;
    let prompt_len = tokens.len();
    let mut mask = vec![0u8; prompt_len];
    tokens.extend_from_slice(response);
    mask.extend_from_slice(response_mask);
    Ok(SftExample {
        question: question.to_string(),
        tokens,
        mask,
        prompt_len,
    })
}

/// The reasoning a scripted episode writes before each query and before its answer: one pool
/// of phrasings per situation, from which [`scripted`] picks deterministically (seed and
/// question index), so the cold start does not teach one fixed sentence. Placeholders:
/// `{entity}` is the entity searched next; `{sentence}` the quoted documents sentence that
/// holds the answer, `{title}` its document's title, `{answer}` the answer; `{first_title}`,
/// `{first}`, `{second_title}` and `{second}` the two compared passages of a yes/no question
/// and the sentence quoted from each. Defaults stated once, here.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptPhrases {
    /// Before the first query (the question itself).
    pub first_search: Vec<String>,
    /// Before a bridge follow-up on an entity the documents so far name (`{entity}`).
    pub bridge_named: Vec<String>,
    /// Before a bridge follow-up on an entity the question names but the documents so far do
    /// not (`{entity}`). An entity named in neither is never searched.
    pub bridge_in_question: Vec<String>,
    /// Before a comparison follow-up on a compared entity still missing (`{entity}`).
    pub comparison: Vec<String>,
    /// After the last documents block, before `</think>`: quotes the documents sentence that
    /// holds the answer, then gives it (`{sentence}`, `{title}`, `{answer}`).
    pub quote_answer: Vec<String>,
    /// After the last documents block of a yes/no comparison, before `</think>`: quotes both
    /// compared passages, then concludes (`{first_title}`, `{first}`, `{second_title}`,
    /// `{second}`, `{answer}`).
    pub quote_yes_no: Vec<String>,
}

impl Default for ScriptPhrases {
    fn default() -> Self {
        let pool = |p: &[&str]| p.iter().map(|s| s.to_string()).collect();
        Self {
            first_search: pool(&[
                "I need to look up the facts this question depends on.",
                "Let me search for the key facts in the question first.",
                "I don't know this offhand, so I will search for it.",
                "To answer this I should first find documents about the question.",
                "I will start by searching for the question itself.",
                "First I need some background on this; let me search.",
                "I should check the facts before answering, so I will search.",
            ]),
            bridge_named: pool(&[
                "The documents mention {entity} only in passing. I need to search for {entity} next.",
                "So the question hinges on {entity}. Let me look up {entity}.",
                "The results point to {entity}; now I need facts about {entity} itself.",
                "{entity} comes up in these documents. To get the rest of the answer I will search for {entity}.",
                "That gives me the first link: {entity}. Next I should find out more about {entity}.",
                "These passages name {entity} but say little more. A search for {entity} should fill the gap.",
            ]),
            bridge_in_question: pool(&[
                "The question also names {entity}, which these documents do not cover. Let me search for {entity}.",
                "Nothing here is about {entity}, which the question mentions. I will search for {entity}.",
                "The question asks about {entity}, and the results so far say nothing about it. Next I search for {entity}.",
                "I still need the facts on {entity} that the question refers to. Let me look up {entity}.",
                "These passages miss {entity} from the question, so I will search for {entity} directly.",
                "To follow the question's link through {entity}, I need documents on {entity}.",
            ]),
            comparison: pool(&[
                "To compare, I also need facts about {entity}.",
                "These documents do not cover {entity}, so I will search for {entity} as well.",
                "I still need information on {entity} before I can compare.",
                "Now let me look up {entity} for the other side of the comparison.",
                "The comparison needs {entity} too; a search for {entity} comes next.",
                "I have nothing on {entity} yet. Let me search for {entity}.",
            ]),
            quote_answer: pool(&[
                "The passage on {title} says: \"{sentence}\" So the answer is {answer}.",
                "The key line is in the {title} document: \"{sentence}\" That makes the answer {answer}.",
                "According to \"{title}\": \"{sentence}\" Therefore the answer is {answer}.",
                "Here is what settles it, from {title}: \"{sentence}\" The answer is {answer}.",
                "Reading the documents again, {title} states: \"{sentence}\" So it is {answer}.",
                "I found the answer in the passage about {title}: \"{sentence}\" Hence, {answer}.",
                "\"{sentence}\" That sentence from {title} gives the answer: {answer}.",
            ]),
            quote_yes_no: pool(&[
                "The passage on {first_title} says: \"{first}\" The passage on {second_title} says: \"{second}\" Comparing the two, the answer is {answer}.",
                "For {first_title}: \"{first}\" For {second_title}: \"{second}\" Putting these side by side, the answer is {answer}.",
                "I have both sides now. {first_title}: \"{first}\" {second_title}: \"{second}\" So the answer is {answer}.",
                "The documents describe {first_title}: \"{first}\" And {second_title}: \"{second}\" From these two, the answer is {answer}.",
                "First, {first_title}: \"{first}\" Second, {second_title}: \"{second}\" Weighing both, the answer is {answer}.",
                "Checking both passages: \"{first}\" (from {first_title}) and \"{second}\" (from {second_title}). The answer is {answer}.",
            ]),
        }
    }
}

/// Situations a phrase is picked for (salts of the deterministic choice).
#[derive(Clone, Copy)]
enum Situation {
    First = 1,
    BridgeNamed,
    BridgeInQuestion,
    Comparison,
    Answer,
    YesNo,
}

/// SplitMix64's first output from state `z`: a well-mixed 64-bit hash of `z`.
fn mix(z: u64) -> u64 {
    crate::hash::splitmix64_mix(z.wrapping_add(crate::hash::GOLDEN_GAMMA))
}

/// The phrase for `situation` in question `index` under `seed`; the `nth` use of one situation
/// in an episode takes the next phrase of the pool, so two follow-ups differ. Empty pool: "".
fn pick(pool: &[String], seed: u64, index: usize, situation: Situation, nth: usize) -> &str {
    if pool.is_empty() {
        return "";
    }
    let h = mix(mix(mix(seed) ^ index as u64) ^ situation as u64);
    &pool[(h as usize).wrapping_add(nth) % pool.len()]
}

/// `template` with every `{key}` of `values` replaced by its value, in one pass: a value that
/// itself holds `{…}` (a quoted sentence might) is not expanded again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let hit = values.iter().find(|(key, _)| {
            tail.strip_prefix(key)
                .is_some_and(|after| after.starts_with('}'))
        });
        match hit {
            Some((key, value)) => {
                out.push_str(value);
                rest = &tail[key.len() + 1..];
            }
            None => {
                out.push('{');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `reason` then `rest`, joined by one space (no space when `reason` is empty).
fn join(reason: &str, rest: &str) -> String {
    if reason.is_empty() {
        rest.to_string()
    } else {
        format!("{reason} {rest}")
    }
}

/// A support title as a search query: without a trailing parenthetical disambiguator
/// (`"Lilu (mythology)"` → `"Lilu"`).
pub fn entity_query(title: &str) -> String {
    let t = title.trim();
    let bare = match (t.ends_with(')'), t.rfind(" (")) {
        (true, Some(at)) if at > 0 => &t[..at],
        _ => t,
    };
    bare.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The most words a quoted sentence keeps; a longer one is cut to this many around the answer.
const QUOTE_MAX_WORDS: usize = 40;

/// `text` lowercased with its whitespace runs collapsed to one space, for [`mentions`].
fn folded(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether `needle` occurs in `haystack` (both [`folded`]) as whole words: not inside a longer
/// word (`"lee"` is not in `"leland"`). An empty needle occurs nowhere.
fn mentions(haystack: &str, needle: &str) -> bool {
    !needle.is_empty()
        && haystack.match_indices(needle).any(|(at, _)| {
            let before = haystack[..at].chars().next_back();
            let after = haystack[at + needle.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

/// The text of `hit` exactly as [`documents_block`] inserts it with `max_words`, without the
/// `(n)` numbering and the quoted title in front of it.
fn inserted_text(hit: &Hit, max_words: usize) -> String {
    if max_words == 0 {
        return hit.text.clone();
    }
    let title_words = format!("\"{}\"", hit.title).split_whitespace().count();
    hit.render()
        .split_whitespace()
        .take(max_words)
        .skip(title_words)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sentences of `text`: split after `. `, `! ` and `? ` (the mark stays with its sentence)
/// and at newlines, trimmed, empty ones dropped. Each is a verbatim slice of `text`.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let (end, next) = match c {
            '\n' => (i, i + 1),
            '.' | '!' | '?' if bytes.get(i + 1) == Some(&b' ') => (i + 1, i + 1),
            _ => continue,
        };
        out.push(text[start..end].trim());
        start = next;
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Byte spans of the whitespace-separated words of `s`.
fn word_spans(s: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(at)) => {
                spans.push((at, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(at) = start {
        spans.push((at, s.len()));
    }
    spans
}

/// The first `n` words of `s`, verbatim.
fn first_words(s: &str, n: usize) -> &str {
    match word_spans(s).get(n.saturating_sub(1)) {
        Some(&(_, end)) if n > 0 => &s[..end],
        _ if n == 0 => "",
        _ => s,
    }
}

/// `sentence` as a quote for `answer`: the whole sentence when it covers the answer (cover-EM)
/// in at most [`QUOTE_MAX_WORDS`] words; for a longer one, the [`QUOTE_MAX_WORDS`]-word window
/// centred on the shortest run of words that covers it. `None` when the sentence does not
/// cover the answer, or no window that short does. Always a verbatim slice of `sentence`.
fn quote_of<'a>(sentence: &'a str, answer: &str) -> Option<&'a str> {
    let gold = [answer.to_string()];
    let covers = |s: &str| score_answer(s, &gold).cover_em;
    if !covers(sentence) {
        return None;
    }
    let words = word_spans(sentence);
    if words.len() <= QUOTE_MAX_WORDS {
        return Some(sentence);
    }
    let slice = |from: usize, to: usize| &sentence[words[from].0..words[to - 1].1];
    let (from, to) = (1..=QUOTE_MAX_WORDS).find_map(|len| {
        (0..=words.len() - len)
            .map(|from| (from, from + len))
            .find(|&(from, to)| covers(slice(from, to)))
    })?;
    let start = from
        .saturating_sub((QUOTE_MAX_WORDS - (to - from)) / 2)
        .min(words.len() - QUOTE_MAX_WORDS);
    Some(slice(start, start + QUOTE_MAX_WORDS))
}

/// The first documents sentence of `hits` (in insertion order, each as inserted with
/// `max_words`) that quotes `answer` by [`quote_of`], with its document's title.
fn find_quote(hits: &[Hit], max_words: usize, answer: &str) -> Option<(String, String)> {
    hits.iter().find_map(|h| {
        let text = inserted_text(h, max_words);
        let quote = sentences(&text)
            .into_iter()
            .find_map(|s| quote_of(s, answer))?
            .to_string();
        Some((h.title.clone(), quote))
    })
}

/// Whether `answer` is a yes/no answer under the scoring rules (`True`/`False` count).
fn is_yes_no(answer: &str) -> bool {
    matches!(
        crate::reward::AnswerRules::default()
            .normalize(answer)
            .as_str(),
        "yes" | "no"
    )
}

/// Writes one scripted episode per question (see the module docs). The solution text is
///
/// ```text
///  {first} <|begin_of_query|> {question} <|end_of_query|>{documents block}
/// ({follow-up} <|begin_of_query|> {entity} <|end_of_query|>{documents block})*
/// {quote} </think>
/// <answer> {answer} </answer>
/// ```
///
/// with the policy text mask 1 and each documents block (the retriever's top-`top_k` for the
/// query as the environment would extract it, rendered by [`documents_block`]) mask 0, after
/// the prompt without demonstrations (mask 0).
///
/// **Follow-ups search only what the policy could know.** When the question has
/// `support_titles` and the hits so far miss some of them, a missing title is searched by
/// [`entity_query`] only if that entity occurs (case-insensitive, as whole words) in the
/// question or in a documents block inserted so far; visibility is re-checked after every hop,
/// so one hop's documents can name the next entity. Titles the question names go first; one
/// search per title, up to `max_searches` searches in all; a hop whose hits still miss its
/// title is kept. A missing title whose entity stays visible nowhere is not searched
/// (`hops_unseen`), and the episode goes on with what it found. The earlier script searched
/// every missing title by name, knowledge the policy never has: it learned to re-search the
/// question's entity as a "second hop" (docs/learning.md). The phrase before a follow-up says
/// why: for a comparison (`kind == "comparison"`) the other compared entity; otherwise whether
/// the documents so far or only the question named it. Questions without support titles, and
/// single-hop questions (`kind == "single-hop"`, NQ-open), get the one search of the question.
///
/// **The answer is read, not announced.** `{answer}` is the first gold answer of at most 10
/// words (not yes/no) that some documents sentence covers (cover-EM), and the text before
/// `</think>` quotes that sentence verbatim (the first one, in insertion order; at most
/// `QUOTE_MAX_WORDS` words around the answer) with its document's title, from
/// `phrases.quote_answer`. The earlier generic "the documents say the answer is X" never
/// pointed at evidence, and the policy rarely picked the answer out of its documents (right on
/// 15 of the 65 eval questions whose documents held it). A comparison whose gold answer is
/// yes/no is kept only when its searches returned every support title (at least two): it
/// quotes the first sentence of the first two support passages and concludes, from
/// `phrases.quote_yes_no` (`kept_yes_no`).
///
/// Skipped: questions with no quotable answer (`uncovered`: no sentence covers a gold answer,
/// or a yes/no comparison missing a support passage), a failing search, a solution whose
/// format checks fail, fewer than `min_searches` searches (counted in `too_few_searches`: with
/// 2, a cold start whose every episode searches again after its first documents, so that
/// greedy decoding does not collapse onto the one-search path, docs/learning.md round 3; a
/// single-hop phase uses 1), or more than `max_new_tokens` policy tokens (`context_tokens` in
/// all). `sampled` counts questions tried. Phrases are picked from `phrases` by `seed` and the
/// question's index in `questions`.
///
/// # Errors
/// [`RolloutError`] when the prompt or the text cannot be encoded.
pub fn scripted(
    env: &Env,
    phrases: &ScriptPhrases,
    questions: &[Question],
    min_searches: usize,
    seed: u64,
    mut keep: impl FnMut(&SftExample),
) -> Result<CollectStats, RolloutError> {
    let (tokenizer, retriever, rollout_cfg) =
        (&env.tokenizer, env.retriever.as_ref(), &env.rollout);
    let bare = PromptConfig {
        demonstrations: Vec::new(),
        ..env.prompt.clone()
    };
    let mut stats = CollectStats::default();
    let encode = |text: &str| -> Result<Vec<u32>, RolloutError> {
        Ok(tokenizer
            .encode(text, false)
            .map_err(crate::model::ModelError::from)?)
    };
    for (index, q) in questions.iter().enumerate() {
        stats.questions += 1;
        stats.sampled += 1;
        let Some(plan) = plan_episode(retriever, rollout_cfg, phrases, q, seed, index) else {
            continue;
        };
        stats.hops_unseen += plan.unseen;
        let Some(close) = closing(&plan, q, phrases, rollout_cfg.doc_max_words, seed, index) else {
            stats.uncovered += 1;
            continue;
        };
        let mut segments = plan.segments;
        segments.push((
            join(
                &close.reason,
                &format!("</think>\n<answer> {} {END_ANSWER}", close.answer),
            ),
            1,
        ));
        let solution: String = segments.iter().map(|(s, _)| s.as_str()).collect();
        if !FormatReport::check(&solution).all_ok() {
            continue;
        }
        stats.format_ok += 1;
        if plan.searches < min_searches {
            stats.too_few_searches += 1;
            continue;
        }
        let (mut tokens, mut mask) = (Vec::new(), Vec::new());
        for (text, m) in &segments {
            let ids = encode(text)?;
            mask.extend(std::iter::repeat_n(*m, ids.len()));
            tokens.extend(ids);
        }
        let ex = example(&bare, tokenizer, &q.question, &tokens, &mask)?;
        let policy_tokens = mask.iter().filter(|&&m| m == 1).count();
        if policy_tokens > rollout_cfg.max_new_tokens
            || ex.tokens.len() > rollout_cfg.context_tokens
        {
            stats.too_long += 1;
            continue;
        }
        stats.count_kept(plan.searches);
        stats.kept_with_unseen_hop += usize::from(plan.unseen > 0);
        stats.kept_yes_no += usize::from(close.yes_no);
        keep(&ex);
    }
    Ok(stats)
}

/// How a scripted episode ends: the text before `</think>` and the answer.
struct Closing {
    /// The quote(s) and conclusion (mask 1).
    reason: String,
    /// The gold answer written between the answer tags.
    answer: String,
    /// A yes/no comparison (quotes both compared passages).
    yes_no: bool,
}

/// The ending of [`scripted`] for question `q` after `plan`'s searches; `None` when nothing in
/// the inserted documents supports a gold answer (see [`scripted`]).
fn closing(
    plan: &Plan,
    q: &Question,
    phrases: &ScriptPhrases,
    max_words: usize,
    seed: u64,
    index: usize,
) -> Option<Closing> {
    let yes_no = q.answers.iter().find(|a| is_yes_no(a));
    if let (Some("comparison"), Some(answer)) = (q.kind.as_deref(), yes_no) {
        if q.support_titles.len() < 2 || !q.support_titles.iter().all(|t| plan.returned(t)) {
            return None;
        }
        let first_sentence = |title: &str| -> Option<String> {
            let hit = plan.hits.iter().find(|h| h.title == title)?;
            let text = inserted_text(hit, max_words);
            let first = sentences(&text).into_iter().next()?;
            Some(first_words(first, QUOTE_MAX_WORDS).to_string())
        };
        let (first_title, second_title) = (&q.support_titles[0], &q.support_titles[1]);
        let (first, second) = (first_sentence(first_title)?, first_sentence(second_title)?);
        let reason = fill(
            pick(&phrases.quote_yes_no, seed, index, Situation::YesNo, 0),
            &[
                ("first_title", first_title),
                ("first", &first),
                ("second_title", second_title),
                ("second", &second),
                ("answer", answer),
            ],
        );
        return Some(Closing {
            reason,
            answer: answer.clone(),
            yes_no: true,
        });
    }
    let (answer, title, sentence) = q
        .answers
        .iter()
        .filter(|a| a.split_whitespace().count() <= 10 && !is_yes_no(a))
        .find_map(|a| {
            let (title, sentence) = find_quote(&plan.hits, max_words, a)?;
            Some((a, title, sentence))
        })?;
    let reason = fill(
        pick(&phrases.quote_answer, seed, index, Situation::Answer, 0),
        &[
            ("sentence", &sentence),
            ("title", &title),
            ("answer", answer),
        ],
    );
    Some(Closing {
        reason,
        answer: answer.clone(),
        yes_no: false,
    })
}

/// The searches of one scripted episode, before its answer.
struct Plan {
    /// Policy text (mask 1) and documents blocks (mask 0), in order.
    segments: Vec<(String, u8)>,
    /// Every hit inserted so far, in order.
    hits: Vec<Hit>,
    /// The question, [`folded`].
    question: String,
    /// Every documents block inserted so far, [`folded`] and joined by spaces.
    documents: String,
    /// Searches run.
    searches: usize,
    /// Missing support titles not searched because their entity was visible nowhere.
    unseen: usize,
}

impl Plan {
    /// Whether a hit so far has title `title`.
    fn returned(&self, title: &str) -> bool {
        self.hits.iter().any(|h| h.title == title)
    }

    /// Whether the documents so far name `entity` (whole words, any case).
    fn documents_name(&self, entity: &str) -> bool {
        mentions(&self.documents, &folded(entity))
    }

    /// Whether the policy has seen `entity` so far: in the question or in the documents.
    fn sees(&self, entity: &str) -> bool {
        mentions(&self.question, &folded(entity)) || self.documents_name(entity)
    }

    /// Appends `{lead}{reason} <|begin_of_query|> {query} <|end_of_query|>` (mask 1) and the
    /// documents block for the query the environment would extract from it (mask 0). `None`
    /// when that query is empty or the search fails.
    fn search(
        &mut self,
        retriever: &dyn Retriever,
        rollout_cfg: &RolloutConfig,
        lead: &str,
        reason: &str,
        query: &str,
    ) -> Option<()> {
        let segment = format!(
            "{lead}{}",
            join(reason, &format!("{BEGIN_QUERY} {query} {END_QUERY}"))
        );
        let searched = extract_query(&segment)?;
        let hits = retriever.search(&searched, rollout_cfg.top_k).ok()?;
        let block = documents_block(&hits, rollout_cfg.doc_max_words);
        self.documents.push(' ');
        self.documents.push_str(&folded(&block));
        self.hits.extend(hits);
        self.segments.push((segment, 1));
        self.segments.push((block, 0));
        self.searches += 1;
        Some(())
    }
}

/// Runs the hops of [`scripted`] for question `q`; `None` when a search fails, no search is
/// allowed, or a query comes out empty.
fn plan_episode(
    retriever: &dyn Retriever,
    rollout_cfg: &RolloutConfig,
    phrases: &ScriptPhrases,
    q: &Question,
    seed: u64,
    index: usize,
) -> Option<Plan> {
    if rollout_cfg.max_searches == 0 {
        return None;
    }
    let question = q.question.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut plan = Plan {
        segments: Vec::new(),
        hits: Vec::new(),
        question: folded(&question),
        documents: String::new(),
        searches: 0,
        unseen: 0,
    };
    let first = pick(&phrases.first_search, seed, index, Situation::First, 0);
    plan.search(retriever, rollout_cfg, " ", first, &question)?;
    if q.kind.as_deref() == Some("single-hop") {
        return Some(plan);
    }

    let comparison = q.kind.as_deref() == Some("comparison");
    // (title, entity) per support title; entities the question names come first (the first
    // link of a bridge), stable otherwise.
    let mut order: Vec<(&str, String)> = q
        .support_titles
        .iter()
        .map(|t| (t.as_str(), entity_query(t)))
        .filter(|(_, entity)| !entity.is_empty())
        .collect();
    order.sort_by_key(|(_, entity)| !mentions(&plan.question, &folded(entity)));
    let mut searched = vec![false; order.len()];
    let (mut n_named, mut n_in_question, mut n_comparison) = (0, 0, 0);
    while plan.searches < rollout_cfg.max_searches {
        let next = (0..order.len())
            .find(|&i| !searched[i] && !plan.returned(order[i].0) && plan.sees(&order[i].1));
        let Some(i) = next else { break };
        searched[i] = true;
        let entity = order[i].1.as_str();
        let reason = if comparison {
            n_comparison += 1;
            pick(
                &phrases.comparison,
                seed,
                index,
                Situation::Comparison,
                n_comparison - 1,
            )
        } else if plan.documents_name(entity) {
            n_named += 1;
            pick(
                &phrases.bridge_named,
                seed,
                index,
                Situation::BridgeNamed,
                n_named - 1,
            )
        } else {
            n_in_question += 1;
            pick(
                &phrases.bridge_in_question,
                seed,
                index,
                Situation::BridgeInQuestion,
                n_in_question - 1,
            )
        };
        let reason = fill(reason, &[("entity", entity)]);
        plan.search(retriever, rollout_cfg, "", &reason, entity)?;
    }
    plan.unseen = (0..order.len())
        .filter(|&i| !searched[i] && !plan.returned(order[i].0) && !plan.sees(&order[i].1))
        .count();
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(title: &str, text: &str) -> Hit {
        Hit {
            id: title.into(),
            title: title.into(),
            text: text.into(),
            score: 1.0,
        }
    }

    #[test]
    fn sentences_split_after_marks_and_at_newlines() {
        let text = "Leland is a town. It lies in Brunswick County! Is it big? No\nA second line.  ";
        assert_eq!(
            sentences(text),
            vec![
                "Leland is a town.",
                "It lies in Brunswick County!",
                "Is it big?",
                "No",
                "A second line."
            ]
        );
        // No space after the mark: not a sentence end (decimals, initials glued to a word).
        assert_eq!(
            sentences("It cost 3.5 million."),
            vec!["It cost 3.5 million."]
        );
        assert!(sentences(" \n ").is_empty());
    }

    #[test]
    fn inserted_text_is_what_the_documents_block_shows_after_the_title() {
        let h = hit(
            "Maximum Overdrive (film)",
            "Maximum  Overdrive is a 1986 film.\nIt was directed by Stephen King.",
        );
        for max_words in [0, 3, 5, 9, 100] {
            let text = inserted_text(&h, max_words);
            let block = documents_block(std::slice::from_ref(&h), max_words);
            let line = format!("(1)\"Maximum Overdrive (film)\" {text}");
            assert!(
                block.contains(&line) || (text.is_empty() && max_words <= 3),
                "{max_words}: {text:?} not in {block:?}"
            );
        }
        assert_eq!(inserted_text(&h, 5), "Maximum Overdrive");
        assert_eq!(inserted_text(&h, 3), "");
        assert_eq!(inserted_text(&h, 0), h.text);
    }

    #[test]
    fn long_sentences_are_cut_around_the_answer() {
        assert_eq!(
            quote_of("It was directed by Stephen King.", "Stephen King"),
            Some("It was directed by Stephen King.")
        );
        assert_eq!(
            quote_of("It was directed by Stephen.", "Stephen King"),
            None
        );
        let filler: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let long = format!(
            "{} directed by Stephen King in {}",
            filler[..30].join(" "),
            filler[30..].join(" ")
        );
        let quote = quote_of(&long, "Stephen King").unwrap();
        assert!(long.contains(quote));
        assert_eq!(quote.split_whitespace().count(), QUOTE_MAX_WORDS);
        assert!(quote.contains("Stephen King"), "{quote}");
        // Centred on the answer: 19 words before "Stephen King", 19 after.
        assert!(
            quote.starts_with("w13 ") && quote.ends_with(" w47"),
            "{quote}"
        );
        // Answer words too far apart for one window: no quote.
        let apart = format!("Stephen {} King", filler.join(" "));
        assert_eq!(quote_of(&apart, "Stephen King"), None);
    }

    #[test]
    fn find_quote_takes_the_first_covering_sentence_in_insertion_order() {
        let hits = vec![
            hit("A", "Nothing here. Still nothing."),
            hit("B", "Kansas City is big. The Chiefs play in Kansas City."),
            hit("C", "Kansas City again."),
        ];
        assert_eq!(
            find_quote(&hits, 0, "Kansas City"),
            Some(("B".to_string(), "Kansas City is big.".to_string()))
        );
        assert_eq!(find_quote(&hits, 0, "Topeka"), None);
    }

    #[test]
    fn mentions_needs_whole_words() {
        let seen = folded("The town of  Leland, North\nCarolina");
        assert!(mentions(&seen, &folded("Leland, North Carolina")));
        assert!(mentions(&seen, "leland"));
        assert!(!mentions(&seen, "lee"));
        assert!(!mentions(&seen, "land"));
        assert!(!mentions(&seen, ""));
    }

    #[test]
    fn fill_replaces_known_keys_once() {
        assert_eq!(
            fill(
                "{title}: \"{sentence}\" So {answer}. {other}",
                &[
                    ("sentence", "a {answer} b"),
                    ("title", "T"),
                    ("answer", "X")
                ]
            ),
            "T: \"a {answer} b\" So X. {other}"
        );
        assert_eq!(first_words("one two  three four", 3), "one two  three");
        assert_eq!(first_words("one two", 5), "one two");
    }

    #[test]
    fn yes_no_answers_follow_the_scoring_rules() {
        assert!(is_yes_no("yes") && is_yes_no("No.") && is_yes_no("True"));
        assert!(!is_yes_no("Yesterday") && !is_yes_no("Norway"));
    }
}
