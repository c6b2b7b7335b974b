//! The policy's tokenizer: byte-level BPE built from GGUF metadata or loaded from a Hugging Face
//! `tokenizer.json`, plus streaming detokenization for the rollout loop.
//!
//! Both sources end up as a [`tokenizers::Tokenizer`] (the Hugging Face Rust crate), so encoding
//! is that crate's well-tested BPE; this module only has to *describe* a GGUF vocabulary to it.
//!
//! **From GGUF** ([`Tokenizer::from_gguf`]) we read what llama.cpp's `llama_vocab::load` reads
//! (key names from the GGUF specification's "tokenizer" section):
//!
//! * `tokenizer.ggml.model` must be `gpt2` (byte-level BPE; SentencePiece `llama` vocabularies
//!   are not supported).
//! * `tokenizer.ggml.tokens` gives the vocabulary (id = position), `tokenizer.ggml.merges` the
//!   merge list in rank order (`"left right"`, split at the first space after the first
//!   character, as llama.cpp does).
//! * `tokenizer.ggml.token_type`: `CONTROL` (3) and `UNKNOWN` (2) tokens become *special* added
//!   tokens, `USER_DEFINED` (4) tokens non-special added tokens. This mirrors llama.cpp's
//!   `tokenizer_st_partition`: user-defined tokens are always matched in the text, control tokens
//!   only when special-token parsing is on.
//! * `tokenizer.ggml.pre` names the pre-tokenizer. llama.cpp (`llm_tokenizer_bpe` in
//!   `llama-vocab.cpp`) maps each name to a list of regexes applied in sequence, each splitting
//!   the pieces left by the previous one while keeping both matched and unmatched spans. We
//!   reproduce that with a `Sequence` of `Split(Regex, Isolated)` pre-tokenizers followed by the
//!   GPT-2 byte-to-unicode mapping (`ByteLevel` with its own regex off). For SmolLM2's `smollm`
//!   the list is `\p{N}` (every digit its own piece, so numbers tokenize digit by digit) then
//!   the GPT-2 regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
//!   The `gpt2`, `llama3` and `qwen2` families are included from the same table (see
//!   [`pre_tokenizer_regexes`]); other names are an error rather than a silent mis-tokenization.
//! * `tokenizer.ggml.bos_token_id`, `eos_token_id`, `padding_token_id`, `add_bos_token`.
//!
//! **From `tokenizer.json`** ([`Tokenizer::from_file`]) the file is used as is; BOS/EOS/PAD come
//! from a sibling `tokenizer_config.json` when present.
//!
//! **Encoding** never adds BOS/EOS ([`Tokenizer::encode`]); `parse_special` decides whether
//! control tokens written in the text (`<|im_start|>`) become their ids or are tokenized as
//! plain characters, like llama.cpp's `parse_special` flag. The two behaviours are two
//! pre-configured copies of the Hugging Face tokenizer (one with `encode_special_tokens` set),
//! so `encode` takes `&self` and the type is `Send + Sync`.
//!
//! **Streaming decode** ([`TokenStream`]): byte-level BPE can split one character across
//! tokens, so decoding token by token must hold back an incomplete UTF-8 tail. For byte-level
//! tokenizers we precompute every token's bytes once (the inverse GPT-2 byte mapping, applied
//! exactly as the `ByteLevel` decoder does) and the stream appends bytes to a small pending
//! buffer, emitting the longest valid UTF-8 prefix: O(token length) per step instead of
//! re-decoding the growing sequence. Other decoders fall back to the prefix-window algorithm of
//! `tokenizers`' own `DecodeStream`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile};

