//! What the three graph containers share: the header frame and its checks, string and list
//! tables, recognising a container by its magic, and atomic writes. All integers little-endian.
//!
//! Each container (`format.rs` for passage graphs, `kg_format.rs` for the knowledge graphs,
//! `tree_format.rs` for the RAPTOR tree) has its own magic and version, but they frame their
//! files alike, so the framing lives here once:
//!
//! ```text
//! offset   size   field
//! 0        8      magic, one per container
//! 8        4      format version (u32), one per container
//! 12       4      kind (u32): a GraphKind code
//! 16       8·N    N counts (u64); N and their meaning are the container's
//! 16+8·N   4      CRC-32 (IEEE) of the body, everything after the header (u32)
//! 20+8·N   4      one more u32: reserved zero, or the tree's embedder code
//! 24+8·N   …      body
//! ```
//!
//! Reading checks, in this order: the magic (another container's magic is
//! [`GraphError::WrongKind`] naming what the file holds, anything else
//! [`GraphError::NotAGraph`]), that a whole header is present, and the version. The container
//! then judges the kind code and counts, derives the file size from them
//! ([`Header::check_len`]) and asks for the body, whose CRC is checked ([`Header::body`]).
//! Checking the size before parsing is what lets [`Cursor`] read every section; it still
//! bounds-checks each read, so a header/body mismatch is [`GraphError::Corrupt`], never a panic.
//!
//! A *string table* of `n` strings is `8·(n+1)` bytes of u64 offsets into a UTF-8 blob, then the
//! blob; a *list table* of `n` lists is `8·(n+1)` bytes of u64 offsets into a u32 array, then the
//! array ([`put_strings`], [`put_lists`], [`Cursor::strings`], [`Cursor::lists`]).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    GraphError, GraphKind, FORMAT_VERSION, KG_FORMAT_VERSION, KG_MAGIC, MAGIC, TREE_FORMAT_VERSION,
    TREE_MAGIC,
};

/// The three on-disk containers, told apart by their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Container {
    /// `SLEUTHGR`: passage graphs (`format.rs`).
    Passage,
    /// `SLEUTHKG`: KG, TKG and RKG (`kg_format.rs`).
    Knowledge,
    /// `SLEUTHTR`: the RAPTOR tree (`tree_format.rs`).
    Tree,
}

impl Container {
    const ALL: [Container; 3] = [Container::Passage, Container::Knowledge, Container::Tree];

    fn magic(self) -> [u8; 8] {
        match self {
            Container::Passage => MAGIC,
            Container::Knowledge => KG_MAGIC,
            Container::Tree => TREE_MAGIC,
        }
    }

    fn version(self) -> u32 {
        match self {
            Container::Passage => FORMAT_VERSION,
            Container::Knowledge => KG_FORMAT_VERSION,
            Container::Tree => TREE_FORMAT_VERSION,
        }
    }

    fn holds(self, kind: GraphKind) -> bool {
        match self {
            Container::Passage => kind == GraphKind::Passage,
            Container::Knowledge => kind.is_knowledge_graph(),
            Container::Tree => kind == GraphKind::Tree,
        }
    }

    /// What the container holds, for errors.
    fn describe(self) -> &'static str {
        match self {
            Container::Passage => GraphKind::Passage.describe(),
            Container::Knowledge => "a knowledge graph (kg, tkg or rkg)",
            Container::Tree => GraphKind::Tree.describe(),
        }
    }

    /// The container whose magic `bytes` starts with.
    fn of(bytes: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| bytes.get(..8) == Some(&c.magic()[..]))
    }

    /// What a file image of this container holds: the kind its header names when the container
    /// holds that kind, else the container's description.
    fn found(self, bytes: &[u8]) -> &'static str {
        bytes
            .get(12..16)
            .and_then(|c| c.try_into().ok())
            .and_then(|c| GraphKind::from_code(u32::from_le_bytes(c)))
            .filter(|&k| self.holds(k))
            .map_or(self.describe(), GraphKind::describe)
    }
}

