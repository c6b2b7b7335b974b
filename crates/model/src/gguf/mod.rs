//! Reading GGUF files: metadata, tensor directory and dequantization to `f32`.
//!
//! GGUF is the single-file model format of llama.cpp / ggml. The layout, as documented in
//! the GGUF specification (`docs/gguf.md` in the ggml repository), is, all little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, ne: u64 × n_dims, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data (each tensor at data_offset + offset, offsets aligned)
//! ```
//!
//! where a string is a `u64` byte length followed by UTF-8 bytes and an array value is an
//! element type (`u32`), a count (`u64`) and the elements. Versions 2 and 3 share this layout
//! (version 1 used 32-bit counts and is not supported; version 3 only added big-endian files,
//! which we reject with a clear error).
//!
//! Layout of this folder: [`file`] the in-memory file and its typed getters, `reader` the
//! bounds-checked parser, `value.rs` metadata values, `types.rs` the ggml tensor types and their
//! block geometry, `dequant.rs` the block decoders.
//!
//! Design choices:
//!
//! * **The whole file is read into memory** and kept: the reader is a bounds-checked cursor over
//!   a byte slice, so every length, count and offset is checked against the bytes that actually
//!   exist. A corrupt count can never trigger a huge allocation: array and string lengths are
//!   capped by what the remaining bytes could possibly hold before anything is reserved. Every
//!   error names the file (see [`GgufError`]); nothing panics on bad input.
//! * **Dimensions are kept in GGUF order** (`ne0, ne1, ...`, `ne0` contiguous) in
//!   [`TensorInfo::dims`]; [`GgufFile::tensor_f32`] returns the row-major shape (the reverse),
//!   so a 2-D weight comes back as `[ne1, ne0]` = `[out_features, in_features]`, the same
//!   orientation as the Hugging Face tensor.
//! * **Dequantization follows the ggml block formats** (`ggml-common.h` / `ggml-quants.c`
//!   define them; the byte layouts are restated at each decoder below): `F32`, `F16`, `BF16`,
//!   `F64`, `I8`/`I16`/`I32`/`I64`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q2_K`, `Q3_K`,
//!   `Q4_K`, `Q5_K` and `Q6_K`. Other types (the `IQ*` family, ternary and FP4 formats) are
//!   parsed (their byte sizes are known, so offsets still validate) but
//!   [`GgufFile::tensor_f32`] answers [`GgufError::UnsupportedType`] naming tensor and type.
//! * Values are **not** reinterpreted: llama.cpp's converter stores `attn_q`/`attn_k` weights
//!   permuted into GGML's rotary layout; undoing that is the model loader's business.
//!
//! ```no_run
//! use sleuth_model::gguf::GgufFile;
//! let file = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = file.get_u32("llama.block_count")?;
//! let (embd, shape) = file.tensor_f32("token_embd.weight")?; // shape == [49152, 576]
//! # Ok::<(), sleuth_model::gguf::GgufError>(())
//! ```

mod dequant;
mod file;
mod reader;
#[cfg(test)]
pub(crate) mod test_writer;
#[cfg(test)]
mod tests;
mod types;
mod value;

use std::path::PathBuf;

pub use dequant::{dequantize, DequantizeError};
pub use file::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{GgufArray, GgufValue, GgufValueType};

/// The four magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Tensor data alignment used when the file has no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Maximum number of tensor dimensions in ggml (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Maximum nesting depth of array values accepted (guards the recursive parser's stack).
const MAX_ARRAY_DEPTH: usize = 16;

/// Result alias for this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can go wrong reading a GGUF file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        magic: Vec<u8>,
    },
    /// The version is not 2 or 3 (or the file is big-endian).
    #[error("{}: unsupported GGUF version {version} ({hint})", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
        /// What is supported.
        hint: &'static str,
    },
    /// The file is truncated or some field holds an impossible value.
    #[error("{}: corrupt or truncated GGUF at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was detected.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A metadata key that was asked for is absent.
    #[error("{}: metadata key `{key}` is missing", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key holds a value of another type than asked for.
    #[error("{}: metadata key `{key}` holds {found}, expected {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller wanted.
        expected: &'static str,
        /// A description of what is stored.
        found: String,
    },
    /// No tensor of that name.
    #[error("{}: no tensor named `{name}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name asked for.
        name: String,
    },
    /// The tensor's type has no dequantizer here.
    #[error("{}: tensor `{name}` has type {dtype}, which this reader cannot dequantize", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its ggml type.
        dtype: GgmlType,
    },
}

impl GgufError {
    /// Whether this error reports a missing metadata key (useful for optional keys).
    pub fn is_missing_key(&self) -> bool {
        matches!(self, GgufError::MissingKey { .. })
    }
}
