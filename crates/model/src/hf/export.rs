//! Writing a policy as a Hugging Face model directory (`sleuth export`).
//!
//! The directory is what transformers' `save_pretrained` writes for the same architecture:
//! `config.json` (HF keys: [`LlamaConfig`] serialized, plus `torch_dtype` and an explicit
//! `head_dim`), `generation_config.json`, the tokenizer files, and the weights under HF tensor
//! names with linear weights `[out, in]` — one `model.safetensors`, or shards
//! `model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json` above
//! [`ExportOptions::max_shard_bytes`]. So transformers and vLLM load it as is, and llama.cpp's
//! `convert_hf_to_gguf.py` converts it.
//!
//! The tokenizer files are copied from the source directory when the policy came from one;
//! for a GGUF-born policy `tokenizer.json` is the `tokenizers` crate's serialization of the
//! tokenizer built from the GGUF metadata and `tokenizer_config.json` names its special
//! tokens and the GGUF's chat template.
//!
//! Atomic: everything is written to a hidden sibling folder, synced, and renamed to the
//! output path last; a run killed mid-export leaves no partial model directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, View};

use super::{io, HfError, INDEX_FILE, WEIGHTS_FILE};
use crate::config::LlamaConfig;
use crate::llama::{Linear, Llama};
use crate::load::{to_host, transpose};
use crate::tokenizer::Tokenizer;

/// The float type exported weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    /// 32-bit floats: lossless (sleuth trains in f32). The default.
    #[default]
    F32,
    /// IEEE half precision: half the bytes.
    F16,
    /// bfloat16 (what most HF checkpoints ship): half the bytes, f32's range.
    Bf16,
}

impl ExportDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// transformers' name for it (`torch_dtype` in `config.json`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
        }
    }

    /// Little-endian bytes of `values` in this dtype (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            Self::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Self::F16 => values
                .iter()
                .for_each(|v| out.extend(half::f16::from_f32(*v).to_le_bytes())),
            Self::Bf16 => values
                .iter()
                .for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
        }
        out
    }
}

impl std::str::FromStr for ExportDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown dtype {other:?} (expected bf16, f16 or f32)"
            )),
        }
    }
}

impl std::fmt::Display for ExportDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// How [`export`] writes the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Storage dtype. Default f32.
    pub dtype: ExportDtype,
    /// Largest shard in bytes before the weights are split into several files (a tensor is
    /// never split). Default 5 GB, transformers' long-standing `max_shard_size`.
    pub max_shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: ExportDtype::default(),
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The output directory.
    pub dir: PathBuf,
    /// Files written, with their sizes in bytes, in name order.
    pub files: Vec<(String, u64)>,
    /// Number of weight tensors.
    pub tensors: usize,
    /// Number of parameters (elements over all tensors).
    pub parameters: usize,
}

/// One tensor ready to write.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The model's tensors under their HF names, in HF layout (`[out, in]` linear weights),
/// row-major f32, in the order transformers lists them.
pub fn hf_tensors<B: Backend>(model: &Llama<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let mut linear = |name: String, l: &Linear<B>| {
        let [d_in, d_out] = l.weight.val().dims();
        let w = transpose(&to_host(l.merged_weight()), d_in, d_out);
        out.push((format!("{name}.weight"), vec![d_out, d_in], w));
        if let Some(b) = &l.bias {
            out.push((format!("{name}.bias"), vec![d_out], to_host(b.val())));
        }
    };
    let embed = model.embed_tokens.val();
    let [vocab, hidden] = embed.dims();
    let mut tensors = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![vocab, hidden],
        to_host(embed),
    )];
    let mut norms = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        linear(format!("{p}.self_attn.q_proj"), &a.q_proj);
        linear(format!("{p}.self_attn.k_proj"), &a.k_proj);
        linear(format!("{p}.self_attn.v_proj"), &a.v_proj);
        linear(format!("{p}.self_attn.o_proj"), &a.o_proj);
        linear(format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
        linear(format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
        linear(format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        let mut norm = |name: String, w: &crate::llama::RmsNorm<B>| {
            let v = to_host(w.weight.val());
            norms.push((name, vec![v.len()], v));
        };
        norm(
            format!("{p}.input_layernorm.weight"),
            &layer.input_layernorm,
        );
        norm(
            format!("{p}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm,
        );
        if let Some(n) = &a.q_norm {
            norm(format!("{p}.self_attn.q_norm.weight"), n);
        }
        if let Some(n) = &a.k_norm {
            norm(format!("{p}.self_attn.k_norm.weight"), n);
        }
    }
    tensors.append(&mut out);
    tensors.append(&mut norms);
    let v = to_host(model.norm.weight.val());
    tensors.push(("model.norm.weight".to_string(), vec![v.len()], v));
    if let Some(head) = &model.lm_head {
        let [h, v] = head.val().dims();
        tensors.push((
            "lm_head.weight".to_string(),
            vec![v, h],
            transpose(&to_host(head.val()), h, v),
        ));
    }
    tensors
}

/// The `config.json` of `cfg` as exported: HF keys, `head_dim` always explicit (transformers'
/// Qwen3 config would otherwise assume 128), `torch_dtype` the storage dtype.
pub fn hf_config_json(cfg: &LlamaConfig, dtype: ExportDtype) -> serde_json::Value {
    let mut cfg = cfg.clone();
    cfg.head_dim = Some(cfg.head_dim());
    // Validated to be plain RoPE; `rope_theta` says all of it.
    cfg.rope_scaling = None;
    let mut v = serde_json::to_value(&cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("torch_dtype".into(), dtype.torch_name().into());
        o.insert("use_cache".into(), true.into());
    }
    v
}

/// Tokenizer files copied from a source model directory, when present.
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

pub(super) fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), HfError> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}

