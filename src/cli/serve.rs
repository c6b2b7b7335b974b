//! The `sleuth serve` and `sleuth chat` commands: flags, model loading, the runtime, and a
//! terminal client that streams from the server and shows each search as it happens.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;

use sleuth::config::RunConfig;
use sleuth::http::client::{Client, ClientOptions};
use sleuth::model::backend::{self, Inference};
use sleuth::model::{Llama, Tokenizer};
use sleuth::rl::checkpoint;
use sleuth::search::Retriever;
use sleuth::serve::{Agent, ServeError, ServeOptions};

/// Environment variable holding the bearer key when `--api-key` is not given.
pub const API_KEY_ENV: &str = "SLEUTH_API_KEY";

/// Flags of `sleuth serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Env config (model, search, prompt and rollout settings, as in training).
    #[arg(long)]
    pub config: PathBuf,
    /// A PEFT LoRA adapter folder applied on top of the config's model, as vLLM's and
    /// llama.cpp's `--lora` do (overrides `[model] lora`; `sleuth export RUN --lora-only`
    /// writes one).
    #[arg(long, conflicts_with = "checkpoint")]
    pub lora: Option<PathBuf>,
    /// Serve the policy saved in this run directory's checkpoint (a training run, a curriculum
    /// phase, or a curriculum's folder: its last phase with a checkpoint).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Address to bind; the default keeps the server private to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port; 0 picks a free one (the bound address is printed as JSON on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from SLEUTH_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Model id clients name in requests.
    #[arg(long, default_value = "sleuth")]
    pub model_name: String,
    /// Requests that may wait for the generator; more are answered 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests batched into one rollout at most.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Seconds a request may take, queueing included.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send its request headers before its connection is closed
    /// (default 10).
    #[arg(long, value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Connections held open at once; more wait to be accepted (default 1024).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Serve a tiny random-weight model with the config's tokenizer (tests, CI, load runs).
    #[arg(long, hide = true)]
    pub tiny_test_model: bool,
    /// Search nothing (every search returns no documents); for tests without an index.
    #[arg(long, hide = true)]
    pub no_index: bool,
}

/// Flags of `sleuth chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer key (also read from SLEUTH_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Model id.
    #[arg(long, default_value = "sleuth")]
    pub model: String,
    /// Sampling temperature (default: the server's config).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Token budget per answer (default: the server's config).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Hide the agent's reasoning and documents; show searches and answers only.
    #[arg(long)]
    pub quiet: bool,
    /// Ask one question and exit (otherwise read questions from stdin, one per line).
    pub question: Option<String>,
}

