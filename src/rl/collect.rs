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
//! entity). Documents are inserted exactly as the environment inserts them (mask 0); the final
//! answer is a gold answer that the documents cover (questions whose documents cover none are
//! skipped, so every kept episode is grounded in its searches). The reasoning between blocks is
//! drawn from [`ScriptPhrases`] pools, varied per question.

use serde::Serialize;

use super::sft::SftExample;
use super::trainer::Question;
use crate::env::protocol::{documents_block, extract_query, BEGIN_QUERY, END_ANSWER, END_QUERY};
use crate::env::rollout::RolloutError;
use crate::env::{Policy, PromptConfig, RolloutConfig};
use crate::model::{Sampler, Tokenizer};
use crate::reward::{score_answer, FormatReport};
use crate::search::Retriever;

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
    /// Scripted: questions skipped because their documents cover no gold answer.
    pub uncovered: usize,
    /// Scripted: well-formed episodes dropped for exceeding `max_new_tokens` policy tokens or
    /// `context_tokens` in all.
    pub too_long: usize,
    /// Trajectories kept (format ok, enough searches, and correct when required).
    pub kept: usize,
    /// Kept trajectories by number of searches: entry `n` counts those with `n` searches, the
    /// last entry those with 3 or more.
    pub kept_by_searches: [usize; 4],
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

/// Rolls out `questions` (`batch` per rollout call, G = `rollout.samples_per_question`) with
/// `model` (base weights or a checkpoint's, or a remote [`Policy`]), keeps the trajectories [`judge`] accepts and hands
/// each to `keep` as an [`SftExample`].
///
/// # Errors
/// [`RolloutError`] when a prompt cannot be built or does not fit the context.
#[allow(clippy::too_many_arguments)]
pub fn collect<P: Policy + ?Sized>(
    model: &P,
    tokenizer: &Tokenizer,
    retriever: &dyn Retriever,
    prompt: &PromptConfig,
    rollout_cfg: &RolloutConfig,
    questions: &[Question],
    batch: usize,
    require_correct: bool,
    min_searches: usize,
    seed: u64,
    mut keep: impl FnMut(&SftExample),
) -> Result<CollectStats, RolloutError> {
    let bare = PromptConfig {
        demonstrations: Vec::new(),
        ..prompt.clone()
    };
    let mut sampler = Sampler::new(rollout_cfg.sampling(seed));
    let mut stats = CollectStats::default();
    for chunk in questions.chunks(batch.max(1)) {
        let texts: Vec<String> = chunk.iter().map(|q| q.question.clone()).collect();
        let (episodes, _) = model.rollout(
            tokenizer,
            retriever,
            prompt,
            rollout_cfg,
            &texts,
            &mut sampler,
        )?;
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
/// question index), so the cold start does not teach one fixed sentence. `{entity}` is replaced
/// by the entity searched next, `{answer}` by the answer. Defaults stated once, here.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptPhrases {
    /// Before the first query (the question itself).
    pub first_search: Vec<String>,
    /// Before a bridge follow-up whose entity the documents so far name.
    pub bridge_named: Vec<String>,
    /// Before a bridge follow-up whose entity the documents so far do not name.
    pub bridge_unnamed: Vec<String>,
    /// Before a comparison follow-up on a compared entity still missing.
    pub comparison: Vec<String>,
    /// After the last documents block, before `</think>`.
    pub before_answer: Vec<String>,
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
            bridge_unnamed: pool(&[
                "These documents do not cover {entity}, which the question depends on. I will search for {entity} directly.",
                "Nothing here is about {entity} yet. Let me search for {entity}.",
                "I still need information on {entity}, which the results so far do not mention.",
                "The documents miss {entity}. A search for {entity} should help.",
                "The answer depends on {entity}, and these results say nothing about {entity}. I will look that up.",
                "I have not found anything on {entity} yet, so I will search for {entity}.",
            ]),
            comparison: pool(&[
                "To compare, I also need facts about {entity}.",
                "These documents do not cover {entity}, so I will search for {entity} as well.",
                "I still need information on {entity} before I can compare.",
                "Now let me look up {entity} for the other side of the comparison.",
                "The comparison needs {entity} too; a search for {entity} comes next.",
                "I have nothing on {entity} yet. Let me search for {entity}.",
            ]),
            before_answer: pool(&[
                "The documents say the answer is {answer}.",
                "Based on these documents, the answer is {answer}.",
                "Putting the documents together, the answer is {answer}.",
                "That settles it: {answer}.",
                "From what I found, the answer should be {answer}.",
                "The retrieved passages support {answer} as the answer.",
            ]),
        }
    }
}

