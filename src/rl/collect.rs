//! Rejection-sampled demonstrations for the cold start (DeepSeek-R1's recipe).
//!
//! Rollouts run with the demonstration prompt (which makes a small model write queries at
//! all); only trajectories whose format checks all hold — and, when `require_correct`, whose
//! answer is cover-EM correct — are kept. Each kept trajectory is stored **without** the
//! demonstrations: the prompt is re-encoded from the same template with no demonstrations,
//! and the policy's response tokens (with their mask; inserted documents stay mask 0) are
//! appended unchanged, so SFT teaches the format the policy will later be asked for
//! without the crutch.
//!
//! [`scripted`] is the fallback when the policy is too weak for rejection sampling to keep
//! anything (the 135M default kept 0 of 64 format-valid rollouts, docs/learning.md): one
//! episode per training question written from a [`ScriptTemplate`] — the question itself as
//! the query, the real retriever's documents inserted exactly as the environment inserts them
//! (mask 0), and a gold answer that those documents contain (questions whose top-k documents
//! do not cover a gold answer are skipped, so every kept episode is grounded in its search).

use burn::tensor::backend::Backend;
use serde::Serialize;

use super::sft::SftExample;
use super::trainer::Question;
use crate::env::protocol::{documents_block, BEGIN_QUERY, END_ANSWER, END_QUERY};
use crate::env::rollout::RolloutError;
use crate::env::{rollout, PromptConfig, RolloutConfig};
use crate::model::{Llama, Sampler, Tokenizer};
use crate::reward::{score_answer, FormatReport};
use crate::search::Retriever;

/// Counts from a collection run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CollectStats {
    /// Questions rolled out.
    pub questions: usize,
    /// Trajectories sampled.
    pub sampled: usize,
    /// Trajectories whose format checks all hold.
    pub format_ok: usize,
    /// Trajectories kept (format ok, and correct when required).
    pub kept: usize,
}

/// Rolls out `questions` (`batch` per rollout call, G = `rollout.samples_per_question`), keeps
/// the passing trajectories and hands each to `keep` as an [`SftExample`].
///
/// # Errors
/// [`RolloutError`] when a prompt cannot be built or does not fit the context.
#[allow(clippy::too_many_arguments)]
pub fn collect<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    retriever: &dyn Retriever,
    prompt: &PromptConfig,
    rollout_cfg: &RolloutConfig,
    questions: &[Question],
    batch: usize,
    require_correct: bool,
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
        let (episodes, _) = rollout(
            model,
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
            let report = FormatReport::check(&ep.solution);
            if !report.all_ok() {
                continue;
            }
            stats.format_ok += 1;
            let q = &chunk[ep.question_index];
            let correct = report
                .answer
                .as_deref()
                .is_some_and(|a| score_answer(a, &q.answers).cover_em);
            if require_correct && !correct {
                continue;
            }
            stats.kept += 1;
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

/// The policy-side text of a scripted episode. `{question}` and `{answer}` are replaced; the
/// query tags, the documents block and `</answer>` are added by [`scripted`]. Defaults stated
/// once, here.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTemplate {
    /// Text before `<|begin_of_query|>` (after the prompt's `<think>`).
    pub before_query: String,
    /// Text after the documents block, up to and including `<answer> ` (the answer follows).
    pub after_documents: String,
}

impl Default for ScriptTemplate {
    fn default() -> Self {
        Self {
            before_query: " I need to look up the facts this question depends on. ".into(),
            after_documents: "The documents say the answer is {answer}. </think>\n<answer> ".into(),
        }
    }
}

/// Writes one scripted episode per question (see the module docs): prompt without
/// demonstrations (mask 0), `before_query` + `<|begin_of_query|> {question} <|end_of_query|>`
/// (mask 1), the retriever's top-`rollout_cfg.top_k` documents as the environment renders them
/// (mask 0), then `after_documents` + `{answer} </answer>` (mask 1), where `{answer}` is the
/// first gold answer of at most 10 words that the documents cover (cover-EM). Questions with
/// no such answer, a failing search, or a solution whose format checks fail are skipped.
/// `sampled` counts questions tried.
///
/// # Errors
/// [`RolloutError`] when the prompt or the text cannot be encoded.
pub fn scripted(
    tokenizer: &Tokenizer,
    retriever: &dyn Retriever,
    prompt: &PromptConfig,
    rollout_cfg: &RolloutConfig,
    template: &ScriptTemplate,
    questions: &[Question],
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
    for q in questions {
        stats.questions += 1;
        stats.sampled += 1;
        let Ok(hits) = retriever.search(&q.question, rollout_cfg.top_k) else {
            continue;
        };
        let block = documents_block(&hits, rollout_cfg.doc_max_words);
        let Some(answer) = q
            .answers
            .iter()
            .filter(|a| a.split_whitespace().count() <= 10)
            .find(|a| score_answer(&block, std::slice::from_ref(a)).cover_em)
        else {
            continue;
        };
        let query = q.question.split_whitespace().collect::<Vec<_>>().join(" ");
        let head = format!(
            "{}{BEGIN_QUERY} {query} {END_QUERY}",
            template.before_query.replace("{question}", &q.question)
        );
        let tail = format!(
            "{}{answer} {END_ANSWER}",
            template
                .after_documents
                .replace("{question}", &q.question)
                .replace("{answer}", answer)
        );
        if !FormatReport::check(&format!("{head}{block}{tail}")).all_ok() {
            continue;
        }
        stats.format_ok += 1;
        let (mut tokens, mut mask) = (Vec::new(), Vec::new());
        for (text, m) in [
            (head.as_str(), 1u8),
            (block.as_str(), 0),
            (tail.as_str(), 1),
        ] {
            let ids = encode(text)?;
            mask.extend(std::iter::repeat_n(m, ids.len()));
            tokens.extend(ids);
        }
        stats.kept += 1;
        keep(&example(&bare, tokenizer, &q.question, &tokens, &mask)?);
    }
    Ok(stats)
}
