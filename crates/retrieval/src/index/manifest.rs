//! `sleuth-index.json`: what an index directory holds, readable without tantivy.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{IndexError, TokenizerKind};

/// The manifest written into every index directory that sleuth builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexManifest {
    /// Layout version of the index directory; see [`IndexManifest::FORMAT_VERSION`].
    pub format_version: u32,
    /// The analyzer used for `title` and `text`; queries must use the same one.
    pub tokenizer: TokenizerKind,
    /// Number of passages indexed.
    pub passages: u64,
    /// The corpus file the passages were read from, as given to the builder; `None` when the
    /// passages came from elsewhere (an in-memory list, a stream).
    pub corpus_path: Option<PathBuf>,
    /// The sleuth version that built the index (`CARGO_PKG_VERSION`).
    pub sleuth_version: String,
}

impl IndexManifest {
    /// File name of the manifest inside an index directory.
    pub const FILE_NAME: &'static str = "sleuth-index.json";
    /// The format version this build writes, and the highest it reads.
    pub const FORMAT_VERSION: u32 = 1;

    /// A manifest for an index built now by this sleuth version.
    pub fn new(tokenizer: TokenizerKind, passages: u64, corpus_path: Option<PathBuf>) -> Self {
        Self {
            format_version: Self::FORMAT_VERSION,
            tokenizer,
            passages,
            corpus_path,
            sleuth_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Reads the manifest of the index in `dir`; `Ok(None)` when the directory has none (an
    /// index built by other tools).
    ///
    /// # Errors
    /// [`IndexError::Io`] when the file exists but cannot be read, [`IndexError::Manifest`]
    /// when it is not a valid manifest, [`IndexError::UnsupportedFormat`] when its format
    /// version is newer than [`IndexManifest::FORMAT_VERSION`].
    pub fn read(dir: &Path) -> Result<Option<Self>, IndexError> {
        let path = dir.join(Self::FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IndexError::Io {
                    action: "cannot read",
                    path,
                    source,
                })
            }
        };
        // Check the version first, so a newer layout is reported as such rather than as
        // whatever field it renamed.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|source| IndexError::Manifest {
                path: path.clone(),
                source,
            })?;
        if version.format_version > Self::FORMAT_VERSION {
            return Err(IndexError::UnsupportedFormat {
                path,
                found: version.format_version,
                supported: Self::FORMAT_VERSION,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| IndexError::Manifest { path, source })
    }

    /// Writes the manifest into `dir` (pretty JSON, synced to disk).
    ///
    /// # Errors
    /// [`IndexError::Io`] naming the manifest path when it cannot be written.
    pub fn write(&self, dir: &Path) -> Result<(), IndexError> {
        let path = dir.join(Self::FILE_NAME);
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&path)?;
            file.write_all(&json)?;
            file.sync_all()
        };
        write().map_err(|source| IndexError::Io {
            action: "cannot write",
            path,
            source,
        })
    }
}
