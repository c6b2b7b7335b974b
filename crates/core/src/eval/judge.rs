//! An LLM judge for answers (R1-Searcher's ACC_L): a chat model reads the question, the
//! reference answers and the prediction and says `True` or `False`.
//!
//! Rule-based metrics miss correct answers worded differently ("Nidal Malik Hasan" for "Nidal
//! Hasan" passes cover-EM, "JFK" for "John F. Kennedy" does not), so R1-Searcher reports a
//! judge's accuracy beside cover-EM. The transport is [`crate::llm::LlmClient`]: any
//! OpenAI-compatible chat endpoint, at most `concurrency` requests in flight, retries with
//! exponential backoff on connection errors, timeouts, 429 and 5xx, and an append-only reply
//! cache whose key hashes the model, [`crate::llm::JUDGE_PROMPT_VERSION`] and the prompt —
//! which holds the (question, golds, prediction) triple — so a re-run sends nothing.
//!
//! Verdicts are parsed strictly ([`parse_verdict`]); a reply that is neither `True` nor
//! `False` is counted as unparseable (and as not correct in ACC_L), never guessed. An empty
//! prediction (an episode that never answered) is judged `False` without a request.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::llm::{judge_prompt, LlmClient, LlmError};

use super::parse_verdict;

/// ACC_L in percent (one decimal) and the count of unparseable verdicts, from one verdict per
/// row (`None`: unparseable, counted as not correct). No rows gives 0 %.
pub fn acc_l(verdicts: &[Option<bool>]) -> (f64, usize) {
    let correct = verdicts.iter().filter(|v| **v == Some(true)).count();
    let percent = 100.0 * correct as f64 / verdicts.len().max(1) as f64;
    let unparsed = verdicts.iter().filter(|v| v.is_none()).count();
    ((percent * 10.0).round() / 10.0, unparsed)
}

/// One answer to judge.
#[derive(Debug, Clone, Copy)]
pub struct JudgeItem<'a> {
    /// The question as asked.
    pub question: &'a str,
    /// The acceptable gold answers (at least one).
    pub golds: &'a [String],
    /// The prediction (the text inside `<answer>`); empty when the episode never answered.
    pub prediction: &'a str,
}

/// Judge every item, in order: `Some(true)` correct, `Some(false)` wrong, `None` when the
/// reply could not be parsed.
///
/// # Errors
/// The first request error of the client ([`LlmError`]); the replies received before it are
/// in the cache, so a re-run asks only for the rest.
pub fn judge_all(
    client: &LlmClient,
    items: &[JudgeItem<'_>],
) -> Result<Vec<Option<bool>>, LlmError> {
    let mut verdicts = vec![Some(false); items.len()];
    // The verdict slots of the items with a prediction, each beside its item.
    let asked: Vec<(&mut Option<bool>, &JudgeItem<'_>)> = verdicts
        .iter_mut()
        .zip(items)
        .filter(|(_, item)| !item.prediction.trim().is_empty())
        .collect();
    let prompts: Vec<_> = asked
        .iter()
        .map(|(_, item)| judge_prompt(item.question, item.golds, item.prediction))
        .collect();
    let replies = client.complete_all(&prompts)?;
    for ((slot, item), reply) in asked.into_iter().zip(&replies) {
        *slot = parse_verdict(reply);
        if slot.is_none() {
            tracing::warn!(question = item.question, reply = %reply, "unparseable judge verdict");
        }
    }
    Ok(verdicts)
}