/// Errors from building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading the GGUF metadata failed (missing or mistyped key, ...).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` is not a byte-level BPE.
    #[error("{}: tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is supported", path.display())]
    UnsupportedModel {
        /// The GGUF file.
        path: PathBuf,
        /// The model name found.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module has no regexes for.
    #[error("{}: unknown pre-tokenizer `{name}` (tokenizer.ggml.pre); known: {known}", path.display())]
    UnknownPreTokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// The name found.
        name: String,
        /// The names we know, comma separated.
        known: String,
    },
    /// The vocabulary metadata is inconsistent.
    #[error("{}: invalid tokenizer metadata: {reason}", path.display())]
    InvalidVocab {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Loading a `tokenizer.json` (or its `tokenizer_config.json`) failed.
    #[error("cannot load tokenizer from {}: {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The `tokenizers` crate failed while encoding or decoding.
    #[error("tokenizer failure: {0}")]
    Tokenizers(Box<dyn std::error::Error + Send + Sync>),
    /// A token id outside the vocabulary was given to decode.
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// Result alias for this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// GGUF token types (`llama_token_type` / gguf-py `TokenType`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The GPT-2 pre-tokenizer regex as llama.cpp writes it (without the trailing `|\s+`, which is
/// unnecessary there because unmatched spans are kept as pieces anyway).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex, in the case-insensitive-free form llama.cpp uses.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex (Llama 3's with single digits), as llama.cpp writes it.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names we support, grouped as llama.cpp groups them.
const PRE_TOKENIZERS: &[(&[&str], &[&str], bool)] = &[
    // (names, regexes applied in sequence, ignore_merges)
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        &[r"\p{N}", GPT2_REGEX],
        false,
    ),
    (
        &["gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion"],
        &[GPT2_REGEX],
        false,
    ),
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"],
        &[LLAMA3_REGEX],
        true,
    ),
    (
        &["qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"],
        &[QWEN2_REGEX],
        false,
    ),
    (
        &["default"],
        &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_REGEX,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        false,
    ),
];

/// The regexes llama.cpp applies, in order, for the pre-tokenizer `name` (a
/// `tokenizer.ggml.pre` value), and whether that vocabulary ignores merges for words already in
/// the vocabulary (llama.cpp's `ignore_merges`, set for Llama 3). `None` for unknown names.
pub fn pre_tokenizer_regexes(name: &str) -> Option<(&'static [&'static str], bool)> {
    PRE_TOKENIZERS
        .iter()
        .find(|(names, _, _)| names.contains(&name))
        .map(|(_, regexes, ignore)| (*regexes, *ignore))
}

