//! The disk cache that makes online runs replayable: one JSON file per (engine, query) holding
//! the passages fetched for it, before ranking (so any `k` can be served from it).
//!
//! File name: the FNV-1a 64-bit hash of `engine \n query`, in hex. The file repeats the engine
//! and query, and a file whose key differs (a hash collision) counts as a miss. Writes go to a
//! temporary file renamed into place, so a crash never leaves a torn entry.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::fnv1a;

/// A fetched passage as stored in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedPassage {
    /// Page URL (or the search result URL for a snippet).
    pub url: String,
    /// Page or result title.
    pub title: String,
    /// Passage text.
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    engine: String,
    query: String,
    passages: Vec<CachedPassage>,
}

/// The cache file for `(engine, query)` under `dir`.
pub fn path_for(dir: &Path, engine: &str, query: &str) -> PathBuf {
    let key = fnv1a(format!("{engine}\n{query}").as_bytes());
    dir.join(format!("{engine}-{key:016x}.json"))
}

/// The cached passages for `(engine, query)`; `None` on a miss or an unreadable entry.
pub fn load(dir: &Path, engine: &str, query: &str) -> Option<Vec<CachedPassage>> {
    let path = path_for(dir, engine, query);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Entry>(&bytes) {
        Ok(e) if e.engine == engine && e.query == query => Some(e.passages),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cache entry");
            None
        }
    }
}

/// Stores the passages for `(engine, query)`.
///
/// # Errors
/// The I/O error, with the path it concerns.
pub fn store(
    dir: &Path,
    engine: &str,
    query: &str,
    passages: &[CachedPassage],
) -> Result<(), (PathBuf, std::io::Error)> {
    std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let path = path_for(dir, engine, query);
    let entry = Entry {
        engine: engine.into(),
        query: query.into(),
        passages: passages.to_vec(),
    };
    let json = serde_json::to_vec(&entry).map_err(|e| (path.clone(), e.into()))?;
    crate::atomic::write(&path, json).map_err(|e| (path.clone(), e))
}