/// A container header whose magic, length and version were checked ([`Header::read`]); the
/// kind code and counts are the container's to judge.
pub(super) struct Header<'a, const N: usize> {
    /// The kind code at offset 12.
    pub kind: u32,
    /// The container's N counts.
    pub counts: [u64; N],
    /// The u32 after the CRC: reserved zero, or the tree's embedder code.
    pub word: u32,
    crc: u32,
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a, const N: usize> Header<'a, N> {
    /// Header size in bytes.
    pub const BYTES: usize = 24 + 8 * N;

    /// Checks the magic, that a whole header is present, and the version, then reads the rest
    /// of the header. `path` is only used in errors.
    pub fn read(bytes: &'a [u8], path: &'a Path, container: Container) -> Result<Self, GraphError> {
        match Container::of(bytes) {
            Some(c) if c == container => {}
            Some(c) => {
                return Err(GraphError::WrongKind {
                    path: path.to_path_buf(),
                    found: c.found(bytes),
                    wanted: container.describe(),
                })
            }
            None => {
                return Err(GraphError::NotAGraph {
                    path: path.to_path_buf(),
                })
            }
        }
        let truncated = || GraphError::Truncated {
            path: path.to_path_buf(),
            expected: Self::BYTES as u64,
            found: bytes.len() as u64,
        };
        if bytes.len() < Self::BYTES {
            return Err(truncated());
        }
        // Every field lies inside the `BYTES` just checked; `get` keeps that a checked fact.
        let u32_at = |o: usize| le_at(bytes, o, u32::from_le_bytes).ok_or_else(truncated);
        let version = u32_at(8)?;
        if version != container.version() {
            return Err(GraphError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: container.version(),
            });
        }
        let mut counts = [0u64; N];
        for (i, count) in counts.iter_mut().enumerate() {
            *count = le_at(bytes, 16 + 8 * i, u64::from_le_bytes).ok_or_else(truncated)?;
        }
        Ok(Self {
            kind: u32_at(12)?,
            counts,
            crc: u32_at(16 + 8 * N)?,
            word: u32_at(20 + 8 * N)?,
            bytes,
            path,
        })
    }

    /// Checks that the file is `expected` bytes long, the size its header implies (computed in
    /// u128 by the caller, so that absurd counts in a damaged header cannot overflow).
    pub fn check_len(&self, expected: u128) -> Result<(), GraphError> {
        if expected != self.bytes.len() as u128 {
            return Err(GraphError::Truncated {
                path: self.path.to_path_buf(),
                expected: u64::try_from(expected).unwrap_or(u64::MAX),
                found: self.bytes.len() as u64,
            });
        }
        Ok(())
    }

    /// The body, once its CRC matches the header's.
    pub fn body(&self) -> Result<&'a [u8], GraphError> {
        let body = self
            .bytes
            .get(Self::BYTES..)
            .ok_or_else(|| GraphError::Truncated {
                path: self.path.to_path_buf(),
                expected: Self::BYTES as u64,
                found: self.bytes.len() as u64,
            })?;
        let mut crc = flate2::Crc::new();
        crc.update(body);
        if crc.sum() != self.crc {
            return Err(corruption(self.path)(format!(
                "checksum mismatch (header {:#010x}, body {:#010x})",
                self.crc,
                crc.sum()
            )));
        }
        Ok(body)
    }
}

/// The `W`-byte little-endian value at `offset` of `bytes`, decoded by `from_le`; `None` when
/// `bytes` ends before it.
fn le_at<T, const W: usize>(bytes: &[u8], offset: usize, from_le: fn([u8; W]) -> T) -> Option<T> {
    let end = offset.checked_add(W)?;
    let raw: [u8; W] = bytes.get(offset..end)?.try_into().ok()?;
    Some(from_le(raw))
}

/// Frames `body` as a file image of `container`: the header (module doc), then the body.
pub(super) fn image<const N: usize>(
    container: Container,
    kind: GraphKind,
    counts: [u64; N],
    word: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(body);
    let mut out = Vec::with_capacity(Header::<N>::BYTES + body.len());
    out.extend_from_slice(&container.magic());
    out.extend_from_slice(&container.version().to_le_bytes());
    out.extend_from_slice(&kind.code().to_le_bytes());
    put(&mut out, counts, u64::to_le_bytes);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&word.to_le_bytes());
    debug_assert_eq!(out.len(), Header::<N>::BYTES);
    out.extend_from_slice(body);
    out
}

