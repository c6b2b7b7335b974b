//! Getting the public data files a user needs (`sleuth data fetch`, DESIGN §1): the QA sets,
//! HotpotQA's dev set with its context paragraphs, optionally a Wikipedia passage dump, each
//! downloaded from its published URL into a folder of the user's choosing.
//!
//! Design choices:
//!
//! - **A manifest, not code.** What to fetch is a TOML list of `[[file]]` entries ([`Manifest`]:
//!   name, URL, licence, description, destination, optional SHA-256 and size, and a
//!   [`FetchMode`]). The repository's own list, `corpus/manifest.toml`, is compiled into the
//!   binary ([`DEFAULT_MANIFEST`]), so the command works from any directory; `--manifest`
//!   reads any other file of the same schema (the tests point one at a loopback server).
//! - **Resumable.** Bytes are appended to `DEST.part` as they arrive. A rerun continues a part
//!   of N bytes with `Range: bytes=N-`: a `206` whose `Content-Range` starts at N is appended;
//!   a `200` means the server ignored the range, so the part is truncated and written from
//!   zero; a `416` whose `Content-Range: bytes */TOTAL` equals N means the part was already
//!   whole, any other `416` restarts from zero. There are no automatic retries: a dropped
//!   connection is an error ([`DataError::Interrupted`]) that keeps the part, and running the
//!   command again resumes it.
//! - **Checked, then renamed.** The SHA-256 is computed while the bytes stream in (a resumed
//!   part's earlier bytes are hashed first), then the size and digest are compared with the
//!   manifest's; only a file that passes is renamed from `DEST.part` to `DEST`, so `DEST`
//!   never holds a partial or wrong file. A wrong digest or an oversized file removes the part.
//! - **Skips what is there.** An existing `DEST` whose digest (or, lacking one, size) matches
//!   the manifest is not downloaded again; one that does not match is downloaded again and
//!   replaced. An existing `DEST` with neither in the manifest is trusted.
//! - **Blocking.** Like [`crate::llm`]'s client, a [`Fetcher`] owns a single-threaded tokio
//!   runtime for `reqwest` and must be called from synchronous code (calling it inside a tokio
//!   runtime panics). Files are fetched one after another; the network, not the CPU, is the
//!   limit.
//!
//! The machines this repository is developed on reach none of the published sites, so this
//! module is tested only against a loopback HTTP server (`tests/data_fetch.rs`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::client::{Client, ClientOptions};

/// The repository's manifest, `corpus/manifest.toml`, compiled into the binary.
pub const DEFAULT_MANIFEST: &str = include_str!("../../../../corpus/manifest.toml");

/// Write buffer for the part file, in bytes.
const WRITE_BUF_BYTES: usize = 1 << 20;

/// Read buffer when hashing a file on disk, in bytes.
const HASH_BUF_BYTES: usize = 1 << 20;

