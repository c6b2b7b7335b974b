//! Hugging Face model directories: `config.json`, `tokenizer.json` (+ `tokenizer_config.json`)
//! and safetensors weights, in and out.
//!
//! **Loading** ([`load_hf_dir`]): `config.json` deserializes into [`LlamaConfig`] (HF keys are
//! the schema); the tokenizer is the `tokenizers` crate's reading of `tokenizer.json`
//! ([`Tokenizer::from_file`]); weights come from `model.safetensors` or from the shards that
//! `model.safetensors.index.json` lists, memory-mapped ([`SafetensorsWeights`]) and converted
//! to f32 one tensor at a time from f32, f16 or bf16, so peak memory is the f32 model plus one
//! tensor, not a second copy of the file. The same [`build_llama`] that reads GGUF files builds
//! the model, through the [`WeightSource`] seam.
//!
//! **Exporting** ([`export`]): the inverse, for any loaded policy (GGUF-born or HF-born).
//!
//! Every error names the file, and the tensor where there is one ([`HfError`]). Layout and
//! names follow transformers' `save_pretrained` (`modeling_utils.py`) and the safetensors
//! format specification (8-byte little-endian header length, JSON header, raw data).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod export;
pub mod peft;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use safetensors::{Dtype, SafeTensors};

use super::config::LlamaConfig;
use super::load::{build_llama, WeightSource};
use super::tokenizer::Tokenizer;
use super::{LoadedModel, ModelError};