/// A closure making a [`GraphError::Corrupt`] that names `path`, for `map_err`.
pub(super) fn corruption(path: &Path) -> impl Fn(String) -> GraphError + Copy + '_ {
    move |reason| GraphError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Appends a string table; returns the blob length.
pub(super) fn put_strings<'a>(
    body: &mut Vec<u8>,
    items: impl Iterator<Item = &'a str> + Clone,
) -> u64 {
    let end = put_offsets(body, items.clone().map(str::len));
    for s in items {
        body.extend_from_slice(s.as_bytes());
    }
    end
}

/// Appends a list table; returns the number of values.
pub(super) fn put_lists<'a>(
    body: &mut Vec<u8>,
    items: impl Iterator<Item = &'a [u32]> + Clone,
) -> u64 {
    let end = put_offsets(body, items.clone().map(<[u32]>::len));
    put(body, items.flatten().copied(), u32::to_le_bytes);
    end
}

/// Appends the `n+1` offsets of a table whose entries have lengths `lens`; returns the last.
fn put_offsets(body: &mut Vec<u8>, lens: impl Iterator<Item = usize>) -> u64 {
    let mut off = 0u64;
    body.extend_from_slice(&off.to_le_bytes());
    for len in lens {
        off += len as u64;
        body.extend_from_slice(&off.to_le_bytes());
    }
    off
}

/// Appends fixed-width values, each encoded by `le` (`u32::to_le_bytes`, `f32::to_le_bytes`, …).
pub(super) fn put<T, const W: usize>(
    body: &mut Vec<u8>,
    values: impl IntoIterator<Item = T>,
    le: fn(T) -> [u8; W],
) {
    for v in values {
        body.extend_from_slice(&le(v));
    }
}

/// Reads sections from a body whose total size was already checked against the header. Every
/// read is bounds-checked all the same: a section running past the end of the body is an error
/// naming the section and its body offset, never a panic. `what` names the section in errors.
pub(super) struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { body, pos: 0 }
    }

    /// The next `len` bytes (`len` as counted by the header, hence u128).
    fn take(&mut self, len: u128, what: &str) -> Result<&'a [u8], String> {
        let past_end = || {
            format!(
                "{what} ({len} bytes at body offset {}) run past the end of the {}-byte body",
                self.pos,
                self.body.len()
            )
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .ok_or_else(past_end)?;
        let s = self.body.get(self.pos..end).ok_or_else(past_end)?;
        self.pos = end;
        Ok(s)
    }

    /// `n` fixed-width values, each decoded by `from_le`.
    fn values<T, const W: usize>(
        &mut self,
        n: usize,
        from_le: fn([u8; W]) -> T,
        what: &str,
    ) -> Result<Vec<T>, String> {
        Ok(self
            .take(W as u128 * n as u128, what)?
            .chunks_exact(W)
            .filter_map(|c| c.try_into().ok().map(from_le))
            .collect())
    }

    pub fn u32s(&mut self, n: usize, what: &str) -> Result<Vec<u32>, String> {
        self.values(n, u32::from_le_bytes, what)
    }

    pub fn u64s(&mut self, n: usize, what: &str) -> Result<Vec<u64>, String> {
        self.values(n, u64::from_le_bytes, what)
    }

    pub fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, String> {
        self.values(n, f32::from_le_bytes, what)
    }

    /// A string table of `n` strings over a `blob_len`-byte blob; `what` names it in errors.
    pub fn strings(&mut self, n: usize, blob_len: u64, what: &str) -> Result<Vec<String>, String> {
        let offsets = self.u64s(n.saturating_add(1), what)?;
        let blob = self.take(u128::from(blob_len), what)?;
        check_offsets(&offsets, blob_len, what)?;
        let blob =
            std::str::from_utf8(blob).map_err(|err| format!("{what} are not UTF-8: {err}"))?;
        spans(&offsets)
            .map(|span| {
                span.and_then(|r| blob.get(r))
                    .map(str::to_string)
                    .ok_or_else(|| format!("an offset of {what} splits a UTF-8 character"))
            })
            .collect()
    }

    /// A list table of `n` lists over `values` u32s; `what` names it in errors.
    pub fn lists(&mut self, n: usize, values: u64, what: &str) -> Result<Vec<Vec<u32>>, String> {
        let offsets = self.u64s(n.saturating_add(1), what)?;
        let count = usize::try_from(values)
            .map_err(|_| format!("{what} hold {values} values, more than memory can"))?;
        let flat = self.u32s(count, what)?;
        check_offsets(&offsets, values, what)?;
        spans(&offsets)
            .map(|span| {
                span.and_then(|r| flat.get(r))
                    .map(<[u32]>::to_vec)
                    .ok_or_else(|| format!("an offset of {what} lies beyond its {values} values"))
            })
            .collect()
    }
}