/// A retriever that finds nothing.
struct NoIndex;
impl Retriever for NoIndex {
    fn search(
        &self,
        _q: &str,
        _k: usize,
    ) -> Result<Vec<sleuth::search::Hit>, sleuth::search::SearchError> {
        Ok(Vec::new())
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io {
        context: context.to_string(),
        source,
    }
}

/// Loads the agent `args` describe.
fn load_agent(args: &ServeArgs) -> Result<Agent<Inference>, ServeError> {
    let mut cfg = RunConfig::load(&args.config)?;
    super::lora_flag(&mut cfg, args.lora.as_deref());
    if cfg.model.backend != sleuth::config::PolicyBackend::Local {
        return Err(ServeError::Option(
            "[model] backend = \"openai\" is supported by `eval` and `collect` only; `serve` runs the policy in-process".into(),
        ));
    }
    let device = backend::device();
    let model_err = |source| ServeError::Model {
        path: cfg.model.path.clone(),
        source,
    };
    let (model, tokenizer): (Llama<Inference>, Tokenizer) = if args.tiny_test_model {
        let tok = sleuth::model::load_tokenizer(&cfg.model.path).map_err(model_err)?;
        (sleuth::serve::test_model::random(&tok, 0, &device), tok)
    } else {
        let mut loaded =
            sleuth::model::load::<Inference>(&cfg.model.path, &device).map_err(model_err)?;
        if let Some(run) = &args.checkpoint {
            loaded.model = checkpoint::load_saved(run, &device)?.0;
        }
        (loaded.model, loaded.tokenizer)
    };
    let retriever: std::sync::Arc<dyn Retriever> = if args.no_index {
        std::sync::Arc::new(NoIndex)
    } else {
        // Every backend a config names (BM25, the graph indexes, online, http), as `eval`.
        cfg.search
            .open()
            .map_err(|source| ServeError::Search {
                path: cfg.search.index.clone(),
                source,
            })?
            .into()
    };
    Ok(Agent {
        model,
        env: sleuth::env::Env {
            tokenizer,
            retriever,
            prompt: cfg.prompt,
            rollout: cfg.rollout,
        },
    })
}

/// `sleuth serve`: loads the agent and serves it until Ctrl-C.
///
/// # Errors
/// [`ServeError`] when loading or binding fails.
pub fn run_serve(mut args: ServeArgs) -> Result<(), ServeError> {
    if args.api_key.is_none() {
        args.api_key = std::env::var(API_KEY_ENV).ok();
    }
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(ServeError::Option("--api-key is empty".into()));
    }
    let agent = load_agent(&args)?;
    let weights = agent.env.rollout.weights;
    let mut opts = ServeOptions {
        model_name: args.model_name.clone(),
        api_key: args.api_key.clone(),
        max_body_bytes: args.max_body_bytes,
        queue: args.queue.max(1),
        max_batch: args.max_batch.max(1),
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        ..ServeOptions::default()
    };
    if let Some(s) = args.header_read_timeout {
        opts.conn.header_read_timeout_s = s;
    }
    if let Some(n) = args.max_connections {
        opts.conn.max_connections = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    rt.block_on(async move {
        let (listener, addr) = sleuth::serve::bind(SocketAddr::new(args.host, args.port)).await?;
        println!("{}", serde_json::json!({ "listening": addr.to_string() }));
        let _ = std::io::stdout().flush();
        eprintln!(
            "sleuth serve: http://{addr}/v1/chat/completions (model `{}`, backend {}, decode {}{})",
            opts.model_name,
            backend::name(),
            weights.name(),
            if opts.api_key.is_some() {
                ", key required"
            } else {
                ""
            }
        );
        sleuth::serve::serve(listener, agent, opts, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

/// `sleuth chat`: a terminal client for `sleuth serve` that streams the agent's work.
///
/// # Errors
/// [`ServeError`] when the server cannot be reached or answers with an error.
pub fn run_chat(mut args: ChatArgs) -> Result<(), ServeError> {
    if args.api_key.is_none() {
        args.api_key = std::env::var(API_KEY_ENV).ok();
    }
    let client = Client::new(&ClientOptions::default()).map_err(|e| ServeError::Io {
        context: "starting the HTTP client".into(),
        source: std::io::Error::other(e),
    })?;
    client.block_on(async {
        if let Some(q) = &args.question {
            return ask(client.http(), &args, q).await;
        }
        let stdin = std::io::stdin();
        loop {
            eprint!("\n> ");
            let mut line = String::new();
            if stdin.read_line(&mut line).map_err(io("reading stdin"))? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = ask(client.http(), &args, line.trim()).await {
                eprintln!("error: {e}");
            }
        }
    })
}

// serde_json::Value's `[key]` reads give Null for a missing key or a non-object (never a
// panic); the one `[key] =` write is on the `json!` object built here.
#[allow(clippy::indexing_slicing)]
async fn ask(client: &reqwest::Client, args: &ChatArgs, question: &str) -> Result<(), ServeError> {
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let http = |source| ServeError::Http {
        url: url.clone(),
        source,
    };
    let mut body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": question}],
        "stream": true,
    });
    if let Some(t) = args.temperature {
        body["temperature"] = t.into();
    }
    if let Some(m) = args.max_tokens {
        body["max_tokens"] = m.into();
    }
    let mut req = client.post(&url).json(&body);
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(http)?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<sleuth::serve::api::ErrorBody>(&text)
            .map(|e| e.error.message)
            .unwrap_or(text);
        return Err(ServeError::Server {
            status: status.as_u16(),
            message,
        });
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    let mut out = std::io::stdout();
    let mut in_answer = false;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.map_err(http)?);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                let _ = writeln!(out);
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            if let Some(err) = v.get("error") {
                return Err(ServeError::Server {
                    status: 200,
                    message: err["message"]
                        .as_str()
                        .unwrap_or("stream error")
                        .to_string(),
                });
            }
            let Some(delta) = v["choices"].get(0).map(|c| &c["delta"]) else {
                continue;
            };
            if let Some(calls) = delta["tool_calls"].as_array() {
                for c in calls {
                    let q: serde_json::Value =
                        serde_json::from_str(c["function"]["arguments"].as_str().unwrap_or("{}"))
                            .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "\n\x1b[1;34m[search] {}\x1b[0m",
                        q["query"].as_str().unwrap_or("")
                    );
                }
            }
            if let Some(r) = delta["reasoning_content"].as_str() {
                if !args.quiet {
                    let _ = write!(out, "\x1b[2m{r}\x1b[0m");
                }
            }
            if let Some(c) = delta["content"].as_str() {
                if !c.is_empty() {
                    if !in_answer {
                        let _ = write!(out, "\n\x1b[1;32m[answer]\x1b[0m ");
                        in_answer = true;
                    }
                    let _ = write!(out, "{c}");
                }
            }
            let _ = out.flush();
        }
    }
    let _ = writeln!(out);
    Ok(())
}
