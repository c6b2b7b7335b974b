//! The in-memory GGUF file: metadata lookup with typed getters, the tensor directory, and
//! tensors decoded to `f32`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::dequant::dequantize;
use super::reader::parse;
use super::{GgmlType, GgufArray, GgufError, GgufValue, Result};

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order `ne0, ne1, ...`; `ne0` is the contiguous one.
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Byte offset of the data relative to [`GgufFile::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims).
    pub fn n_elements(&self) -> u64 {
        // Checked when the file was parsed, so this cannot overflow.
        self.dims.iter().product()
    }

    /// Bytes of data the tensor occupies.
    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.dtype.block_size() as u64 * self.dtype.type_size() as u64
    }

    /// Row-major shape: the dims reversed (`[ne1, ne0]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    path: PathBuf,
    bytes: Vec<u8>,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_len", &self.metadata.len())
            .field("tensors_len", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(bytes, path)
    }

    /// Parses a GGUF image already in memory; `path` is only used to label errors.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let header = parse(&bytes, &path)?;
        Ok(GgufFile {
            path,
            bytes,
            version: header.version,
            metadata_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The path the file was read from (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The value stored under `key`, if any.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// All metadata in file order.
    pub fn metadata_iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The directory entry for tensor `name`, if any.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.metadata(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
        let found = match found.as_integer() {
            Some(v) => format!("{} {v}", found.value_type()),
            None => found.describe(),
        };
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found,
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.require(key)?;
        v.as_integer()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, expected, v))
    }

    /// An integer key as `u32` (any stored integer width is accepted if the value fits).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "an integer fitting u32")
    }

    /// An integer key as `u64` (any stored integer width is accepted if the value fits).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "an integer fitting u64")
    }

    /// An integer key as `i32` (any stored integer width is accepted if the value fits).
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_int(key, "an integer fitting i32")
    }

    /// An integer key as `i64` (any stored integer width is accepted if the value fits).
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "an integer fitting i64")
    }

    /// A float key as `f32` (an `f64` value is narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// A float key as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, "f32 or f64", v))
    }

    /// A `bool` key.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "bool", v))
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    /// An array key (any element type).
    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "array", v))
    }

    /// An array-of-strings key.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "array of string", v))?;
        arr.values
            .iter()
            .map(|e| e.as_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.wrong_type(key, "array of string", v))
    }

    /// An array-of-integers key as `i64`s (any integer element width).
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "array of integers", v))?;
        arr.values
            .iter()
            .map(|e| e.as_i64())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.wrong_type(key, "array of integers", v))
    }

    /// An array-of-floats key as `f32`s (`f32` or `f64` elements).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "array of floats", v))?;
        arr.values
            .iter()
            .map(|e| e.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.wrong_type(key, "array of floats", v))
    }

    fn lookup(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The raw (still quantized) bytes of tensor `name`, e.g. for a kernel that works on
    /// blocks directly.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.lookup(name)?;
        // Bounds were validated at parse time; checked again here rather than trusted.
        let start = (self.data_offset + info.offset) as usize;
        let len = info.n_bytes() as usize;
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| GgufError::Corrupt {
                path: self.path.clone(),
                offset: start as u64,
                reason: format!(
                    "tensor `{name}` ({len} bytes) runs past the end of the file ({} bytes)",
                    self.bytes.len()
                ),
            })
    }

    /// Tensor `name` dequantized to `f32`, with its row-major shape (GGUF dims reversed:
    /// `[ne1, ne0]` for a matrix).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.lookup(name)?;
        if !info.dtype.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: info.dtype,
            });
        }
        let data = self.tensor_bytes(name)?;
        let mut out = vec![0f32; info.n_elements() as usize];
        dequantize(info.dtype, data, &mut out).map_err(|e| GgufError::Corrupt {
            path: self.path.clone(),
            offset: self.data_offset + info.offset,
            reason: format!("tensor `{name}`: {e}"),
        })?;
        Ok((out, info.shape()))
    }
}