/// The ranges between consecutive `offsets` (`offsets[i]..offsets[i+1]`); `None` for a range
/// that does not fit in `usize`.
pub(super) fn spans(offsets: &[u64]) -> impl Iterator<Item = Option<std::ops::Range<usize>>> + '_ {
    offsets
        .iter()
        .zip(offsets.iter().skip(1))
        .map(|(&a, &b)| Some(usize::try_from(a).ok()?..usize::try_from(b).ok()?))
}

/// Offsets must start at 0, never decrease and end at `end`.
pub(super) fn check_offsets(offsets: &[u64], end: u64, what: &str) -> Result<(), String> {
    if offsets.first() != Some(&0) || offsets.last() != Some(&end) {
        return Err(format!("{what} do not span 0..{end}"));
    }
    if offsets
        .iter()
        .zip(offsets.iter().skip(1))
        .any(|(a, b)| a > b)
    {
        return Err(format!("{what} decrease"));
    }
    Ok(())
}

/// `items[i]` for the accessors whose `# Panics` contract makes an out-of-range id a caller bug:
/// panics with a message naming `what`, `i` and the count instead of a bare index error.
pub(super) fn at<'a, T>(items: &'a [T], i: usize, what: &str) -> &'a T {
    items
        .get(i)
        .unwrap_or_else(|| panic!("{what} {i} out of range (there are {})", items.len()))
}

/// Maps each id to its position.
pub(super) fn index_ids(ids: &[String]) -> HashMap<String, u32> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i as u32))
        .collect()
}

/// The whole of a graph file.
pub(super) fn read_image(path: &Path) -> Result<Vec<u8>, GraphError> {
    fs::read(path).map_err(io_err("cannot read graph", path))
}

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it is written, synced
/// and renamed over `path`. Returns the bytes written. An existing `path` is replaced only with
/// `overwrite`, and only if it is a sleuth graph file of any container.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<u64, GraphError> {
    check_target(path, overwrite)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let name = path
        .file_name()
        .map_or_else(|| "graph".into(), |n| n.to_string_lossy().into_owned());
    crate::index::remove_stale_temps(&parent, &name, &["tmp"]);
    // Synced before the rename: a graph index is expensive to rebuild.
    crate::atomic::write_with(path, |f| {
        f.write_all(bytes)?;
        f.flush()?;
        f.get_ref().sync_all()
    })
    .map_err(io_err("cannot write", path))?;
    Ok(bytes.len() as u64)
}

/// Refuses to replace anything but a sleuth graph, and that only with `overwrite`.
fn check_target(path: &Path, overwrite: bool) -> Result<(), GraphError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let exists = |reason| GraphError::Exists {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(exists("it exists and is not a file"));
    }
    if !overwrite {
        return Err(exists("it exists (pass overwrite to replace it)"));
    }
    let mut head = [0u8; 8];
    let is_graph = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && Container::of(&head).is_some();
    if !is_graph {
        return Err(exists("it is not a sleuth graph file"));
    }
    Ok(())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GraphError {
    let path = path.to_path_buf();
    move |source| GraphError::Io {
        action,
        path,
        source,
    }
}