/// Errors of the manifest and the downloads. Each variant names the manifest, the entry, the
/// URL or the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The manifest file could not be read.
    #[error("cannot read manifest {path}: {source}", path = path.display())]
    ManifestRead {
        /// The manifest file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The manifest is not valid TOML of the expected schema (unknown keys are rejected).
    #[error("cannot parse manifest {path}: {source}", path = path.display())]
    ManifestParse {
        /// The manifest file.
        path: PathBuf,
        /// What the TOML parser objected to (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// An entry of the manifest breaks a rule: an empty or repeated name, a URL that is not
    /// http(s), a destination that is absolute or leaves the output folder, a malformed
    /// SHA-256.
    #[error("manifest {path}: entry `{entry}`: {reason}", path = path.display())]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// The entry's name (or its 1-based position when the name is the problem).
        entry: String,
        /// The rule broken.
        reason: String,
    },
    /// `--only` named an entry the manifest does not have.
    #[error("the manifest has no entry `{name}` (it has: {available})")]
    UnknownEntry {
        /// The name asked for.
        name: String,
        /// The manifest's names, comma-separated.
        available: String,
    },
    /// The entry is marked `fetch = "manual"`: listed for reference, never downloaded.
    #[error("`{name}` is not downloaded by this command (fetch = \"manual\"): get it by hand from {url}")]
    Manual {
        /// The entry's name.
        name: String,
        /// Where to get it.
        url: String,
    },
    /// The HTTP client or its runtime could not be built.
    #[error("cannot start the HTTP client: {0}")]
    Setup(String),
    /// The request failed before any response (DNS, connection refused, TLS, timeout).
    #[error("GET {url} failed: {source}")]
    Request {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status (404, 500, …).
    #[error("GET {url} answered HTTP {status}")]
    Http {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// A `206 Partial Content` reply that does not continue the part (no `Content-Range`, or
    /// one starting elsewhere), or a `206` to a request without a range.
    #[error("GET {url}: unusable partial reply ({reason})")]
    BadRange {
        /// The URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The connection broke mid-body. The bytes received are kept in the part file; running
    /// the fetch again resumes from there.
    #[error("download of {url} interrupted after {bytes} bytes in {part} (rerun to resume): {source}", part = part.display())]
    Interrupted {
        /// The URL.
        url: String,
        /// The part file holding the bytes so far.
        part: PathBuf,
        /// Length of the part file, in bytes.
        bytes: u64,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server ended the body cleanly but short of the manifest's size. The part is kept;
    /// a rerun resumes it.
    #[error("download of {url} ended after {bytes} of {expected} bytes in {part} (rerun to resume)", part = part.display())]
    Short {
        /// The URL.
        url: String,
        /// The part file.
        part: PathBuf,
        /// Bytes in the part file.
        bytes: u64,
        /// The manifest's size, in bytes.
        expected: u64,
    },
    /// The download is longer than the manifest's size; the part was removed.
    #[error("{path} (from {url}) is {actual} bytes, the manifest says {expected}; the download was removed", path = path.display())]
    SizeMismatch {
        /// The destination file.
        path: PathBuf,
        /// The URL.
        url: String,
        /// The manifest's size, in bytes.
        expected: u64,
        /// The size received, in bytes.
        actual: u64,
    },
    /// The download's SHA-256 differs from the manifest's; the part was removed and no file
    /// was written at the destination.
    #[error("sha256 mismatch for {path} (from {url}): expected {expected}, got {actual}; the download was removed", path = path.display())]
    Checksum {
        /// The destination file.
        path: PathBuf,
        /// The URL.
        url: String,
        /// The manifest's digest (lowercase hex).
        expected: String,
        /// The digest of the bytes received (lowercase hex).
        actual: String,
    },
    /// A local file operation failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// When a manifest entry is downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchMode {
    /// Fetched by a plain `sleuth data fetch` (no `--only`). The default.
    #[default]
    Default,
    /// Fetched only when named in `--only` (large files, optional data).
    OnRequest,
    /// Never downloaded by the command: listed with its published URL for a person to follow
    /// (a page behind a confirmation step, or data held out of this repository).
    Manual,
}

/// One file of a [`Manifest`] (a `[[file]]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Unique short name; what `--only` selects. Letters, digits, `_`, `-` and `.`.
    pub name: String,
    /// The published `http://` or `https://` URL.
    pub url: String,
    /// Where the file lands, relative to the output folder (no absolute path, no `..`).
    pub dest: PathBuf,
    /// The licence the publisher states, e.g. `MIT`, `CC BY-SA 4.0`.
    pub license: String,
    /// What the file is and what to do with it.
    pub description: String,
    /// Lowercase hex SHA-256 of the file, when known (uppercase is accepted and lowered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Length of the file in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// When the entry is downloaded (default: [`FetchMode::Default`]).
    #[serde(default)]
    pub fetch: FetchMode,
}

/// A list of downloadable files: the TOML schema of `corpus/manifest.toml`, whose comments
/// document each field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The entries, in file order (TOML `[[file]]` tables).
    #[serde(default, rename = "file")]
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    /// The repository's manifest ([`DEFAULT_MANIFEST`]).
    #[allow(clippy::expect_used)] // a compile-time constant, parsed by a unit test
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_MANIFEST, Path::new("corpus/manifest.toml"))
            .expect("the built-in manifest is valid (tested)")
    }

    /// Reads and validates a manifest file.
    ///
    /// # Errors
    /// [`DataError::ManifestRead`], [`DataError::ManifestParse`],
    /// [`DataError::ManifestInvalid`], each naming `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| DataError::ManifestRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates manifest TOML; `label` stands for the file in errors.
    ///
    /// # Errors
    /// [`DataError::ManifestParse`] and [`DataError::ManifestInvalid`].
    pub fn parse(text: &str, label: &Path) -> Result<Self, DataError> {
        let mut manifest: Manifest =
            toml::from_str(text).map_err(|source| DataError::ManifestParse {
                path: label.to_path_buf(),
                source,
            })?;
        manifest.validate(label)?;
        Ok(manifest)
    }

    /// Checks every entry (see [`DataError::ManifestInvalid`]) and lowers SHA-256 digests.
    fn validate(&mut self, label: &Path) -> Result<(), DataError> {
        let mut names = HashSet::new();
        let mut dests = HashSet::new();
        for (i, e) in self.files.iter_mut().enumerate() {
            let invalid = |entry: String, reason: String| DataError::ManifestInvalid {
                path: label.to_path_buf(),
                entry,
                reason,
            };
            let valid_name = !e.name.is_empty()
                && e.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid_name {
                return Err(invalid(
                    format!("#{}", i + 1),
                    format!(
                        "name {:?} must be non-empty letters, digits, `_`, `-`, `.`",
                        e.name
                    ),
                ));
            }
            let name = e.name.clone();
            if !names.insert(name.clone()) {
                return Err(invalid(name, "the name is used by an earlier entry".into()));
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return Err(invalid(
                    name,
                    format!("url {:?} is not http:// or https://", e.url),
                ));
            }
            let inside = e.dest.components().next().is_some()
                && e.dest
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(invalid(
                    name,
                    format!(
                        "dest {:?} must be a relative path without `.` or `..`",
                        e.dest
                    ),
                ));
            }
            if !dests.insert(e.dest.clone()) {
                return Err(invalid(
                    name,
                    format!("dest {:?} is used by an earlier entry", e.dest),
                ));
            }
            if let Some(digest) = &mut e.sha256 {
                if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        name,
                        format!("sha256 {digest:?} is not 64 hex digits"),
                    ));
                }
                digest.make_ascii_lowercase();
            }
        }
        Ok(())
    }

    /// The entries to fetch: with an empty `only`, every [`FetchMode::Default`] entry; else
    /// the named entries, in the order named (a repeated name counts once).
    ///
    /// # Errors
    /// [`DataError::UnknownEntry`] for a name the manifest lacks; [`DataError::Manual`] for a
    /// [`FetchMode::Manual`] entry.
    pub fn select(&self, only: &[String]) -> Result<Vec<&ManifestEntry>, DataError> {
        if only.is_empty() {
            return Ok(self
                .files
                .iter()
                .filter(|e| e.fetch == FetchMode::Default)
                .collect());
        }
        let mut out: Vec<&ManifestEntry> = Vec::new();
        for name in only {
            let entry = self.get(name).ok_or_else(|| DataError::UnknownEntry {
                name: name.clone(),
                available: self
                    .files
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if entry.fetch == FetchMode::Manual {
                return Err(manual(entry));
            }
            if !out.iter().any(|e| e.name == entry.name) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The entry called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.files.iter().find(|e| e.name == name)
    }
}

fn manual(entry: &ManifestEntry) -> DataError {
    DataError::Manual {
        name: entry.name.clone(),
        url: entry.url.clone(),
    }
}

/// Network and display settings of a [`Fetcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Draw a byte progress bar per file on stderr (indicatif draws nothing when stderr is not
    /// a terminal). Default: `true`.
    pub progress: bool,
    /// Seconds allowed to open a connection. Default: 30.
    pub connect_timeout_secs: u64,
    /// Seconds allowed between two reads of the body before the download is abandoned (and
    /// may be resumed); a download as a whole has no time limit. Default: 120.
    pub read_timeout_secs: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            progress: true,
            connect_timeout_secs: 30,
            read_timeout_secs: 120,
        }
    }
}

