//! The reply cache: an append-only JSON Lines file, one line per completed request (format in
//! the [`crate::llm`] module doc).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::LlmError;

/// FNV-1a 128-bit offset basis.
const FNV_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
/// FNV-1a 128-bit prime.
const FNV_PRIME: u128 = 0x0000000001000000000000000000013b;

/// The cache key of a request: FNV-1a 128 over the model name, the prompt version and the
/// prompt text, each followed by a zero byte, as 32 lowercase hex digits. Stable across builds
/// and platforms (it depends on nothing but those bytes).
pub fn cache_key(model: &str, prompt_version: &str, prompt: &str) -> String {
    let mut bytes = Vec::with_capacity(model.len() + prompt_version.len() + prompt.len() + 3);
    for part in [model, prompt_version, prompt] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    format!("{:032x}", fnv1a_128(&bytes))
}

/// The 128-bit FNV-1a hash of `bytes`.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u128::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// One line of the cache file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    key: String,
    reply: String,
}

/// The replies loaded from a cache file, and the file opened for appending.
#[derive(Debug)]
pub(crate) struct ReplyCache {
    path: PathBuf,
    replies: HashMap<String, String>,
    file: Mutex<File>,
}

impl ReplyCache {
    /// Loads `path` (created when absent). A last line without its newline that does not parse
    /// was torn by an interrupted write: it is cut off the file with a warning.
    ///
    /// # Errors
    /// [`LlmError::CacheIo`] for filesystem failures; [`LlmError::CacheCorrupt`] naming the
    /// line of any other line that is not a `{"key", "reply"}` object.
    pub(crate) fn open(path: &Path) -> Result<Self, LlmError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| LlmError::CacheIo {
                action,
                path,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io("cannot open LLM cache"))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io("cannot read LLM cache"))?;
        let mut replies = HashMap::new();
        let mut offset = 0usize;
        let mut lines = text.split_inclusive('\n').enumerate().peekable();
        while let Some((i, raw)) = lines.next() {
            let last = lines.peek().is_none();
            let line = raw.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                offset += raw.len();
                continue;
            }
            match serde_json::from_str::<Line>(line) {
                Ok(l) => {
                    replies.insert(l.key, l.reply);
                    if last && !raw.ends_with('\n') {
                        // Complete but unterminated: terminate it before appending.
                        file.write_all(b"\n")
                            .map_err(io("cannot write LLM cache"))?;
                    }
                }
                Err(_) if last && !raw.ends_with('\n') => {
                    tracing::warn!(
                        cache = %path.display(),
                        line = i + 1,
                        "ignoring the torn last line of the LLM cache (an interrupted write)"
                    );
                    file.set_len(offset as u64)
                        .map_err(io("cannot truncate LLM cache"))?;
                }
                Err(e) => {
                    return Err(LlmError::CacheCorrupt {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason: e.to_string(),
                    })
                }
            }
            offset += raw.len();
        }
        file.seek(SeekFrom::End(0))
            .map_err(io("cannot seek LLM cache"))?;
        Ok(Self {
            path: path.to_path_buf(),
            replies,
            file: Mutex::new(file),
        })
    }

    /// The cached reply for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.replies.get(key).map(String::as_str)
    }

    /// Number of replies loaded at open.
    pub(crate) fn len(&self) -> usize {
        self.replies.len()
    }

    /// Appends one line and flushes it, so a build killed after this call keeps the reply.
    ///
    /// # Errors
    /// [`LlmError::CacheIo`] when the write fails.
    pub(crate) fn append(&self, key: &str, reply: &str) -> Result<(), LlmError> {
        #[allow(clippy::expect_used)] // a struct of two `String`s always serializes
        let mut line = serde_json::to_string(&Line {
            key: key.to_string(),
            reply: reply.to_string(),
        })
        .expect("a string pair serializes");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| LlmError::CacheIo {
                action: "cannot write LLM cache",
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_separates_fields() {
        assert_eq!(cache_key("m", "v1", "p"), cache_key("m", "v1", "p"));
        assert_ne!(cache_key("m", "v1", "p"), cache_key("m", "v2", "p"));
        assert_ne!(cache_key("ab", "c", "p"), cache_key("a", "bc", "p"));
        assert_eq!(cache_key("m", "v1", "p").len(), 32);
        // Published FNV-1a 128 test vectors.
        assert_eq!(fnv1a_128(b""), FNV_OFFSET);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
        // Pinned: a change here invalidates every cache on disk.
        assert_eq!(
            cache_key("model", "extract-v1", "text"),
            "330b33dbec95da77942e3c04ed613e52"
        );
    }

    #[test]
    fn reopen_keeps_lines_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let cache = ReplyCache::open(&path).unwrap();
        cache.append("k1", "r1").unwrap();
        cache.append("k2", "r\n2").unwrap();
        drop(cache);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"key\": \"k3\", \"rep");
        std::fs::write(&path, &text).unwrap();
        let cache = ReplyCache::open(&path).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("k2"), Some("r\n2"));
        cache.append("k3", "r3").unwrap();
        drop(cache);
        let cache = ReplyCache::open(&path).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("k3"), Some("r3"));
    }

    #[test]
    fn unterminated_complete_last_line_is_kept_and_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, "{\"key\":\"a\",\"reply\":\"x\"}").unwrap();
        let cache = ReplyCache::open(&path).unwrap();
        cache.append("b", "y").unwrap();
        drop(cache);
        let cache = ReplyCache::open(&path).unwrap();
        assert_eq!((cache.get("a"), cache.get("b")), (Some("x"), Some("y")));
    }

    #[test]
    fn malformed_middle_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(
            &path,
            "{\"key\":\"a\",\"reply\":\"x\"}\nnot json\n{\"key\":\"b\",\"reply\":\"y\"}\n",
        )
        .unwrap();
        let err = ReplyCache::open(&path).unwrap_err();
        assert!(
            matches!(err, LlmError::CacheCorrupt { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("c.jsonl"), "{err}");
    }
}
