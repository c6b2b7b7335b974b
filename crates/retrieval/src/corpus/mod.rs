//! Passages: the unit of retrieval, and streaming readers for passage corpora.
//!
//! A corpus is a JSON Lines file with one `{"id", "title", "text"}` object per line
//! (`shared/data/corpus/wiki_paragraphs.jsonl.gz` is one). Design choices:
//!
//! - **Streaming.** [`PassageReader`] yields one [`Passage`] at a time, so building an index over
//!   millions of passages never holds the corpus in memory. [`read_passages`] collects when a
//!   `Vec` is what the caller wants.
//! - **Gzip by content, not by name.** The first two bytes are checked for the gzip magic
//!   (`1f 8b`); a `.gz` name is neither needed nor trusted. Concatenated gzip members (as written
//!   by `bgzip` or `cat a.gz b.gz`) are read as one stream.
//! - **Errors say where.** A malformed line (bad JSON, a missing field, invalid UTF-8) is an error
//!   naming the file and its 1-based line number, so a broken corpus row can be found with
//!   `sed -n <line>p`. Blank lines are skipped silently. After an I/O error (a truncated gzip
//!   stream, say) the reader yields nothing more; after a malformed line it goes on, so a caller
//!   may choose to skip bad rows, though most just stop at the first error with
//!   `collect::<Result<_, _>>()`.
//! - **Lenient on extra fields.** Unknown keys (`url`, `source`, …) are ignored, and a numeric
//!   `id` is accepted and turned into its decimal string, since several public corpora number
//!   their passages.
//!
//! [`text`] holds the stop-word list and term splitter shared by builders, retrievers and
//! evaluation.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod prepare;
pub mod text;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Deserializer, Serialize};

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Read buffer size for the underlying file and the decompressed stream, in bytes.
const BUF_BYTES: usize = 256 * 1024;

/// One retrievable passage: a paragraph or chunk of a document, with the title of its page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Passage {
    /// Corpus-unique identifier, e.g. `hotpot-dev-ctx-000102`. A JSON number is accepted on
    /// input and stored as its decimal string.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// Title of the page the passage comes from (may be empty).
    pub title: String,
    /// The passage text.
    pub text: String,
}