/// What [`Fetcher::fetch`] did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchStatus {
    /// Downloaded from the first byte.
    Downloaded,
    /// An earlier part file was continued (or found whole).
    Resumed,
    /// The destination already held the right file; nothing was requested.
    UpToDate,
}

/// The outcome of fetching one entry; the CLI prints it as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchReport {
    /// The entry's name.
    pub name: String,
    /// The destination file.
    pub path: PathBuf,
    /// What was done.
    pub status: FetchStatus,
    /// Length of the destination file, in bytes.
    pub bytes: u64,
    /// Bytes received over the network by this call.
    pub downloaded: u64,
    /// Lowercase hex SHA-256 of the file; `None` for an up-to-date file the manifest gives no
    /// digest for (it is not re-read just to report one).
    pub sha256: Option<String>,
}

/// The part file beside `dest`: `DEST.part`, where bytes go until the file is complete and
/// checked.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Lowercase hex SHA-256 of a file's bytes.
///
/// # Errors
/// [`DataError::Io`] naming the file.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut hasher = Sha256::new();
    hash_into(&mut hasher, path)?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds a file's bytes to `hasher`; returns their count.
fn hash_into(hasher: &mut Sha256, path: &Path) -> Result<u64, DataError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    let mut buf = vec![0u8; HASH_BUF_BYTES];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("cannot read", path)(e)),
        };
        #[allow(clippy::indexing_slicing)] // in bounds: `Read::read` returns n <= buf.len()
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataError + 'a {
    move |source| DataError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A part file completed by one [`Fetcher::download`] call.
