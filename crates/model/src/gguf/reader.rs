//! The parser: a bounds-checked little-endian cursor over the file's bytes, turning the
//! header, metadata and tensor directory into a [`Header`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use super::{
    GgmlType, GgufArray, GgufError, GgufValue, GgufValueType, Result, TensorInfo,
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS,
};

/// What [`parse`] reads: everything before the tensor data.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: Vec<(String, GgufValue)>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) alignment: u64,
    pub(super) data_offset: u64,
}

/// A bounds-checked little-endian cursor; every failure becomes [`GgufError::Corrupt`].
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let buf: &'a [u8] = self.buf;
        let s = usize::try_from(n)
            .ok()
            .and_then(|n| buf.get(self.pos..self.pos.checked_add(n)?));
        let Some(s) = s else {
            return Err(self.corrupt(format!(
                "file ends while reading {} ({n} bytes needed, {} left)",
                what(),
                self.remaining()
            )));
        };
        self.pos += s.len();
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() {
            self.pos = start;
            return Err(self.corrupt(format!(
                "length {len} of {} exceeds the {} bytes left in the file",
                what(),
                self.remaining().saturating_sub(8)
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: (start + 8 + e.utf8_error().valid_up_to()) as u64,
            reason: format!("{} is not valid UTF-8", what()),
        })
    }

    fn value(
        &mut self,
        ty: GgufValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            GgufValueType::I8 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    self.pos -= 1;
                    return Err(self.corrupt(format!("{} is a bool holding byte {b}", what())));
                }
            },
            GgufValueType::String => GgufValue::String(self.string(what)?),
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!(
                        "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                let tag_pos = self.pos;
                let tag = self.u32(what)?;
                let elem_type = GgufValueType::from_u32(tag).ok_or_else(|| GgufError::Corrupt {
                    path: self.path.to_path_buf(),
                    offset: tag_pos as u64,
                    reason: format!("{} has unknown element type {tag}", what()),
                })?;
                let count_pos = self.pos;
                let count = self.u64(what)?;
                let max = self.remaining() / elem_type.min_size();
                if count > max {
                    self.pos = count_pos;
                    return Err(self.corrupt(format!(
                        "{} claims {count} {elem_type} elements but only {} bytes remain",
                        what(),
                        self.remaining() - 8
                    )));
                }
                let mut values = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let elem_what = || format!("{}[{i}]", what());
                    values.push(self.value(elem_type, depth + 1, &elem_what)?);
                }
                GgufValue::Array(GgufArray { elem_type, values })
            }
        })
    }
}

pub(super) fn parse(buf: &[u8], path: &Path) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0, path };
    if buf.get(..4) != Some(GGUF_MAGIC.as_slice()) {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            magic: buf.iter().take(4).copied().collect(),
        });
    }
    c.pos = 4;
    let version = c.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint: "GGUF v1 used 32-bit counts; supported versions are 2 and 3",
            })
        }
        v if v & 0xffff == 0 && v != 0 => {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint: "this looks like a big-endian GGUF file; only little-endian is supported",
            })
        }
        _ => {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint: "supported versions are 2 and 3",
            })
        }
    }
    let tensor_count = c.u64(&|| "the tensor count".into())?;
    let kv_count = c.u64(&|| "the metadata count".into())?;

    // Each metadata entry needs at least a key length, a type tag and one value byte.
    if kv_count > c.remaining() / (8 + 4 + 1) {
        return Err(c.corrupt(format!(
            "metadata count {kv_count} is impossible for the {} bytes left",
            c.remaining()
        )));
    }
    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(kv_count as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..kv_count {
        let key_pos = c.pos;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        if !seen.insert(key.clone()) {
            c.pos = key_pos;
            return Err(c.corrupt(format!("duplicate metadata key `{key}`")));
        }
        let tag_pos = c.pos;
        let what = || format!("metadata value `{key}`");
        let tag = c.u32(&what)?;
        let ty = GgufValueType::from_u32(tag).ok_or_else(|| GgufError::Corrupt {
            path: path.to_path_buf(),
            offset: tag_pos as u64,
            reason: format!("metadata value `{key}` has unknown type {tag}"),
        })?;
        let value = c.value(ty, 0, &what)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "general.alignment must be a power-of-two integer, found {v:?}"
                    ),
                })
            }
        },
    };

    // Each tensor entry needs at least a name length, n_dims, one dim, a type and an offset.
    if tensor_count > c.remaining() / (8 + 4 + 8 + 4 + 8) {
        return Err(c.corrupt(format!(
            "tensor count {tensor_count} is impossible for the {} bytes left",
            c.remaining()
        )));
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut names = std::collections::HashSet::new();
    for i in 0..tensor_count {
        let name_pos = c.pos;
        let name = c.string(&|| format!("the name of tensor #{i}"))?;
        if !names.insert(name.clone()) {
            c.pos = name_pos;
            return Err(c.corrupt(format!("duplicate tensor name `{name}`")));
        }
        let what = || format!("tensor info of `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            c.pos -= 4;
            return Err(c.corrupt(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for _ in 0..n_dims {
            let d = c.u64(&what)?;
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    c.corrupt(format!("tensor `{name}` dims overflow: {dims:?} × {d}"))
                })?;
            dims.push(d);
        }
        let type_pos = c.pos;
        let type_id = c.u32(&what)?;
        let dtype = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::Corrupt {
            path: path.to_path_buf(),
            offset: type_pos as u64,
            reason: format!("tensor `{name}` has unknown ggml type id {type_id}"),
        })?;
        // `dims` is not empty: `n_dims` >= 1 was checked above.
        if let Some(ne0) = dims
            .first()
            .filter(|d| !d.is_multiple_of(dtype.block_size() as u64))
        {
            c.pos = type_pos;
            return Err(c.corrupt(format!(
                "tensor `{name}`: ne0 = {ne0} is not a multiple of the {dtype} block size {}",
                dtype.block_size()
            )));
        }
        let offset = c.u64(&what)?;
        if !offset.is_multiple_of(alignment) {
            c.pos -= 8;
            return Err(c.corrupt(format!(
                "tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
        });
    }

    let end_of_infos = c.pos as u64;
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    for t in &tensors {
        let end = (t.n_elements() / t.dtype.block_size() as u64)
            .checked_mul(t.dtype.type_size() as u64)
            .and_then(|b| b.checked_add(t.offset))
            .and_then(|b| b.checked_add(data_offset));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::Corrupt {
                    path: path.to_path_buf(),
                    offset: end_of_infos,
                    reason: format!(
                        "tensor `{}` ({} {:?}, {} bytes at data offset {}) extends past the end \
                         of the file ({file_len} bytes, data starts at {data_offset})",
                        t.name,
                        t.dtype,
                        t.dims,
                        t.n_elements() / t.dtype.block_size() as u64 * t.dtype.type_size() as u64,
                        t.offset
                    ),
                })
            }
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