/// Errors reading a passage corpus. Every variant names the file; those tied to a line give
/// its 1-based number.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The corpus file could not be opened (or its first bytes read).
    #[error("cannot open corpus {path}: {source}", path = path.display())]
    Open {
        /// The corpus file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading failed partway, e.g. a truncated or corrupt gzip stream.
    #[error("{path}:{line}: read error: {source}", path = path.display())]
    Read {
        /// The corpus file.
        path: PathBuf,
        /// 1-based number of the line being read when the error happened.
        line: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A non-blank line is not a valid passage object (bad JSON, a missing or mistyped field,
    /// invalid UTF-8).
    #[error("{path}:{line}: malformed passage: {source}", path = path.display())]
    Malformed {
        /// The corpus file.
        path: PathBuf,
        /// 1-based line number of the malformed line.
        line: u64,
        /// What the JSON parser objected to.
        #[source]
        source: serde_json::Error,
    },
}

/// A streaming reader over a JSON Lines passage corpus, plain or gzip-compressed.
///
/// Yields `Result<Passage, CorpusError>` per non-blank line. See the [module docs](self) for
/// how errors are reported.
///
/// ```no_run
/// use sleuth_retrieval::corpus::PassageReader;
/// let mut n = 0;
/// for passage in PassageReader::open("corpus/wiki_paragraphs.jsonl.gz")? {
///     let passage = passage?;
///     n += passage.text.len();
/// }
/// # Ok::<(), sleuth_retrieval::corpus::CorpusError>(())
/// ```
pub struct PassageReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    /// 1-based number of the last line read (0 before the first).
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl fmt::Debug for PassageReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassageReader")
            .field("path", &self.path)
            .field("line", &self.line)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// `reader` buffered, and decompressed on the fly when its first bytes are the gzip magic
/// (whatever the file is called): how every corpus reader opens its input.
///
/// # Errors
/// The I/O error from peeking at the first bytes.
pub(crate) fn buffered_maybe_gzip(
    reader: impl Read + Send + 'static,
) -> io::Result<Box<dyn BufRead + Send>> {
    let mut raw = BufReader::with_capacity(BUF_BYTES, reader);
    let is_gzip = loop {
        match raw.fill_buf() {
            Ok(head) => break head.starts_with(&GZIP_MAGIC),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    Ok(if is_gzip {
        Box::new(BufReader::with_capacity(
            BUF_BYTES,
            MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    })
}

impl PassageReader {
    /// Opens a corpus file, decompressing it on the fly when it starts with the gzip magic
    /// bytes, whatever its name.
    ///
    /// # Errors
    /// [`CorpusError::Open`] when the file cannot be opened or its first bytes cannot be read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CorpusError> {
        let path = path.as_ref();
        let open_err = |source| CorpusError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        Self::from_reader(file, path).map_err(open_err)
    }

    /// Wraps any byte stream (a socket, stdin, an in-memory buffer), gzip-detected the same way
    /// as [`PassageReader::open`]. `label` stands in for the file path in error messages.
    ///
    /// # Errors
    /// The I/O error from peeking at the first bytes of `reader`.
    pub fn from_reader(
        reader: impl Read + Send + 'static,
        label: impl AsRef<Path>,
    ) -> io::Result<Self> {
        let reader = buffered_maybe_gzip(reader)?;
        Ok(Self {
            path: label.as_ref().to_path_buf(),
            reader,
            line: 0,
            buf: Vec::with_capacity(4096),
            done: false,
        })
    }

    /// The path (or label) this reader names in its errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based number of the last line read; 0 before the first read.
    pub fn line(&self) -> u64 {
        self.line
    }
}

impl Iterator for PassageReader {
    type Item = Result<Passage, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            let read = self.reader.read_until(b'\n', &mut self.buf);
            self.line += 1;
            match read {
                Ok(0) => self.done = true,
                Ok(_) => {
                    let line = self.buf.trim_ascii();
                    if line.is_empty() {
                        continue;
                    }
                    return Some(serde_json::from_slice(line).map_err(|source| {
                        CorpusError::Malformed {
                            path: self.path.clone(),
                            line: self.line,
                            source,
                        }
                    }));
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(CorpusError::Read {
                        path: self.path.clone(),
                        line: self.line,
                        source,
                    }));
                }
            }
        }
        None
    }
}

impl std::iter::FusedIterator for PassageReader {}

/// Reads a whole corpus file into memory; stops at the first error.
///
/// # Errors
/// The first [`CorpusError`] met: the file cannot be opened, cannot be read, or holds a
/// malformed line (named by path and 1-based line number).
pub fn read_passages(path: impl AsRef<Path>) -> Result<Vec<Passage>, CorpusError> {
    PassageReader::open(path)?.collect()
}

/// Accepts `"abc"` or `123` for an id field.
fn string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Str(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(match Id::deserialize(de)? {
        Id::Str(s) => s,
        Id::Unsigned(n) => n.to_string(),
        Id::Signed(n) => n.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &'static [u8]) -> PassageReader {
        PassageReader::from_reader(bytes, "mem.jsonl").unwrap()
    }

    #[test]
    fn numeric_ids_become_strings_and_extra_fields_are_ignored() {
        let got: Vec<Passage> =
            reader(b"{\"id\": 7, \"title\": \"T\", \"text\": \"x\", \"url\": \"u\"}\n")
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(got[0].id, "7");
    }

    #[test]
    fn crlf_and_whitespace_lines_are_handled() {
        let got: Vec<Passage> =
            reader(b"\r\n  \n{\"id\":\"a\",\"title\":\"T\",\"text\":\"x\"}\r\n\n")
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn invalid_utf8_is_a_malformed_line_with_its_number() {
        let mut r = reader(b"{\"id\":\"a\",\"title\":\"T\",\"text\":\"x\"}\n{\"id\":\"\xff\"}\n");
        assert!(r.next().unwrap().is_ok());
        let err = r.next().unwrap().unwrap_err();
        assert!(
            matches!(err, CorpusError::Malformed { line: 2, .. }),
            "{err}"
        );
        assert!(r.next().is_none());
    }

    #[test]
    fn empty_input_yields_nothing() {
        assert!(reader(b"").next().is_none());
    }
}