struct Completed {
    status: FetchStatus,
    /// Bytes received by this call.
    received: u64,
    /// Length of the part file.
    total: u64,
    /// Its SHA-256, lowercase hex.
    sha256: String,
}

/// Downloads manifest entries, resumably and checked (see the [module docs](self)).
///
/// ```no_run
/// use sleuth_retrieval::data::{FetchOptions, Fetcher, Manifest};
/// let manifest = Manifest::builtin();
/// let fetcher = Fetcher::new(&FetchOptions::default())?;
/// for entry in manifest.select(&[])? {
///     let report = fetcher.fetch(entry, "data".as_ref())?;
///     println!("{} {:?}", report.path.display(), report.status);
/// }
/// # Ok::<(), sleuth_retrieval::data::DataError>(())
/// ```
#[derive(Debug)]
pub struct Fetcher {
    opts: FetchOptions,
    client: Client,
}

impl Fetcher {
    /// Builds the HTTP client ([`crate::http::client::Client`], its own runtime).
    ///
    /// # Errors
    /// [`DataError::Setup`] when either cannot be built.
    pub fn new(opts: &FetchOptions) -> Result<Self, DataError> {
        let client = Client::new(&ClientOptions {
            connect_timeout: Some(Duration::from_secs(opts.connect_timeout_secs)),
            read_timeout: Some(Duration::from_secs(opts.read_timeout_secs)),
            user_agent: Some(concat!("sleuth/", env!("CARGO_PKG_VERSION")).into()),
            ..ClientOptions::default()
        })
        .map_err(|e| DataError::Setup(e.to_string()))?;
        Ok(Self {
            opts: opts.clone(),
            client,
        })
    }

