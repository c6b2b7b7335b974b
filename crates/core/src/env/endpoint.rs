//! Where an OpenAI-compatible completions server is and how to talk to it: the options of
//! `[model.openai]` (a policy served elsewhere, [`super::remote`]) and `[rollout.openai]` (the
//! served engine RL samples from, `crate::rl::served`). A file of its own so that the rollout
//! settings can hold them without importing the remote policy that uses them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `[model.openai]` / `[rollout.openai]`: where the server is. Defaults stated once, in `impl Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteOptions {
    /// Base URL of the server, with or without `/v1` (`http://127.0.0.1:8080`); a URL ending
    /// in `/completions` is used as given. Required.
    pub url: String,
    /// The request's `model` field (the name the server serves). Default `"default"`.
    pub model: String,
    /// Most requests in flight at once (episodes progress independently). Default 16.
    pub concurrency: usize,
    /// Timeout of one request, in seconds. Default 300.
    pub timeout_secs: u64,
    /// Retries of a request after a connection error, timeout, 429 or 5xx. Default 3.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds, doubled per retry. Default 500.
    pub retry_backoff_ms: u64,
    /// Extra request fields, added to (or replacing) the ones sleuth sends, e.g.
    /// `{ top_k = -1 }` for a vLLM older than 0.8 (which refuses `top_k = 0`). Default empty.
    pub extra: serde_json::Map<String, Value>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: "default".into(),
            concurrency: 16,
            timeout_secs: 300,
            retries: 3,
            retry_backoff_ms: 500,
            extra: serde_json::Map::new(),
        }
    }
}

impl RemoteOptions {
    /// The server's root, without `/v1` or `/completions` (`http://127.0.0.1:8000`): where the
    /// adapter API lives (`{root}/v1/load_lora_adapter`).
    pub fn root(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = base.strip_suffix("/completions").unwrap_or(base);
        base.strip_suffix("/v1").unwrap_or(base).to_string()
    }

    /// The completions URL requests go to.
    pub fn endpoint(&self) -> String {
        crate::http::client::openai_route(&self.url, "completions")
    }
}