/// The weights file of an unsharded directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded directory (`weight_map`: tensor name → shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Errors reading a Hugging Face model directory; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file could not be read or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `config.json` (or the shard index) is malformed or describes a model sleuth cannot run.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory has neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir}: no {WEIGHTS_FILE} or {INDEX_FILE}")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A safetensors file is truncated or its header is malformed.
    #[error("{path}: not a valid safetensors file ({message}); is it truncated?")]
    Safetensors {
        /// The shard.
        path: PathBuf,
        /// The safetensors crate's message.
        message: String,
    },
    /// A tensor the architecture needs is in no shard.
    #[error("{dir}: tensor {tensor} not found in the weights")]
    MissingTensor {
        /// The model directory.
        dir: PathBuf,
        /// HF tensor name.
        tensor: String,
    },
    /// A tensor's shape disagrees with `config.json`.
    #[error("{path}: tensor {tensor} has shape {found:?}, config.json implies {expected:?}")]
    Shape {
        /// The shard holding it.
        path: PathBuf,
        /// HF tensor name.
        tensor: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor stored in a dtype other than f32, f16 or bf16.
    #[error("{path}: tensor {tensor} has dtype {dtype}; only F32, F16 and BF16 load")]
    Dtype {
        /// The shard holding it.
        path: PathBuf,
        /// HF tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is a Hugging Face model directory (a directory holding `config.json`).
pub fn is_hf_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Reads and validates `dir/config.json`.
///
/// # Errors
/// [`HfError::Io`] when it cannot be read, [`HfError::Config`] naming the file for malformed
/// JSON, wrong types, an unsupported architecture or inconsistent sizes.
pub fn read_config(dir: &Path) -> Result<LlamaConfig, HfError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    LlamaConfig::from_hf_json(&text).map_err(|e| HfError::Config {
        path: path.clone(),
        message: match e {
            ModelError::Config(m) => m,
            other => other.to_string(),
        },
    })
}

/// The tokenizer of model directory `dir`: `tokenizer.json`, with BOS/EOS/PAD and
/// `add_bos_token` from `tokenizer_config.json` ([`Tokenizer::from_file`]); BOS/EOS ids the
/// tokenizer files leave unset are taken from `config.json`.
///
/// # Errors
/// A missing or malformed tokenizer file, naming it.
pub fn read_tokenizer(dir: &Path, cfg: &LlamaConfig) -> Result<Tokenizer, ModelError> {
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let bos = tok.bos_id().or(cfg.bos_token_id);
    let eos = tok.eos_id().or(cfg.eos_token_id);
    Ok(tok.with_special_ids(bos, eos))
}

/// Safetensors weights of a model directory, memory-mapped: one file or the shards an index
/// lists. Tensors are converted to f32 when read.
pub struct SafetensorsWeights {
    dir: PathBuf,
    /// Shard paths and their mappings.
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → shard.
    index: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Maps the weights of `dir` and checks every shard's header against its length.
    ///
    /// # Errors
    /// [`HfError::NoWeights`] without weights files; [`HfError::Io`] for an unreadable file;
    /// [`HfError::Config`] for a malformed index or one naming a file outside `dir`;
    /// [`HfError::Safetensors`] for a truncated or malformed shard.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let single = dir.join(WEIGHTS_FILE);
        let index_path = dir.join(INDEX_FILE);
        let files: Vec<String> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let bad = |message: String| HfError::Config {
                path: index_path.clone(),
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
            let mut files: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("weight_map[{name:?}] is not a file name")))?;
                if Path::new(file).components().count() != 1 {
                    return Err(bad(format!(
                        "shard {file:?} is not a file in the directory"
                    )));
                }
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
            }
            files.sort();
            files
        } else if single.is_file() {
            vec![WEIGHTS_FILE.to_string()]
        } else {
            return Err(HfError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };
        Self::open_files(dir, &files)
    }

    /// Maps one safetensors file (a PEFT adapter's `adapter_model.safetensors`, …).
    ///
    /// # Errors
    /// [`HfError::Io`] for an unreadable file; [`HfError::Safetensors`] for a truncated or
    /// malformed one.
    pub fn open_file(path: &Path) -> Result<Self, HfError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::open_files(dir, &[name])
    }

    /// Maps `files` of `dir` and indexes their tensors.
    fn open_files(dir: &Path, files: &[String]) -> Result<Self, HfError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let path = dir.join(file);
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: the mapping is read-only and private to this process; a file truncated
            // by another process while mapped could fault, which is the usual contract of
            // memory-mapped weights (transformers and candle map them the same way).
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io(&path))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| HfError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            drop(st);
            shards.push((path, map));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }

    /// Names of every tensor in the weights.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Tensor `name` as row-major f32 with its shape, whatever its stored float dtype.
    ///
    /// # Errors
    /// [`HfError::MissingTensor`], [`HfError::Dtype`], or [`HfError::Safetensors`].
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), HfError> {
        // The index holds positions in `shards`, both built together at load.
        let (path, map) = self
            .index
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| HfError::MissingTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
            })?;
        let st = SafeTensors::deserialize(map).map_err(|e| HfError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| HfError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|&b| f32::from_le_bytes(b))
                .collect(),
            Dtype::F16 => bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
            other => {
                return Err(HfError::Dtype {
                    path: path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok((data, view.shape().to_vec()))
    }

    fn shard_path(&self, name: &str) -> PathBuf {
        self.index
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .map_or_else(|| self.dir.clone(), |(path, _)| path.clone())
    }
}

impl WeightSource for SafetensorsWeights {
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (data, dims) = self.tensor_f32(name)?;
        if dims != shape {
            return Err(HfError::Shape {
                path: self.shard_path(name),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: dims,
            }
            .into());
        }
        Ok(data)
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Loads a Hugging Face model directory (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
/// `Qwen3ForCausalLM`) onto `device`: weights in f32 whatever their stored dtype.
///
/// # Errors
/// [`HfError`] (through [`ModelError::Hf`]) naming the file and tensor at fault; tokenizer
/// errors naming the tokenizer file.
pub fn load_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    let config = read_config(dir)?;
    let weights = SafetensorsWeights::open(dir)?;
    let model = build_llama::<B>(&weights, &config, device)?;
    let tokenizer = read_tokenizer(dir, &config)?;
    Ok(LoadedModel {
        config,
        model,
        tokenizer,
    })
}