    /// Fetches one entry to `out_dir/dest`: skipped when already there and matching, else
    /// downloaded (or resumed) into `dest.part`, checked against the manifest's size and
    /// SHA-256, and renamed into place.
    ///
    /// # Errors
    /// [`DataError::Manual`] for a manual entry; [`DataError::Request`], [`DataError::Http`],
    /// [`DataError::BadRange`] for the request; [`DataError::Interrupted`] and
    /// [`DataError::Short`] (part kept: rerun to resume); [`DataError::SizeMismatch`] and
    /// [`DataError::Checksum`] (part removed); [`DataError::Io`] for local files.
    pub fn fetch(&self, entry: &ManifestEntry, out_dir: &Path) -> Result<FetchReport, DataError> {
        if entry.fetch == FetchMode::Manual {
            return Err(manual(entry));
        }
        let _span = tracing::info_span!("fetch", name = %entry.name).entered();
        let dest = out_dir.join(&entry.dest);
        let part = part_path(&dest);
        if let Some(report) = self.up_to_date(entry, &dest)? {
            let _ = fs::remove_file(&part);
            return Ok(report);
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let done = self.client.block_on(self.download(entry, &part))?;
        let url = &entry.url;
        if let Some(expected) = entry.size {
            if done.total < expected {
                return Err(DataError::Short {
                    url: url.clone(),
                    part,
                    bytes: done.total,
                    expected,
                });
            }
            if done.total > expected {
                let _ = fs::remove_file(&part);
                return Err(DataError::SizeMismatch {
                    path: dest,
                    url: url.clone(),
                    expected,
                    actual: done.total,
                });
            }
        }
        if let Some(expected) = &entry.sha256 {
            if *expected != done.sha256 {
                let _ = fs::remove_file(&part);
                return Err(DataError::Checksum {
                    path: dest,
                    url: url.clone(),
                    expected: expected.clone(),
                    actual: done.sha256,
                });
            }
        }
        fs::rename(&part, &dest).map_err(io_err("cannot rename into place", &dest))?;
        tracing::info!(path = %dest.display(), bytes = done.total, "fetched");
        Ok(FetchReport {
            name: entry.name.clone(),
            path: dest,
            status: done.status,
            bytes: done.total,
            downloaded: done.received,
            sha256: Some(done.sha256),
        })
    }

    /// A report when `dest` exists and matches the manifest (digest, else size, else mere
    /// existence); `None` when it must be downloaded.
    fn up_to_date(
        &self,
        entry: &ManifestEntry,
        dest: &Path,
    ) -> Result<Option<FetchReport>, DataError> {
        let Ok(meta) = fs::metadata(dest) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Err(DataError::Io {
                action: "cannot write over",
                path: dest.to_path_buf(),
                source: io::Error::other("it exists and is not a file"),
            });
        }
        let report = |sha256| FetchReport {
            name: entry.name.clone(),
            path: dest.to_path_buf(),
            status: FetchStatus::UpToDate,
            bytes: meta.len(),
            downloaded: 0,
            sha256,
        };
        if entry.size.is_some_and(|size| size != meta.len()) {
            tracing::warn!(path = %dest.display(), "existing file has the wrong size; downloading it again");
            return Ok(None);
        }
        match &entry.sha256 {
            None => Ok(Some(report(None))),
            Some(expected) => {
                let actual = sha256_file(dest)?;
                if actual == *expected {
                    Ok(Some(report(Some(actual))))
                } else {
                    tracing::warn!(path = %dest.display(), %expected, %actual, "existing file has the wrong sha256; downloading it again");
                    Ok(None)
                }
            }
        }
    }