/// A byte-level BPE tokenizer with the special-token ids the policy needs. Cheap to clone
/// (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    /// Splits special tokens out of the text (`parse_special = true`).
    hf: tokenizers::Tokenizer,
    /// Treats special tokens as plain text (`parse_special = false`).
    hf_literal: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    /// The model's Jinja chat template (`tokenizer_config.json`'s `chat_template`, GGUF's
    /// `tokenizer.chat_template`), if it ships one.
    chat_template: Option<String>,
    /// Whether each id is a special (control) token, skipped by `skip_special` decoding.
    special: Vec<bool>,
    /// Every token's decoded bytes, for byte-level decoders; `None` otherwise.
    bytes: Option<Vec<Option<Box<[u8]>>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.vocab_size)
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .field("pad", &self.inner.pad)
            .field("byte_level", &self.inner.bytes.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path().to_path_buf();
        let invalid = |reason: String| TokenizerError::InvalidVocab {
            path: path.clone(),
            reason,
        };
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                path: path.clone(),
                model: model.to_string(),
            });
        }
        let pre = optional(gguf.get_str("tokenizer.ggml.pre"))?.unwrap_or("default");
        let (regexes, ignore_merges) =
            pre_tokenizer_regexes(pre).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                path: path.clone(),
                name: pre.to_string(),
                known: PRE_TOKENIZERS
                    .iter()
                    .flat_map(|(names, _, _)| names.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;

        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(invalid(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let types = match optional(gguf.get_int_array("tokenizer.ggml.token_type"))? {
            Some(t) if t.len() != n => {
                return Err(invalid(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    t.len()
                )))
            }
            Some(t) => t,
            None => vec![1; n],
        };

        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            if let Some(first) = vocab.insert(tok.to_string(), id as u32) {
                return Err(invalid(format!(
                    "token {tok:?} appears twice (ids {first} and {id})"
                )));
            }
        }
        let merge_strs = optional(gguf.get_str_array("tokenizer.ggml.merges"))?.unwrap_or_default();
        let mut merges = Vec::with_capacity(merge_strs.len());
        for (rank, m) in merge_strs.iter().enumerate() {
            // Split at the first space after the first character (a merge's left part is
            // never empty; a byte-level token never contains a raw space otherwise).
            let first_len = m.chars().next().map_or(0, char::len_utf8);
            let Some(space) = m[first_len..].find(' ').map(|i| i + first_len) else {
                return Err(invalid(format!(
                    "merge #{rank} {m:?} has no space separator"
                )));
            };
            merges.push((m[..space].to_string(), m[space + 1..].to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| invalid(format!("BPE model: {e}")))?;

        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
        for re in regexes {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| invalid(format!("pre-tokenizer regex {re:?}: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());

        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(Sequence::new(steps)));
        hf.with_decoder(Some(ByteLevel::new(false, false, false)));

        let mut special_tokens = Vec::new();
        let mut user_tokens = Vec::new();
        for (tok, &ty) in tokens.iter().zip(&types) {
            match ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                    special_tokens.push(AddedToken::from(tok.to_string(), true))
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user_tokens.push(AddedToken::from(tok.to_string(), false))
                }
                _ => {}
            }
        }
        hf.add_special_tokens(&special_tokens);
        hf.add_tokens(&user_tokens);

        let id_key = |key: &str| -> Result<Option<u32>> {
            match optional(gguf.get_u32(key))? {
                Some(id) if id as usize >= n => Err(invalid(format!(
                    "{key} = {id} is outside the vocabulary ({n} tokens)"
                ))),
                other => Ok(other),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let pad = id_key("tokenizer.ggml.padding_token_id")?;
        let add_bos = optional(gguf.get_bool("tokenizer.ggml.add_bos_token"))?.unwrap_or(false);
        let template = optional(gguf.get_str("tokenizer.chat_template"))?.map(str::to_string);
        Ok(Self::assemble(hf, bos, eos, pad, add_bos).with_chat_template(template))
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS/PAD are resolved from the `bos_token`,
    /// `eos_token` and `pad_token` entries of a `tokenizer_config.json` in the same directory
    /// when there is one (otherwise they are `None`), the chat template from its
    /// `chat_template`. Whether prompts start with BOS: its `add_bos_token` when present,
    /// else whether `tokenizer.json`'s post-processor adds BOS to a single sequence (Llama 3
    /// ships no `add_bos_token` and adds `<|begin_of_text|>` that way, as transformers does
    /// with `add_special_tokens=True`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let hf = tokenizers::Tokenizer::from_file(path).map_err(|source| TokenizerError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let (mut bos, mut eos, mut pad, mut add_bos) = (None, None, None, None);
        let mut template = None;
        if config_path.is_file() {
            let load_err =
                |source: Box<dyn std::error::Error + Send + Sync>| TokenizerError::Load {
                    path: config_path.clone(),
                    source,
                };
            let text = std::fs::read_to_string(&config_path).map_err(|e| load_err(e.into()))?;
            let config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| load_err(e.into()))?;
            let resolve = |key: &str| -> Result<Option<u32>> {
                let content = match config.get(key) {
                    Some(serde_json::Value::String(s)) => s.as_str(),
                    Some(serde_json::Value::Object(o)) => {
                        match o.get("content").and_then(|c| c.as_str()) {
                            Some(s) => s,
                            None => return Ok(None),
                        }
                    }
                    _ => return Ok(None),
                };
                hf.token_to_id(content)
                    .map(Some)
                    .ok_or_else(|| TokenizerError::InvalidVocab {
                        path: config_path.clone(),
                        reason: format!("{key} {content:?} is not in the vocabulary"),
                    })
            };
            bos = resolve("bos_token")?;
            eos = resolve("eos_token")?;
            pad = resolve("pad_token")?;
            add_bos = config.get("add_bos_token").and_then(|v| v.as_bool());
            template = match config.get("chat_template") {
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                // A list of named templates: the one named "default", else the first.
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            };
        }
        if template.is_none() {
            // Newer transformers write the template to its own file.
            let jinja = path.with_file_name("chat_template.jinja");
            template = std::fs::read_to_string(jinja).ok();
        }
        let add_bos = match (add_bos, bos) {
            (Some(flag), _) => flag,
            (None, Some(b)) => hf
                .encode("a", true)
                .map(|e| e.get_ids().first() == Some(&b))
                .unwrap_or(false),
            (None, None) => false,
        };
        Ok(Self::assemble(hf, bos, eos, pad, add_bos).with_chat_template(template))
    }

    fn with_chat_template(mut self, template: Option<String>) -> Self {
        Arc::make_mut(&mut self.inner).chat_template = template;
        self
    }

    fn assemble(
        hf: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
        add_bos: bool,
    ) -> Self {
        let mut hf_literal = hf.clone();
        hf_literal.set_encode_special_tokens(true);
        let vocab = hf.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut special = vec![false; vocab_size];
        for (id, tok) in hf.get_added_tokens_decoder() {
            // Added tokens past the vocabulary's largest id are left out.
            if let Some(flag) = special.get_mut(id as usize).filter(|_| tok.special) {
                *flag = true;
            }
        }
        let bytes = is_byte_level(hf.get_decoder()).then(|| {
            let inverse = byte_decoder();
            let mut table: Vec<Option<Box<[u8]>>> = vec![None; vocab_size];
            for (tok, id) in &vocab {
                // Always present: `vocab_size` is the largest id + 1.
                if let Some(slot) = table.get_mut(*id as usize) {
                    *slot = Some(token_to_bytes(tok, &inverse).into_boxed_slice());
                }
            }
            table
        });
        Tokenizer {
            inner: Arc::new(Inner {
                hf,
                hf_literal,
                vocab_size,
                bos,
                eos,
                pad,
                add_bos,
                chat_template: None,
                special,
                bytes,
            }),
        }
    }

    /// Overrides the BOS / EOS ids (e.g. from a model's `config.json`).
    pub fn with_special_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        inner.bos = bos;
        inner.eos = eos;
        self
    }

    /// Encodes `text` without adding BOS/EOS. With `parse_special`, special tokens written in
    /// the text (`<|im_start|>`) become their ids; without, they are tokenized as characters.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let hf = if parse_special {
            &self.inner.hf
        } else {
            &self.inner.hf_literal
        };
        let enc = hf
            .encode_fast(text, false)
            .map_err(TokenizerError::Tokenizers)?;
        Ok(enc.get_ids().to_vec())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.inner.vocab_size) {
            Some(&id) => Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.inner.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Decodes `ids` to text; invalid UTF-8 (a sequence cut inside a character) becomes
    /// U+FFFD. With `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .hf
            .decode(ids, skip_special)
            .map_err(TokenizerError::Tokenizers)
    }

    /// A streaming decoder for ids that arrive one at a time (see [`TokenStream`]).
    pub fn stream(&self, skip_special: bool) -> TokenStream {
        TokenStream {
            tok: self.clone(),
            skip_special,
            text: String::new(),
            pending: Vec::new(),
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }

    /// The id of a token given its vocabulary string (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.hf.token_to_id(token)
    }

    /// The vocabulary string of `id` (byte-level form, e.g. `"Ġthe"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    /// The bytes token `id` decodes to, for byte-level tokenizers (`None` for other decoders
    /// or unknown ids). Useful for byte-level stop-string matching.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.bytes.as_ref()?.get(id as usize)?.as_deref()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .special
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Number of ids (one more than the largest id, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// Beginning-of-sequence id, if the source defines one.
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// End-of-sequence id, if the source defines one.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// Padding id, if the source defines one.
    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad
    }

    /// Whether the model expects BOS prepended to prompts (`tokenizer.ggml.add_bos_token` /
    /// `add_bos_token`; `false` when absent). [`Tokenizer::encode`] never adds it itself.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// The model's Jinja chat template, if its files ship one (render it with
    /// [`crate::chat::ChatTemplate`]).
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// `ids` with BOS prepended when the model expects it ([`Tokenizer::add_bos`]) and it is
    /// not already there: what every prompt encoder calls once on a whole prompt.
    pub fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(b)) = (self.inner.add_bos, self.inner.bos) {
            if ids.first() != Some(&b) {
                ids.insert(0, b);
            }
        }
        ids
    }

    /// The underlying Hugging Face tokenizer (special tokens parsed).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.hf
    }
}