/// Situations a phrase is picked for (salts of the deterministic choice).
#[derive(Clone, Copy)]
enum Situation {
    First = 1,
    BridgeNamed,
    BridgeUnnamed,
    Comparison,
    Answer,
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

/// Writes one scripted episode per question (see the module docs). The solution text is
///
/// ```text
///  {first} <|begin_of_query|> {question} <|end_of_query|>{documents block}
/// ({follow-up} <|begin_of_query|> {entity} <|end_of_query|>{documents block})*
/// {before_answer} </think>
/// <answer> {answer} </answer>
/// ```
///
/// with the policy text mask 1 and each documents block (the retriever's top-`top_k` for the
/// query as the environment would extract it, rendered by [`documents_block`]) mask 0, after
/// the prompt without demonstrations (mask 0).
///
/// Follow-ups: when the question has `support_titles` and the hits so far miss some of them,
/// each missing title (those the question names first) is searched by [`entity_query`], one
/// search per title, re-checking after every hop, up to `max_searches` searches in all. The
/// phrase before a follow-up says why: for a comparison (`kind == "comparison"`) the other
/// compared entity; otherwise (bridge) whether the documents so far named the entity. A hop
/// whose hits still miss its title is kept. Questions without support titles get one search.
///
/// `{answer}` is the first gold answer of at most 10 words that the documents blocks together
/// cover (cover-EM). Questions with no such answer, a failing search, a solution whose format
/// checks fail, fewer than `min_searches` searches (counted in `too_few_searches`: with 2, a
/// cold start whose every episode searches again after its first documents, so that greedy
/// decoding does not collapse onto the one-search path, docs/learning.md round 3), or more
/// than `max_new_tokens` policy tokens (`context_tokens` in all) are skipped. `sampled`
/// counts questions tried. Phrases are picked from `phrases` by `seed` and the question's
/// index in `questions`.
///
/// # Errors
/// [`RolloutError`] when the prompt or the text cannot be encoded.
#[allow(clippy::too_many_arguments)]
pub fn scripted(
    tokenizer: &Tokenizer,
    retriever: &dyn Retriever,
    prompt: &PromptConfig,
    rollout_cfg: &RolloutConfig,
    phrases: &ScriptPhrases,
    questions: &[Question],
    min_searches: usize,
    seed: u64,
    mut keep: impl FnMut(&SftExample),
) -> Result<CollectStats, RolloutError> {
    let bare = PromptConfig {
        demonstrations: Vec::new(),
        ..prompt.clone()
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
        let Some(answer) = q
            .answers
            .iter()
            .filter(|a| a.split_whitespace().count() <= 10)
            .find(|a| score_answer(&plan.documents, std::slice::from_ref(a)).cover_em)
        else {
            stats.uncovered += 1;
            continue;
        };
        let reason = pick(&phrases.before_answer, seed, index, Situation::Answer, 0)
            .replace("{answer}", answer);
        let mut segments = plan.segments;
        segments.push((
            join(
                &reason,
                &format!("</think>\n<answer> {answer} {END_ANSWER}"),
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
        keep(&ex);
    }
    Ok(stats)
}

/// The searches of one scripted episode, before its answer.
struct Plan {
    /// Policy text (mask 1) and documents blocks (mask 0), in order.
    segments: Vec<(String, u8)>,
    /// All documents blocks, concatenated.
    documents: String,
    /// Titles of every hit so far.
    titles: Vec<String>,
    /// Searches run.
    searches: usize,
}

impl Plan {
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
        self.titles.extend(hits.iter().map(|h| h.title.clone()));
        let block = documents_block(&hits, rollout_cfg.doc_max_words);
        self.documents.push_str(&block);
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
    let mut plan = Plan {
        segments: Vec::new(),
        documents: String::new(),
        titles: Vec::new(),
        searches: 0,
    };
    if rollout_cfg.max_searches == 0 {
        return None;
    }
    let question = q.question.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = pick(&phrases.first_search, seed, index, Situation::First, 0);
    plan.search(retriever, rollout_cfg, " ", first, &question)?;

    let comparison = q.kind.as_deref() == Some("comparison");
    let lower_question = question.to_lowercase();
    // Entities the question names come first (the first link of a bridge); stable otherwise.
    let mut order: Vec<&String> = q.support_titles.iter().collect();
    order.sort_by_key(|t| !lower_question.contains(&entity_query(t).to_lowercase()));
    let (mut n_bridge_named, mut n_bridge_unnamed, mut n_comparison) = (0, 0, 0);
    for title in order {
        if plan.searches >= rollout_cfg.max_searches {
            break;
        }
        if plan.titles.iter().any(|t| t == title) {
            continue;
        }
        let entity = entity_query(title);
        if entity.is_empty() {
            continue;
        }
        let reason = if comparison {
            n_comparison += 1;
            pick(
                &phrases.comparison,
                seed,
                index,
                Situation::Comparison,
                n_comparison - 1,
            )
        } else if plan
            .documents
            .to_lowercase()
            .contains(&entity.to_lowercase())
        {
            n_bridge_named += 1;
            pick(
                &phrases.bridge_named,
                seed,
                index,
                Situation::BridgeNamed,
                n_bridge_named - 1,
            )
        } else {
            n_bridge_unnamed += 1;
            pick(
                &phrases.bridge_unnamed,
                seed,
                index,
                Situation::BridgeUnnamed,
                n_bridge_unnamed - 1,
            )
        };
        let reason = reason.replace("{entity}", &entity);
        plan.search(retriever, rollout_cfg, "", &reason, &entity)?;
    }
    Some(plan)
}