    /// Brings `part` to the end of the entry's body, resuming it when it has bytes.
    async fn download(&self, entry: &ManifestEntry, part: &Path) -> Result<Completed, DataError> {
        let url = entry.url.as_str();
        let mut have = fs::metadata(part).map_or(0, |m| m.len());
        if entry.size.is_some_and(|size| have > size) {
            tracing::warn!(part = %part.display(), "part file longer than the manifest's size; starting over");
            have = 0;
        }
        if have > 0 && entry.size == Some(have) {
            return whole_part(part, have);
        }
        let (mut resp, offset) = loop {
            let mut req = self.client.http().get(url);
            if have > 0 {
                req = req.header(RANGE, format!("bytes={have}-"));
            }
            let resp = req.send().await.map_err(|source| DataError::Request {
                url: url.to_string(),
                source,
            })?;
            let content_range = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let start = content_range.as_deref().and_then(range_start);
                    if have == 0 || start != Some(have) {
                        return Err(DataError::BadRange {
                            url: url.to_string(),
                            reason: format!(
                                "asked for bytes {have}- and got Content-Range {:?}",
                                content_range.unwrap_or_default()
                            ),
                        });
                    }
                    break (resp, have);
                }
                StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                    if content_range.as_deref().and_then(range_total) == Some(have) {
                        return whole_part(part, have);
                    }
                    tracing::warn!(%url, "server refused to resume the part file; starting over");
                    have = 0;
                }
                s if s.is_success() => {
                    if have > 0 {
                        tracing::warn!(%url, "server ignored the Range header; starting over");
                    }
                    break (resp, 0);
                }
                s => {
                    return Err(DataError::Http {
                        url: url.to_string(),
                        status: s.as_u16(),
                    })
                }
            }
        };

        let mut hasher = Sha256::new();
        let file = if offset > 0 {
            hash_into(&mut hasher, part)?;
            OpenOptions::new().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(io_err("cannot open", part))?;
        let mut out = BufWriter::with_capacity(WRITE_BUF_BYTES, file);
        let total = resp.content_length().map(|n| offset + n).or(entry.size);
        let bar = self.byte_bar(&entry.name, total);
        bar.set_position(offset);
        let mut received = 0u64;
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    out.write_all(&bytes)
                        .map_err(io_err("cannot write", part))?;
                    hasher.update(&bytes);
                    received += bytes.len() as u64;
                    bar.inc(bytes.len() as u64);
                }
                Ok(None) => break,
                Err(source) => {
                    bar.abandon();
                    out.flush().map_err(io_err("cannot write", part))?;
                    return Err(DataError::Interrupted {
                        url: url.to_string(),
                        part: part.to_path_buf(),
                        bytes: offset + received,
                        source,
                    });
                }
            }
        }
        bar.finish_and_clear();
        let file = out
            .into_inner()
            .map_err(|e| io_err("cannot write", part)(e.into_error()))?;
        file.sync_all().map_err(io_err("cannot sync", part))?;
        Ok(Completed {
            status: if offset > 0 {
                FetchStatus::Resumed
            } else {
                FetchStatus::Downloaded
            },
            received,
            total: offset + received,
            sha256: hex(&hasher.finalize()),
        })
    }

    /// A byte progress bar over `total` bytes (a spinner when unknown), or a hidden one.
    fn byte_bar(&self, name: &str, total: Option<u64>) -> indicatif::ProgressBar {
        if !self.opts.progress {
            return indicatif::ProgressBar::hidden();
        }
        let (bar, template) = match total {
            Some(len) => (
                indicatif::ProgressBar::new(len),
                "{prefix} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} · {elapsed}, ETA {eta}",
            ),
            None => (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} {prefix} {bytes} {bytes_per_sec} · {elapsed}",
            ),
        };
        #[allow(clippy::expect_used)] // the templates are the two literals above
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("the progress template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_secs(1));
        bar
    }
}

/// A part file that already holds the whole body (its length equals the manifest's size, or
/// the server's `416` says so): hashed, nothing requested.
fn whole_part(part: &Path, len: u64) -> Result<Completed, DataError> {
    Ok(Completed {
        status: FetchStatus::Resumed,
        received: 0,
        total: len,
        sha256: sha256_file(part)?,
    })
}

