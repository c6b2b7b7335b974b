//! Prompt templates as configuration.
//!
//! The template is text with three placeholders: `{system}` (the protocol instructions),
//! `{demonstrations}` (zero or more worked episodes) and `{question}`. It must end where the
//! policy continues writing: the base-style default ends with `Assistant: <think>`, so the
//! generated solution is exactly the text the format checks read (DESIGN §4). Chat models can
//! use a template with their chat markers, or set `chat = true` to wrap the same text in the
//! model's own chat template ([`crate::model::chat`]): the system text as the system turn, the
//! demonstrations and question as the user turn, and the assistant turn opened with
//! `<think>`. Marker text in the template is parsed as special tokens, the question never is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{ModelError, Tokenizer};

/// The default protocol instructions (our wording of R1-Searcher's base-model prompt).
pub const DEFAULT_SYSTEM: &str = "A conversation between User and Assistant. The User asks a question and the Assistant answers it. \
The Assistant first reasons step by step inside <think> </think> and then gives the final answer inside <answer> </answer>, \
for example \"<think> reasoning </think>\n<answer> final answer </answer>\". The final answer is short: a name, a date, a number or a few words. \
While reasoning, the Assistant may look things up: it writes keywords between <|begin_of_query|> and <|end_of_query|>, \
for example \"<|begin_of_query|> keyword_1 keyword_2 <|end_of_query|>\", one fact per query, \
and the search system replies with passages between <|begin_of_documents|> and <|end_of_documents|>.";

/// The default template: base-model style, generation continues after `Assistant: <think>`.
pub const DEFAULT_TEMPLATE: &str =
    "{system}\n\n{demonstrations}User:{question}\nAssistant: <think>";

/// Prompt configuration (`[prompt]` in an env config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Template with `{system}`, `{demonstrations}`, `{question}`. Default: [`DEFAULT_TEMPLATE`].
    pub template: String,
    /// Protocol instructions substituted for `{system}`. Default: [`DEFAULT_SYSTEM`].
    pub system: String,
    /// Worked episodes, each a complete `User:… Assistant: <think> … </answer>` text, joined
    /// with blank lines and substituted for `{demonstrations}`. Default: none.
    pub demonstrations: Vec<String>,
    /// A text file whose content is appended to `demonstrations` (relative paths resolve
    /// against the config file's folder). Default: none.
    pub demonstrations_file: Option<PathBuf>,
    /// Render through the model's chat template (instruct models): system turn = `system`,
    /// user turn = demonstrations + question, then the assistant turn opened with
    /// `<think>`; `template` is not used. Default: false.
    pub chat: bool,
}

/// Stands in for the question while a chat template renders, so the rendered text splits
/// into the parts before and after it (control characters no template produces).
const QUESTION_MARK: &str = "\u{1}sleuth-question\u{1}";

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            template: DEFAULT_TEMPLATE.to_string(),
            system: DEFAULT_SYSTEM.to_string(),
            demonstrations: Vec::new(),
            demonstrations_file: None,
            chat: false,
        }
    }
}

/// Errors building a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The template lacks `{question}`.
    #[error("prompt template has no {{question}} placeholder")]
    NoQuestion,
    /// The demonstrations file could not be read.
    #[error("reading demonstrations file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Tokenization failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// `chat = true` but the model has no chat template, or it failed to render.
    #[error("[prompt] chat = true: {0}")]
    Chat(String),
}

impl PromptConfig {
    /// Loads `demonstrations_file` (resolved against `base_dir`) into `demonstrations`.
    ///
    /// # Errors
    /// [`PromptError::Io`] naming the file.
    pub fn resolve_files(&mut self, base_dir: &Path) -> Result<(), PromptError> {
        if let Some(file) = self.demonstrations_file.take() {
            let path = if file.is_absolute() {
                file
            } else {
                base_dir.join(file)
            };
            let text = std::fs::read_to_string(&path).map_err(|source| PromptError::Io {
                path: path.clone(),
                source,
            })?;
            self.demonstrations.push(text.trim().to_string());
        }
        Ok(())
    }

