//! Building search indexes over a passage corpus.
//!
//! Two index kinds: a tantivy BM25 index ([`build_bm25`]), and the graph-RAG indexes of
//! DESIGN §6 in [`graph`] (today the passage graph, [`graph::build_pg`]). Reading an index is
//! the business of [`crate::search`]; this module owns what is on disk:
//!
//! - the **schema** ([`FIELD_ID`], [`FIELD_TITLE`], [`FIELD_TEXT`]): `id` is a raw `STRING`
//!   (exact look-up, never tokenized), `title` and `text` are tokenized `TEXT` with frequencies
//!   and positions, and all three are stored so a hit can be shown without a second store;
//! - the **tokenizer** ([`TokenizerKind`]), named in the schema and the manifest, so the search
//!   side tokenizes queries exactly as the passages were tokenized;
//! - the **manifest** ([`IndexManifest`], `sleuth-index.json`): format version, tokenizer,
//!   passage count and corpus path, so an index directory says what it is without opening it.
//!
//! Builds are atomic: [`build_bm25`] writes into a hidden temporary directory beside the target
//! and renames it into place only once the index is committed and its manifest written, so a
//! crash or a malformed corpus line never leaves a half-built index where a reader would find
//! it. An existing non-empty directory is replaced only with [`IndexOptions::overwrite`], and
//! only when it looks like an index (it holds a manifest or a tantivy `meta.json`), so a wrong
//! path cannot wipe an unrelated folder. A build killed with SIGKILL cannot clean up after
//! itself; the next build beside the same target removes what dead builds left
//! (`remove_stale_temps`).

use std::path::PathBuf;

mod bm25;
pub mod graph;
mod manifest;
mod tokenizer;

pub use bm25::{
    build_bm25, build_bm25_from_path, IndexOptions, IndexStats, DEFAULT_WRITER_HEAP_BYTES,
    MAX_WRITER_THREADS,
};
pub use manifest::IndexManifest;
pub use tokenizer::TokenizerKind;

use crate::corpus::CorpusError;

/// Name of the stored, untokenized passage id field.
pub const FIELD_ID: &str = "id";
/// Name of the stored, tokenized page title field.
pub const FIELD_TITLE: &str = "title";
/// Name of the stored, tokenized passage text field.
pub const FIELD_TEXT: &str = "text";

/// Errors building or describing an index. Variants tied to a file or directory name it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Reading the corpus failed; the inner error names the corpus file and line.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// The output directory exists, is not empty, and `overwrite` was not set.
    #[error(
        "refusing to overwrite non-empty directory {path} (set `overwrite` to replace an existing index)",
        path = path.display()
    )]
    OutDirNotEmpty {
        /// The output directory.
        path: PathBuf,
    },
    /// `overwrite` was set, but the non-empty output directory does not look like an index
    /// (no `sleuth-index.json` nor `meta.json`), so it is left alone.
    #[error(
        "refusing to replace {path}: it is not empty and does not look like an index (no sleuth-index.json or meta.json)",
        path = path.display()
    )]
    NotAnIndexDir {
        /// The output directory.
        path: PathBuf,
    },
    /// The output path exists and is not a directory.
    #[error("{path} exists and is not a directory", path = path.display())]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// A filesystem operation (create, rename, remove, stat) failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done, e.g. `"cannot create"`.
        action: &'static str,
        /// The file or directory acted on.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// tantivy failed while creating, writing or committing the index.
    #[error("tantivy error in index {path}: {source}", path = path.display())]
    Tantivy {
        /// The index directory (the temporary build directory during a build).
        path: PathBuf,
        /// The underlying tantivy error.
        #[source]
        source: tantivy::TantivyError,
    },
    /// The manifest `sleuth-index.json` is not valid JSON or lacks a field.
    #[error("malformed index manifest {path}: {source}", path = path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What the JSON parser objected to.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest was written by a newer sleuth with a format this one cannot read.
    #[error(
        "index manifest {path} has format version {found}; this sleuth reads up to {supported}",
        path = path.display()
    )]
    UnsupportedFormat {
        /// The manifest file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The highest version this build understands ([`IndexManifest::FORMAT_VERSION`]).
        supported: u32,
    },
    /// An [`IndexOptions`] field is out of range.
    #[error("invalid index option `{name}`: {reason}")]
    InvalidOption {
        /// The option's field name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

/// Removes the hidden temporary entries `.{name}.{tag}-{pid}[-…]` in `parent` whose process
/// `pid` is no longer running: what a build of `name` killed by SIGKILL left behind (its
/// clean-up on drop never ran). Entries of live processes, including this one, are kept, so two
/// concurrent builds never delete each other's work. Best effort: a failure is logged.
pub(crate) fn remove_stale_temps(parent: &std::path::Path, name: &str, tags: &[&str]) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let pid = tags.iter().find_map(|tag| {
            let rest = file.strip_prefix(&format!(".{name}.{tag}-"))?;
            let digits = rest.split('-').next()?;
            digits.parse::<i32>().ok()
        });
        let Some(pid) = pid else { continue };
        if pid <= 0 || pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a dead build's temporary entry")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a dead build's temporary entry")
            }
        }
    }
}

/// Whether process `pid` exists (signal 0 probes without delivering anything).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod stale_tests {
    #[test]
    fn only_dead_processes_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid far above pid_max's default cannot be running.
        let dead = dir.path().join(".wiki.building-99999999-123");
        let mine = dir
            .path()
            .join(format!(".wiki.building-{}-5", std::process::id()));
        let other_name = dir.path().join(".other.building-99999999-1");
        let graph = dir.path().join(".g.bin.tmp-99999999");
        for d in [&dead, &mine, &other_name] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(&graph, b"x").unwrap();
        super::remove_stale_temps(dir.path(), "wiki", &["building", "old"]);
        super::remove_stale_temps(dir.path(), "g.bin", &["tmp"]);
        assert!(!dead.exists() && !graph.exists());
        assert!(mine.exists() && other_name.exists());
    }
}