/// The first byte of `Content-Range: bytes START-END/TOTAL`.
fn range_start(value: &str) -> Option<u64> {
    let spec = value.trim().strip_prefix("bytes ")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

/// The total length of `Content-Range: bytes …/TOTAL` (`None` for `*`).
fn range_total(value: &str) -> Option<u64> {
    value.trim().rsplit_once('/')?.1.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_manifest_is_valid_and_holds_back_what_it_must() {
        let m = Manifest::builtin();
        let default: Vec<&str> = m
            .select(&[])
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            default,
            [
                "hotpotqa_500",
                "2wiki_500",
                "stage_1",
                "stage_2",
                "hotpotqa_dev_distractor"
            ]
        );
        // Held-out data is never fetched, even when asked for by name.
        let err = m.select(&["musique_dev".into()]).unwrap_err();
        assert!(matches!(err, DataError::Manual { .. }), "{err}");
        assert!(err.to_string().contains("drive.google.com"), "{err}");
        // Large or optional files only on request.
        for name in ["dpr_wiki", "2wiki_data", "musique_500", "bamboogle"] {
            assert_eq!(m.get(name).unwrap().fetch, FetchMode::OnRequest);
        }
        // R1-Searcher's files carry digests, except the two held-out sets nobody here reads.
        for e in m.files.iter().filter(|e| e.url.contains("R1-Searcher")) {
            let held_out = ["musique_500", "bamboogle"].contains(&e.name.as_str());
            assert_eq!(
                e.sha256.is_some() && e.size.is_some(),
                !held_out,
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn select_rejects_unknown_names_and_dedups() {
        let m = Manifest::builtin();
        let err = m.select(&["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("`nope`") && err.to_string().contains("stage_1"));
        let got = m
            .select(&["dpr_wiki".into(), "stage_1".into(), "dpr_wiki".into()])
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "dpr_wiki");
    }

    #[test]
    fn invalid_entries_are_named() {
        let entry = |name: &str, url: &str, dest: &str, sha: &str| {
            format!(
                "[[file]]\nname = \"{name}\"\nurl = \"{url}\"\ndest = \"{dest}\"\nlicense = \"MIT\"\ndescription = \"d\"\n{sha}\n"
            )
        };
        let label = Path::new("m.toml");
        let cases = [
            (entry("a", "ftp://x/y", "a", ""), "not http"),
            (entry("a", "http://x/y", "../a", ""), "relative path"),
            (entry("a", "http://x/y", "/etc/a", ""), "relative path"),
            (entry("a", "http://x/y", "a", "sha256 = \"abc\""), "64 hex"),
            (entry("a b", "http://x/y", "a", ""), "must be non-empty"),
            (
                entry("a", "http://x/y", "a", "") + &entry("a", "http://x/z", "b", ""),
                "earlier entry",
            ),
        ];
        for (toml, want) in cases {
            let err = Manifest::parse(&toml, label).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("m.toml") && msg.contains(want),
                "{want}: {msg}"
            );
        }
        let err = Manifest::parse("[[file]]\nname = \"a\"\nbogus = 1\n", label).unwrap_err();
        assert!(matches!(err, DataError::ManifestParse { .. }), "{err}");
        let upper = entry(
            "a",
            "http://x/y",
            "a",
            &format!("sha256 = \"{}\"", "AB".repeat(32)),
        );
        let m = Manifest::parse(&upper, label).unwrap();
        assert_eq!(m.files[0].sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn content_range_parts() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_total("bytes 100-199/200"), Some(200));
        assert_eq!(range_total("bytes */200"), Some(200));
        assert_eq!(range_total("bytes 0-9/*"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }

    #[test]
    fn part_path_appends_part() {
        assert_eq!(
            part_path(Path::new("d/qa/x.jsonl")),
            PathBuf::from("d/qa/x.jsonl.part")
        );
    }
}