    /// The text before and after the question; `tokenizer` supplies the chat template when
    /// `chat` is set.
    fn parts(&self, tokenizer: Option<&Tokenizer>) -> Result<(String, String), PromptError> {
        let demos = if self.demonstrations.is_empty() {
            String::new()
        } else {
            format!("{}\n\n", self.demonstrations.join("\n\n"))
        };
        if self.chat {
            use crate::model::chat::{ChatMessage, ChatTemplate};
            let tok = tokenizer
                .ok_or_else(|| PromptError::Chat("rendering needs the model's tokenizer".into()))?;
            let template = ChatTemplate::from_tokenizer(tok)
                .map_err(|e| PromptError::Chat(e.to_string()))?
                .ok_or_else(|| PromptError::Chat("the model ships no chat template".into()))?;
            let turns = [
                ChatMessage::new("system", &self.system),
                ChatMessage::new("user", &format!("{demos}{QUESTION_MARK}")),
            ];
            let text = template
                .render(&turns, true)
                .map_err(|e| PromptError::Chat(e.to_string()))?;
            let (pre, post) = text
                .split_once(QUESTION_MARK)
                .ok_or_else(|| PromptError::Chat("the template dropped the user turn".into()))?;
            return Ok((pre.to_string(), format!("{post}<think>")));
        }
        let filled = self
            .template
            .replace("{system}", &self.system)
            .replace("{demonstrations}", &demos);
        let (pre, post) = filled
            .split_once("{question}")
            .ok_or(PromptError::NoQuestion)?;
        Ok((pre.to_string(), post.to_string()))
    }

    /// The full prompt text for `question` (template mode).
    ///
    /// # Errors
    /// [`PromptError::NoQuestion`] for a template without the placeholder;
    /// [`PromptError::Chat`] with `chat = true` (use [`PromptConfig::render_for`]).
    pub fn render(&self, question: &str) -> Result<String, PromptError> {
        let (pre, post) = self.parts(None)?;
        Ok(format!("{pre}{}{post}", question.trim()))
    }

    /// The full prompt text for `question`, through the model's chat template when `chat` is
    /// set.
    ///
    /// # Errors
    /// As [`PromptConfig::render`], and [`PromptError::Chat`].
    pub fn render_for(&self, tokenizer: &Tokenizer, question: &str) -> Result<String, PromptError> {
        let (pre, post) = self.parts(Some(tokenizer))?;
        Ok(format!("{pre}{}{post}", question.trim()))
    }

    /// Token ids of the prompt for `question`: template text with special tokens parsed, the
    /// question as plain text, BOS first when the model expects it ([`Tokenizer::with_bos`]).
    ///
    /// # Errors
    /// [`PromptError`] for a bad template or a tokenizer failure.
    pub fn encode(&self, tokenizer: &Tokenizer, question: &str) -> Result<Vec<u32>, PromptError> {
        let (pre, post) = self.parts(Some(tokenizer))?;
        let mut ids = tokenizer.encode(&pre, true).map_err(ModelError::from)?;
        ids.extend(
            tokenizer
                .encode(question.trim(), false)
                .map_err(ModelError::from)?,
        );
        ids.extend(tokenizer.encode(&post, true).map_err(ModelError::from)?);
        Ok(tokenizer.with_bos(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_places_demonstrations_before_question() {
        let cfg = PromptConfig {
            demonstrations: vec![
                "User:Q1\nAssistant: <think> x </think>\n<answer> A1 </answer>".into(),
            ],
            ..Default::default()
        };
        let text = cfg.render("Who?").unwrap();
        assert!(text.starts_with(DEFAULT_SYSTEM));
        assert!(text.ends_with("User:Who?\nAssistant: <think>"));
        let demo_at = text.find("User:Q1").unwrap();
        assert!(demo_at < text.find("User:Who?").unwrap());
    }

    #[test]
    fn template_without_question_is_an_error() {
        let cfg = PromptConfig {
            template: "{system}".into(),
            ..Default::default()
        };
        assert!(matches!(cfg.render("x"), Err(PromptError::NoQuestion)));
    }
}