/// Writes `model` (architecture `cfg`, tokenizer `tokenizer`) as a Hugging Face model
/// directory at `out`, which must not exist yet.
///
/// `tokenizer_dir`: the HF directory the policy was loaded from, whose tokenizer files are
/// copied as they are; `None` (a GGUF-born policy) writes `tokenizer.json` and
/// `tokenizer_config.json` from `tokenizer`.
///
/// # Errors
/// [`HfError::Io`] naming the path (an existing `out`, a full disk, …); nothing is left at
/// `out` then.
pub fn export<B: Backend>(
    model: &Llama<B>,
    cfg: &LlamaConfig,
    tokenizer: &Tokenizer,
    tokenizer_dir: Option<&Path>,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport, HfError> {
    let ((tensors, parameters), files) = write_dir(out, |tmp| {
        write_all(model, cfg, tokenizer, tokenizer_dir, tmp, opts)
    })?;
    Ok(ExportReport {
        dir: out.to_path_buf(),
        files,
        tensors,
        parameters,
    })
}

/// Writes a new directory `out` atomically: `write` fills a hidden sibling folder
/// ([`temp_path`]), whose files then get the mode a plainly created file gets and are synced,
/// and the folder is renamed to `out` last. Returns `write`'s value and the files written with
/// their sizes, in name order.
///
/// # Errors
/// [`HfError::Io`] when `out` exists or a write fails; nothing is left at `out` then.
pub(super) fn write_dir<T>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<T, HfError>,
) -> Result<(T, Vec<(String, u64)>), HfError> {
    if out.exists() {
        return Err(HfError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; remove it or choose another output directory",
            ),
        });
    }
    let tmp = temp_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let value = match write(&tmp).and_then(|v| finish_files(&tmp).map(|()| v)) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        HfError::Io {
            path: out.to_path_buf(),
            source: e,
        }
    })?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(out).map_err(io(out))? {
        let entry = entry.map_err(io(out))?;
        let len = entry.metadata().map_err(io(out))?.len();
        files.push((entry.file_name().to_string_lossy().into_owned(), len));
    }
    files.sort();
    Ok((value, files))
}

/// The safetensors crate writes through a private (0600) temporary file; give every file in
/// `dir` the mode a plainly created one gets (umask applied), then make them durable before
/// the rename publishes the directory.
fn finish_files(dir: &Path) -> Result<(), HfError> {
    let probe = dir.join(".mode");
    std::fs::write(&probe, b"").map_err(io(&probe))?;
    let mode = std::fs::metadata(&probe).map_err(io(&probe))?.permissions();
    std::fs::remove_file(&probe).map_err(io(&probe))?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        std::fs::set_permissions(&path, mode.clone()).map_err(io(&path))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    Ok(())
}

