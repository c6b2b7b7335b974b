//! OpenAI chat-completions wire types: the request we accept, the response and stream chunks
//! we send, and the error body.
//!
//! Requests are parsed leniently about *unknown* fields (clients send many we do not use,
//! such as `user` or `frequency_penalty`) and strictly about *known* ones: a `temperature`
//! that is a string is a 400, not a silent default.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde::{Deserialize, Serialize};

/// A chat message's content: a string, or a list of typed parts whose text parts are joined.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": …}`); parts without text are skipped.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Part type (`text`, `image_url`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text of the content.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(p) => p
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the client (appended to the agent's protocol instructions).
    System,
    /// OpenAI's newer name for `system`.
    Developer,
    /// The person asking.
    User,
    /// An earlier answer.
    Assistant,
    /// A tool result (kept as text of the conversation).
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// The author.
    pub role: Role,
    /// The text (may be null for assistant messages that only carried tool calls).
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with token usage before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions` body (the fields sleuth reads; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model id; must be the served one (see `GET /v1/models`).
    pub model: String,
    /// The conversation; the last message must be the user's question.
    pub messages: Vec<Message>,
    /// Sampling temperature in [0, 2]; 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Policy tokens the agent may sample in total (reasoning, queries and answer).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Newer alias of `max_tokens` (wins when both are given).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Strings that end the answer text.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// RNG seed; a seeded request runs alone so it is reproducible.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Choices to sample.
    #[serde(default)]
    pub n: Option<u64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens fed to the model that it did not sample: the prompt and inserted documents.
    pub prompt_tokens: usize,
    /// Tokens the policy sampled.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

/// The function part of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Always `search`.
    pub name: String,
    /// JSON text `{"query": …}`.
    pub arguments: String,
}

/// A search the agent ran, reported as a tool call it made (and the server executed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Position among the choice's tool calls (streaming only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<usize>,
    /// `search_{choice}_{k}`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name and arguments.
    pub function: FunctionCall,
}

/// The assistant message of a non-streamed choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// The final answer (the text inside `<answer>…</answer>`, trimmed).
    pub content: String,
    /// The agent's trajectory before the answer: its reasoning, queries and the documents
    /// the server inserted.
    pub reasoning_content: String,
    /// The searches, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tool_calls: Vec<ToolCall>,
}

/// One non-streamed choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    /// Choice index.
    pub index: usize,
    /// The message.
    pub message: ResponseMessage,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Always null.
    pub logprobs: Option<()>,
}

/// `chat.completion` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<Choice>,
    /// Token counts over all choices.
    pub usage: Usage,
}

/// The delta of a stream chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant` on the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
    /// Answer text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
    /// Reasoning / trajectory text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reasoning_content: Option<String>,
    /// A search as it starts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: usize,
    /// What is new.
    pub delta: Delta,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Same id on every chunk of a stream.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// Usually one choice; empty on the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only on the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage: Option<Usage>,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Human-readable message.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_api_key`, `model_not_found`, …).
    pub code: Option<String>,
}