/// Incremental detokenizer: feed ids with [`TokenStream::push`] as they are sampled and get the
/// newly completed text back, never a broken UTF-8 character. [`TokenStream::text`] is the
/// whole text so far (what stop strings are checked against).
///
/// For byte-level tokenizers the concatenation of the pieces equals
/// [`Tokenizer::decode`] of all ids once [`TokenStream::finish`] has flushed any incomplete
/// tail (as U+FFFD, exactly as a full decode would render it).
#[derive(Debug, Clone)]
pub struct TokenStream {
    tok: Tokenizer,
    skip_special: bool,
    text: String,
    /// Byte-level path: bytes of a character not yet complete.
    pending: Vec<u8>,
    /// Fallback path: `tokenizers::step_decode_stream` state.
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl TokenStream {
    /// Adds one id; returns the text it completed (possibly empty, when the id ends inside a
    /// multi-byte character or is a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<&str> {
        self.tok.check_ids(&[id])?;
        let start = self.text.len();
        let inner = &self.tok.inner;
        // `check_ids` above rejected ids outside the vocabulary.
        if self.skip_special && inner.special.get(id as usize).copied().unwrap_or(false) {
            return Ok("");
        }
        match &inner.bytes {
            Some(table) => {
                // Ids inside the range but absent from the vocabulary (gaps) decode to nothing,
                // as in `tokenizers`.
                if let Some(Some(b)) = table.get(id as usize) {
                    self.pending.extend_from_slice(b);
                    drain_utf8(&mut self.pending, &mut self.text, false);
                }
            }
            None => {
                let piece = tokenizers::step_decode_stream(
                    &inner.hf,
                    vec![id],
                    self.skip_special,
                    &mut self.ids,
                    &mut self.prefix,
                    &mut self.prefix_index,
                )
                .map_err(TokenizerError::Tokenizers)?;
                if let Some(p) = piece {
                    self.text.push_str(&p);
                }
            }
        }
        Ok(&self.text[start..])
    }