/// Writes `tensors` (name, shape, row-major f32) to one safetensors file at `path` in `dtype`,
/// with transformers' `{"format": "pt"}` metadata.
///
/// # Errors
/// [`HfError::Io`] naming the file.
pub(super) fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    dtype: ExportDtype,
) -> Result<(), HfError> {
    let encoded: Vec<(String, Encoded)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let bytes = dtype.encode(&data);
            let e = Encoded {
                dtype: dtype.safetensors(),
                shape,
                bytes,
            };
            (name, e)
        })
        .collect();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let views = encoded.iter().map(|(name, e)| (name.as_str(), e));
    safetensors::tensor::serialize_to_file(views, metadata, path).map_err(|e| HfError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Writes every file into `dir`; returns (tensors, parameters).
fn write_all<B: Backend>(
    model: &Llama<B>,
    cfg: &LlamaConfig,
    tokenizer: &Tokenizer,
    tokenizer_dir: Option<&Path>,
    dir: &Path,
    opts: &ExportOptions,
) -> Result<(usize, usize), HfError> {
    // Weights, grouped into shards in order.
    let tensors = hf_tensors(model);
    let n_tensors = tensors.len();
    let parameters: usize = tensors.iter().map(|(_, _, d)| d.len()).sum();
    let mut shards: Vec<Vec<(String, Encoded)>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    let mut total_bytes = 0u64;
    for (name, shape, data) in tensors {
        let bytes = opts.dtype.encode(&data);
        let len = bytes.len() as u64;
        if shard_bytes > 0 && shard_bytes + len > opts.max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += len;
        total_bytes += len;
        if let Some(last) = shards.last_mut() {
            last.push((
                name,
                Encoded {
                    dtype: opts.dtype.safetensors(),
                    shape,
                    bytes,
                },
            ));
        }
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            WEIGHTS_FILE.to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        let path = dir.join(&file);
        let views = shard.iter().map(|(name, e)| (name.as_str(), e));
        safetensors::tensor::serialize_to_file(views, metadata.clone(), &path).map_err(|e| {
            HfError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_bytes },
            "weight_map": weight_map,
        });
        write_json(&dir.join(INDEX_FILE), &index)?;
    }

    write_json(&dir.join("config.json"), &hf_config_json(cfg, opts.dtype))?;
    let mut generation = serde_json::Map::new();
    if let Some(b) = tokenizer.bos_id().or(cfg.bos_token_id) {
        generation.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = tokenizer.eos_id().or(cfg.eos_token_id) {
        generation.insert("eos_token_id".into(), e.into());
    }
    if let Some(p) = tokenizer.pad_id() {
        generation.insert("pad_token_id".into(), p.into());
    }
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::Value::Object(generation),
    )?;

    match tokenizer_dir {
        Some(src) => {
            for f in TOKENIZER_FILES {
                let from = src.join(f);
                if from.is_file() {
                    std::fs::copy(&from, dir.join(f)).map_err(io(&from))?;
                }
            }
        }
        None => write_tokenizer(tokenizer, cfg, dir)?,
    }
    Ok((n_tensors, parameters))
}

/// `tokenizer.json` and `tokenizer_config.json` for a tokenizer built from GGUF metadata.
fn write_tokenizer(tokenizer: &Tokenizer, cfg: &LlamaConfig, dir: &Path) -> Result<(), HfError> {
    let path = dir.join("tokenizer.json");
    let json = tokenizer.hf().to_string(true).map_err(|e| HfError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut f = std::fs::File::create(&path).map_err(io(&path))?;
    f.write_all(json.as_bytes()).map_err(io(&path))?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    for (key, id) in [
        ("bos_token", tokenizer.bos_id()),
        ("eos_token", tokenizer.eos_id()),
        ("pad_token", tokenizer.pad_id()),
    ] {
        if let Some(t) = token(id) {
            config.insert(key.into(), t.into());
        }
    }
    config.insert("add_bos_token".into(), tokenizer.add_bos().into());
    config.insert("add_eos_token".into(), false.into());
    config.insert("clean_up_tokenization_spaces".into(), false.into());
    config.insert(
        "model_max_length".into(),
        cfg.max_position_embeddings.into(),
    );
    if let Some(t) = tokenizer.chat_template() {
        config.insert("chat_template".into(), t.into());
    }
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::Value::Object(config),
    )
}

/// The folder an export is written into before it is renamed to `out`: `.NAME.tmp-PID` beside
/// it, the naming of sleuth's atomic writer (`sleuth::atomic::temp_path`), so a killed export's
/// leftover is recognised the same way.
pub(super) fn temp_path(out: &Path) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