    /// Everything decoded so far (excluding a held-back incomplete character).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: an incomplete trailing character becomes U+FFFD. Returns the full text.
    pub fn finish(mut self) -> String {
        drain_utf8(&mut self.pending, &mut self.text, true);
        self.text
    }
}

/// Moves the longest valid UTF-8 prefix of `pending` into `out`; invalid sequences become
/// U+FFFD (one per maximal invalid subsequence, as `String::from_utf8_lossy` does). An
/// incomplete sequence at the end stays in `pending` unless `flush`.
fn drain_utf8(pending: &mut Vec<u8>, out: &mut String, flush: bool) {
    let mut consumed = 0;
    loop {
        // `consumed` never passes `pending.len()`.
        match std::str::from_utf8(pending.get(consumed..).unwrap_or_default()) {
            Ok(s) => {
                out.push_str(s);
                consumed = pending.len();
                break;
            }
            Err(e) => {
                let valid = consumed + e.valid_up_to();
                // Safe by construction: `valid_up_to` bytes are valid UTF-8.
                let prefix = pending.get(consumed..valid).unwrap_or_default();
                out.push_str(std::str::from_utf8(prefix).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        consumed = valid + bad;
                    }
                    None => {
                        if flush {
                            out.push(char::REPLACEMENT_CHARACTER);
                            consumed = pending.len();
                        } else {
                            consumed = valid;
                        }
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..consumed);
}

/// Turns `Err(MissingKey)` into `Ok(None)`.
fn optional<T>(r: Result<T, GgufError>) -> Result<Option<T>, GgufError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_missing_key() => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => {
            !seq.get_decoders().is_empty()
                && seq
                    .get_decoders()
                    .iter()
                    .all(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
        }
        _ => false,
    }
}

/// GPT-2's byte-to-unicode table, inverted: `table[c]` is the byte that printable stand-in
/// `c` represents. Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves;
/// the other 68 bytes map, in byte order, to U+0100 onwards (so `Ġ` = U+0120 is the space).
fn byte_decoder() -> Vec<Option<u8>> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut table = vec![None; 256 + 68];
    let mut next = 256usize;
    for b in 0..=255u8 {
        // In bounds: 256 slots for the bytes themselves, then one for each of the 68 others.
        let slot = if printable(b) {
            usize::from(b)
        } else {
            next += 1;
            next - 1
        };
        if let Some(entry) = table.get_mut(slot) {
            *entry = Some(b);
        }
    }
    table
}

/// A token string's bytes as the `ByteLevel` decoder produces them: every character mapped
/// through the inverse table, or, if any character is not a stand-in (an added token such as
/// one containing a raw space), the string's own UTF-8.
fn token_to_bytes(token: &str, inverse: &[Option<u8>]) -> Vec<u8> {
    token
        .chars()
        .map(|c| inverse.get(c as usize).copied().flatten())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_writer::{i32_array, str_array, GgufWriter};
    use crate::gguf::GgufValue;

    /// A tiny byte-level vocabulary: 3 control tokens, the 256 byte stand-ins, and merges
    /// `h e`, `l l`, `he ll`, `hell o`, `Ġ w`, `1 2` (the last must never fire for `smollm`,
    /// whose first regex isolates every digit).
    fn tiny(pre: &str, model: &str) -> GgufFile {
        let inverse = byte_decoder();
        let mut stand_in = vec![' '; 256];
        for (c, b) in inverse.iter().enumerate() {
            if let Some(b) = b {
                stand_in[*b as usize] = char::from_u32(c as u32).unwrap();
            }
        }
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        tokens.extend(stand_in.iter().map(|c| c.to_string()));
        for t in ["he", "ll", "hell", "hello", "Ġw", "12", "<user>"] {
            tokens.push(t.into());
        }
        let mut types = vec![3, 3, 3];
        types.extend(std::iter::repeat_n(1, tokens.len() - 4));
        types.push(4);
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let bytes = GgufWriter::new()
            .kv("tokenizer.ggml.model", GgufValue::String(model.into()))
            .kv("tokenizer.ggml.pre", GgufValue::String(pre.into()))
            .kv("tokenizer.ggml.tokens", str_array(&token_refs))
            .kv("tokenizer.ggml.token_type", i32_array(&types))
            .kv(
                "tokenizer.ggml.merges",
                str_array(&["h e", "l l", "he ll", "hell o", "Ġ w", "1 2"]),
            )
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
            .build();
        GgufFile::from_bytes(bytes, "tiny.gguf").unwrap()
    }

    fn ids_of(t: &Tokenizer, toks: &[&str]) -> Vec<u32> {
        toks.iter().map(|s| t.token_to_id(s).unwrap()).collect()
    }

    #[test]
    fn merges_digits_and_special_tokens() {
        let t = Tokenizer::from_gguf(&tiny("smollm", "gpt2")).unwrap();
        assert_eq!(t.vocab_size(), 3 + 256 + 7);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id()),
            (Some(1), Some(2), None)
        );
        assert!(!t.add_bos());
        assert_eq!(t.encode("hello", false).unwrap(), ids_of(&t, &["hello"]));
        assert_eq!(
            t.encode("hello w", false).unwrap(),
            ids_of(&t, &["hello", "Ġw"])
        );
        // `\p{N}` isolates digits, so the `1 2` merge cannot apply.
        assert_eq!(
            t.encode("123", false).unwrap(),
            ids_of(&t, &["1", "2", "3"])
        );
        // Control tokens: ids with parse_special, characters without.
        assert_eq!(
            t.encode("<|im_start|>hello", true).unwrap(),
            ids_of(&t, &["<|im_start|>", "hello"])
        );
        let literal = t.encode("<|im_start|>", false).unwrap();
        assert_eq!(
            literal,
            ids_of(
                &t,
                &["<", "|", "i", "m", "_", "s", "t", "a", "r", "t", "|", ">"]
            )
        );
        // User-defined tokens are matched either way, as in llama.cpp.
        assert_eq!(t.encode("<user>", false).unwrap(), ids_of(&t, &["<user>"]));
        assert_eq!(t.decode(&literal, false).unwrap(), "<|im_start|>");
        let ids = t.encode("<|im_start|>hello<|im_end|>", true).unwrap();
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "<|im_start|>hello<|im_end|>"
        );
        assert_eq!(t.decode(&ids, true).unwrap(), "hello");
        assert!(t.is_special(1) && !t.is_special(3));
        assert!(matches!(
            t.decode(&[9999], false),
            Err(TokenizerError::UnknownId { id: 9999, .. })
        ));
    }

    #[test]
    fn gpt2_pre_tokenizer_keeps_numbers_together() {
        let t = Tokenizer::from_gguf(&tiny("gpt-2", "gpt2")).unwrap();
        assert_eq!(t.encode("123", false).unwrap(), ids_of(&t, &["12", "3"]));
    }

    #[test]
    fn bad_metadata_is_reported() {
        let e = Tokenizer::from_gguf(&tiny("smollm", "llama")).unwrap_err();
        assert!(e.to_string().contains("`llama`"), "{e}");
        let e = Tokenizer::from_gguf(&tiny("no-such-pre", "gpt2")).unwrap_err();
        assert!(
            e.to_string().contains("no-such-pre") && e.to_string().contains("smollm"),
            "{e}"
        );
        let empty = GgufFile::from_bytes(
            GgufWriter::new()
                .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
                .build(),
            "empty.gguf",
        )
        .unwrap();
        let e = Tokenizer::from_gguf(&empty).unwrap_err();
        assert!(
            e.to_string().contains("tokenizer.ggml.tokens") && e.to_string().contains("empty.gguf"),
            "{e}"
        );
    }

    #[test]
    fn stream_holds_back_split_characters() {
        let t = Tokenizer::from_gguf(&tiny("smollm", "gpt2")).unwrap();
        let text = "hello é🦀 w<|im_end|>";
        let ids = t.encode(text, true).unwrap();
        // No merges cover é or 🦀, so they arrive one byte per token.
        let mut s = t.stream(false);
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.push(s.push(id).unwrap().to_string());
        }
        assert!(pieces.iter().any(|p| p.is_empty()), "{pieces:?}");
        assert!(pieces.contains(&"🦀".to_string()), "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert_eq!(s.text(), text);
        assert!(!s.has_pending());
        assert_eq!(s.finish(), t.decode(&ids, false).unwrap());

        let mut s = t.stream(true);
        for &id in &ids {
            s.push(id).unwrap();
        }
        assert_eq!(s.finish(), "hello é🦀 w");

        // A cut character is flushed as U+FFFD, like a full decode.
        let crab = &ids[ids.len() - 6..ids.len() - 2];
        assert_eq!(t.decode(crab, false).unwrap(), "🦀");
        let mut s = t.stream(false);
        for &id in &crab[..2] {
            assert_eq!(s.push(id).unwrap(), "");
        }
        assert!(s.has_pending());
        assert_eq!(s.finish(), t.decode(&crab[..2], false).unwrap());
        // A byte that cannot start a character is replaced at once; a lead byte followed by
        // ASCII is replaced when the ASCII arrives.
        let h = t.token_to_id("h").unwrap();
        let mut s = t.stream(false);
        assert_eq!(s.push(crab[1]).unwrap(), "\u{FFFD}");
        assert_eq!(s.push(crab[0]).unwrap(), "");
        assert_eq!(s.push(h).unwrap(), "\u{FFFD}h");
        assert_eq!(s.finish(), "\u{FFFD}\u{FFFD}h");
    }

    #[test]
    fn token_bytes_match_decode() {
        let t = Tokenizer::from_gguf(&tiny("smollm", "gpt2")).unwrap();
        assert_eq!(
            t.token_bytes(t.token_to_id("Ġw").unwrap()),
            Some(&b" w"[..])
        );
        assert_eq!(t.token_bytes(1), Some(&b"<|im_start|>"[..]));
        for id in 0..t.vocab_size() as u32 {
            let via_hf = t.decode(&[id], false).unwrap();
            let via_table = String::from_utf8_lossy(t.token_bytes(id).unwrap()).into_owned();
            assert_eq!(via_hf, via_table, "id {id}");
        }
    }

    #[test]
    fn drain_utf8_matches_lossy_decoding() {
        let cases: &[&[u8]] = &[
            b"abc",
            b"\xe2\x82",
            b"\xe2\x82\xac",
            b"a\xffb",
            b"\xf0\x9f\xa6",
            b"\xc3(\xe2",
        ];
        for bytes in cases {
            let mut pending = bytes.to_vec();
            let mut out = String::new();
            drain_utf8(&mut pending, &mut out, true);
            assert_eq!(out, String::from_utf8_lossy(bytes), "{bytes:?}");
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn from_file_reads_tokenizer_json_and_config() {
        let gguf_tok = Tokenizer::from_gguf(&tiny("smollm", "gpt2")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let json_path = dir.path().join("tokenizer.json");
        gguf_tok.hf().save(&json_path, false).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
                "pad_token": null, "add_bos_token": true}"#,
        )
        .unwrap();
        let t = Tokenizer::from_file(&json_path).unwrap();
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id()),
            (Some(1), Some(2), None)
        );
        assert!(t.add_bos());
        let text = "<|im_start|>hello 123 é<|im_end|>";
        for special in [false, true] {
            assert_eq!(
                t.encode(text, special).unwrap(),
                gguf_tok.encode(text, special).unwrap()
            );
        }
        assert!(
            t.token_bytes(1).is_some(),
            "ByteLevel decoder => byte table"
        );
        let t = t.with_special_ids(None, Some(0));
        assert_eq!((t.bos_id(), t.eos_id()), (None, Some(0)));

        let e = Tokenizer::from_file(dir.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
    }

    /// A decoder other than ByteLevel (here `Fuse`, which concatenates token strings) uses the
    /// `tokenizers` prefix-window streaming path; its pieces still add up to `decode`.
    #[test]
    fn non_byte_level_decoder_streams_through_fallback() {
        let gguf_tok = Tokenizer::from_gguf(&tiny("smollm", "gpt2")).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&gguf_tok.hf().to_string(false).unwrap()).unwrap();
        json["decoder"] = serde_json::json!({"type": "Fuse"});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let t = Tokenizer::from_file(&path).unwrap();
        assert!(t.token_bytes(5).is_none());
        let ids = t.encode("hello w<|im_end|> 42", true).unwrap();
        for skip in [false, true] {
            let mut s = t.stream(skip);
            let mut pieces = String::new();
            for &id in &ids {
                pieces.push_str(s.push(id).unwrap());
            }
            assert_eq!(pieces, t.decode(&ids, skip).unwrap());
            assert_eq!(s.finish(), pieces);
        }
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for (names, regexes, _) in PRE_TOKENIZERS {
            for re in *regexes {
                assert!(
                    Split::new(
                        SplitPattern::Regex(re.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false
                    )
                    .is_ok(),
                    "{names:?}: {re}"
                );
            }
        }
    }
}
