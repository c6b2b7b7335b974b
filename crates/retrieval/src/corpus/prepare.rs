//! `sleuth corpus prepare`: turning a downloaded dump into the `{"id","title","text"}` JSON
//! Lines corpus that [`PassageReader`] and `sleuth index build` read.
//!
//! Three input formats ([`InputFormat`]):
//!
//! - **`dpr-tsv`**: DPR's Wikipedia split (`psgs_w100.tsv[.gz]`, facebookresearch/DPR): a
//!   header line naming the columns `id`, `text`, `title` (in any order), then one passage per
//!   line, fields separated by tabs. A field may be quoted the way Python's `csv` module writes
//!   it: wrapped in `"`, with a tab kept as text inside and `""` standing for one `"`. A record
//!   is one physical line (DPR's texts hold no newlines). Read as a stream, one line at a time:
//!   the 13 GB dump is never held in memory.
//! - **`hotpotqa-json`**: a HotpotQA-format question file (`hotpot_dev_distractor_v1.json`;
//!   2WikiMultihopQA's `dev.json` has the same shape): a JSON array of questions, each with
//!   `context: [[title, [sentence, …]], …]`. Each paragraph becomes one passage; its sentences
//!   are trimmed and joined with one space (HotpotQA's sentences carry their leading spaces).
//!   The same paragraph recurs across questions, so passages are deduplicated by title (the
//!   first kept). Ids are `{id_prefix}{n:06}` in order of first appearance. The file is loaded
//!   whole (the largest, HotpotQA train, is about 0.5 GB).
//! - **`jsonl`**: an existing passage corpus, validated and copied through [`PassageReader`].
//!
//! Common rules: gzip input is detected by its magic bytes, as [`PassageReader`] does; the
//! output is gzip-compressed when its name ends in `.gz`. Passages with an id already written
//! are skipped and counted as duplicates (ids must be unique in an index; `hotpotqa-json`
//! dedups by title instead); the set of seen ids costs about 20 bytes per numeric id (some
//! 400 MB for DPR's 21 M passages). The output is written to a hidden temporary file beside
//! it and renamed into place only when complete, so an error or interruption leaves no
//! half-written corpus. A malformed line is an error naming the file and its 1-based line
//! number.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use super::{buffered_maybe_gzip, CorpusError, Passage, PassageReader, BUF_BYTES};

/// How often the progress line is updated, in passages.
const PROGRESS_EVERY: u64 = 10_000;

/// The format of a dump given to [`prepare`] (see the [module docs](self) for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// DPR's `psgs_w100.tsv`: header `id\ttext\ttitle`, Python-csv quoting.
    DprTsv,
    /// A HotpotQA-format JSON array of questions with `context` paragraphs.
    HotpotqaJson,
    /// A `{"id","title","text"}` JSON Lines corpus, passed through after validation.
    Jsonl,
}

impl InputFormat {
    /// The command-line names, in declaration order.
    pub const NAMES: [&'static str; 3] = ["dpr-tsv", "hotpotqa-json", "jsonl"];

    /// The command-line name of the format.
    pub fn name(self) -> &'static str {
        match self {
            Self::DprTsv => Self::NAMES[0],
            Self::HotpotqaJson => Self::NAMES[1],
            Self::Jsonl => Self::NAMES[2],
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for InputFormat {
    type Err = PrepareError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dpr-tsv" => Ok(Self::DprTsv),
            "hotpotqa-json" => Ok(Self::HotpotqaJson),
            "jsonl" => Ok(Self::Jsonl),
            other => Err(PrepareError::UnknownFormat(other.to_string())),
        }
    }
}

/// Settings of [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Prefix of the ids given to `hotpotqa-json` paragraphs (the other formats keep their
    /// ids). Default: `hotpot-ctx-`.
    pub id_prefix: String,
    /// Show a progress line on stderr. Default: `true`.
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            id_prefix: "hotpot-ctx-".into(),
            progress: true,
        }
    }
}

/// What [`prepare`] wrote; the CLI prints it as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrepareSummary {
    /// The dump read.
    pub input: PathBuf,
    /// Its format.
    pub format: InputFormat,
    /// The corpus written.
    pub out: PathBuf,
    /// Passages written.
    pub passages: u64,
    /// Passages skipped because their id (title for `hotpotqa-json`) was already written.
    pub duplicates: u64,
}

/// Errors of [`prepare`]. Each names the file; those tied to a line give its 1-based number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The input could not be opened (or its first bytes read).
    #[error("cannot open {path}: {source}", path = path.display())]
    Open {
        /// The input file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the input failed partway (e.g. a truncated gzip stream).
    #[error("{path}:{line}: read error: {source}", path = path.display())]
    Read {
        /// The input file.
        path: PathBuf,
        /// 1-based number of the line being read.
        line: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A line (or, for JSON, the document at a line) does not have the format's shape.
    #[error("{path}:{line}: {reason}", path = path.display())]
    Malformed {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A `jsonl` input line is not a passage ([`CorpusError`] names file and line).
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// Writing the output (or its temporary file, or renaming it into place) failed.
    #[error("cannot write {path}: {source}", path = path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A format name that is not one of [`InputFormat::NAMES`].
    #[error("unknown corpus format {0:?} (known: dpr-tsv, hotpotqa-json, jsonl)")]
    UnknownFormat(String),
}

/// Converts `input` (of `format`) into a passage corpus at `out` (gzip when its name ends in
/// `.gz`), written atomically; returns the counts.
///
/// # Errors
/// [`PrepareError::Open`], [`PrepareError::Read`], [`PrepareError::Malformed`] and
/// [`PrepareError::Corpus`] for the input (by file and line); [`PrepareError::Write`] for the
/// output. On error nothing is left at `out` or beside it.
pub fn prepare(
    input: &Path,
    format: InputFormat,
    out: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareSummary, PrepareError> {
    let _span = tracing::info_span!("corpus_prepare", format = %format).entered();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map_or_else(|| "corpus".into(), |n| n.to_string_lossy().into_owned());
    let tmp = crate::atomic::temp_path(&parent.join(&name));
    let result = (|| {
        fs::create_dir_all(&parent).map_err(write_err(&parent))?;
        let mut sink = Sink::create(&tmp, name.ends_with(".gz"), opts.progress)?;
        match format {
            InputFormat::DprTsv => dpr_tsv(input, &mut sink)?,
            InputFormat::HotpotqaJson => hotpotqa_json(input, &opts.id_prefix, &mut sink)?,
            InputFormat::Jsonl => jsonl(input, &mut sink)?,
        }
        let (passages, duplicates) = sink.finish()?;
        fs::rename(&tmp, out).map_err(write_err(out))?;
        Ok(PrepareSummary {
            input: input.to_path_buf(),
            format,
            out: out.to_path_buf(),
            passages,
            duplicates,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, line: u64, reason: impl Into<String>) -> PrepareError {
    PrepareError::Malformed {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Opens an input file, decompressing it when it starts with the gzip magic bytes.
fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>, PrepareError> {
    let open_err = |source| PrepareError::Open {
        path: path.to_path_buf(),
        source,
    };
    buffered_maybe_gzip(File::open(path).map_err(open_err)?).map_err(open_err)
}

/// The output stream: a temporary file, plain or gzip, with the counts and progress line.
struct Sink {
    path: PathBuf,
    writer: Writer,
    passages: u64,
    duplicates: u64,
    bar: indicatif::ProgressBar,
}

enum Writer {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

impl Sink {
    fn create(path: &Path, gzip: bool, progress: bool) -> Result<Self, PrepareError> {
        let file =
            BufWriter::with_capacity(BUF_BYTES, File::create(path).map_err(write_err(path))?);
        let writer = if gzip {
            Writer::Gzip(GzEncoder::new(file, Compression::default()))
        } else {
            Writer::Plain(file)
        };
        let bar = if progress {
            crate::progress::spinner("corpus prepare")
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            passages: 0,
            duplicates: 0,
            bar,
        })
    }

    fn write(&mut self, passage: &Passage) -> Result<(), PrepareError> {
        let w: &mut dyn Write = match &mut self.writer {
            Writer::Plain(w) => w,
            Writer::Gzip(w) => w,
        };
        serde_json::to_writer(&mut *w, passage)
            .map_err(io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(write_err(&self.path))?;
        self.passages += 1;
        if self.passages.is_multiple_of(PROGRESS_EVERY) {
            self.bar.set_message(format!("{} passages", self.passages));
        }
        Ok(())
    }

    fn skip_duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// Finishes the stream and syncs the file; returns (passages, duplicates).
    fn finish(self) -> Result<(u64, u64), PrepareError> {
        self.bar.finish_and_clear();
        let buffered = match self.writer {
            Writer::Plain(w) => w,
            Writer::Gzip(w) => w.finish().map_err(write_err(&self.path))?,
        };
        let file = buffered
            .into_inner()
            .map_err(|e| write_err(&self.path)(e.into_error()))?;
        file.sync_all().map_err(write_err(&self.path))?;
        Ok((self.passages, self.duplicates))
    }
}

/// Ids seen so far, exactly: canonical decimal ids as numbers (8 bytes each), others as
/// strings.
#[derive(Default)]
struct SeenIds {
    numeric: HashSet<u64>,
    other: HashSet<String>,
}

impl SeenIds {
    /// Records `id`; false when it was already seen.
    fn insert(&mut self, id: &str) -> bool {
        let canonical = !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && (id.len() == 1 || !id.starts_with('0'));
        match id.parse::<u64>() {
            Ok(n) if canonical => self.numeric.insert(n),
            _ => self.other.insert(id.to_string()),
        }
    }
}

/// Streams DPR's TSV into the sink.
fn dpr_tsv(path: &Path, sink: &mut Sink) -> Result<(), PrepareError> {
    let mut reader = open_input(path)?;
    let mut buf = Vec::with_capacity(4096);
    let mut line = 0u64;
    // Field positions of id, text, title, and the number of fields, from the header.
    let mut columns: Option<([usize; 3], usize)> = None;
    let mut seen = SeenIds::default();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| PrepareError::Read {
                path: path.to_path_buf(),
                line: line + 1,
                source,
            })?;
        if n == 0 {
            break;
        }
        line += 1;
        let text = std::str::from_utf8(&buf)
            .map_err(|e| malformed(path, line, format!("invalid UTF-8: {e}")))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        let fields = split_tsv(text).map_err(|reason| malformed(path, line, reason))?;
        let Some(([id, body, title], width)) = columns else {
            columns = Some(header_columns(&fields).map_err(|r| malformed(path, line, r))?);
            continue;
        };
        if fields.len() != width {
            return Err(malformed(
                path,
                line,
                format!(
                    "expected {width} tab-separated fields as in the header, found {}",
                    fields.len()
                ),
            ));
        }
        // The positions come from the header and the width was checked above, so every one is
        // present; were one not, it would read as an empty field.
        let field = |i: usize| fields.get(i).map_or("", String::as_str);
        if field(id).is_empty() {
            return Err(malformed(path, line, "empty id"));
        }
        if !seen.insert(field(id)) {
            sink.skip_duplicate();
            continue;
        }
        let mut fields = fields;
        let mut take = |i: usize| fields.get_mut(i).map(std::mem::take).unwrap_or_default();
        sink.write(&Passage {
            id: take(id),
            title: take(title),
            text: take(body),
        })?;
    }
    if columns.is_none() {
        return Err(malformed(
            path,
            1,
            "no header line (expected `id<TAB>text<TAB>title`)",
        ));
    }
    Ok(())
}

/// The positions of `id`, `text`, `title` in a header, and its width.
fn header_columns(fields: &[String]) -> Result<([usize; 3], usize), String> {
    let find = |name: &str| fields.iter().position(|f| f.trim() == name);
    match (find("id"), find("text"), find("title")) {
        (Some(id), Some(text), Some(title)) => Ok(([id, text, title], fields.len())),
        _ => Err(format!(
            "the header must name the columns id, text and title (as DPR's psgs_w100.tsv \
             does: `id<TAB>text<TAB>title`), found {fields:?}"
        )),
    }
}

/// Splits one TSV line into fields, undoing Python-csv quoting: a field that starts with `"`
/// runs to the next `"` not doubled, and must end the line or be followed by a tab; inside
/// it, tabs are text and `""` is one `"`. An unquoted field is taken as is.
fn split_tsv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut s = quoted;
            loop {
                let Some(q) = s.find('"') else {
                    return Err(format!(
                        "field {} opens a quote that the line never closes",
                        fields.len() + 1
                    ));
                };
                field.push_str(&s[..q]);
                s = &s[q + 1..];
                if let Some(after) = s.strip_prefix('"') {
                    field.push('"');
                    s = after;
                } else {
                    break;
                }
            }
            fields.push(field);
            if s.is_empty() {
                return Ok(fields);
            }
            match s.strip_prefix('\t') {
                Some(next) => rest = next,
                None => {
                    return Err(format!(
                        "field {} has text after its closing quote",
                        fields.len()
                    ))
                }
            }
        } else {
            match rest.split_once('\t') {
                Some((field, next)) => {
                    fields.push(field.to_string());
                    rest = next;
                }
                None => {
                    fields.push(rest.to_string());
                    return Ok(fields);
                }
            }
        }
    }
}

/// One question of a HotpotQA-format file; every other field is ignored.
#[derive(Deserialize)]
struct HotpotQuestion {
    context: Vec<(String, Vec<String>)>,
}

/// Writes the context paragraphs of a HotpotQA-format file, deduplicated by title.
fn hotpotqa_json(path: &Path, id_prefix: &str, sink: &mut Sink) -> Result<(), PrepareError> {
    let mut bytes = Vec::new();
    open_input(path)?
        .read_to_end(&mut bytes)
        .map_err(|source| PrepareError::Read {
            path: path.to_path_buf(),
            line: 1,
            source,
        })?;
    let questions: Vec<HotpotQuestion> = serde_json::from_slice(&bytes).map_err(|e| {
        malformed(
            path,
            e.line().max(1) as u64,
            format!("not a HotpotQA-format question array (context: [[title, [sentences]]]): {e}"),
        )
    })?;
    drop(bytes);
    let mut titles = HashSet::new();
    for question in questions {
        for (title, sentences) in question.context {
            if titles.contains(&title) {
                sink.skip_duplicate();
                continue;
            }
            let text = sentences
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            sink.write(&Passage {
                id: format!("{id_prefix}{:06}", sink.passages),
                title: title.clone(),
                text,
            })?;
            titles.insert(title);
        }
    }
    Ok(())
}

/// Copies a passage corpus through, validating every line and dropping repeated ids.
fn jsonl(path: &Path, sink: &mut Sink) -> Result<(), PrepareError> {
    let mut seen = SeenIds::default();
    for passage in PassageReader::open(path)? {
        let passage = passage?;
        if seen.insert(&passage.id) {
            sink.write(&passage)?;
        } else {
            sink.skip_duplicate();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{read_passages, GZIP_MAGIC};

    fn opts() -> PrepareOptions {
        PrepareOptions {
            progress: false,
            ..PrepareOptions::default()
        }
    }

    fn p(id: &str, title: &str, text: &str) -> Passage {
        Passage {
            id: id.into(),
            title: title.into(),
            text: text.into(),
        }
    }

    #[test]
    fn split_tsv_undoes_python_csv_quoting() {
        assert_eq!(split_tsv("1\tplain\tT").unwrap(), ["1", "plain", "T"]);
        assert_eq!(
            split_tsv("1\t\"a\tb \"\"c\"\"\"\t\"\"").unwrap(),
            ["1", "a\tb \"c\"", ""]
        );
        assert_eq!(split_tsv("1\t\t").unwrap(), ["1", "", ""]);
        // A quote inside an unquoted field is text.
        assert_eq!(
            split_tsv("1\tsay \"hi\"\tT").unwrap(),
            ["1", "say \"hi\"", "T"]
        );
        assert!(split_tsv("1\t\"open\tT").unwrap_err().contains("field 2"));
        assert!(split_tsv("1\t\"a\"b\tT")
            .unwrap_err()
            .contains("after its closing quote"));
    }

    #[test]
    fn dpr_tsv_with_quotes_tabs_header_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("psgs.tsv");
        fs::write(
            &input,
            "id\ttext\ttitle\n\
             1\t\"Aaron ( or ; \"\"Ahärôn\"\") is a prophet\twith a tab.\"\tAaron\n\
             2\tPlain text, no quotes.\t\"Title \"\"quoted\"\"\"\r\n\
             \n\
             1\tsame id again\tAaron\n",
        )
        .unwrap();
        let out = dir.path().join("out/corpus.jsonl");
        let s = prepare(&input, InputFormat::DprTsv, &out, &opts()).unwrap();
        assert_eq!((s.passages, s.duplicates), (2, 1));
        assert_eq!(
            read_passages(&out).unwrap(),
            [
                p(
                    "1",
                    "Aaron",
                    "Aaron ( or ; \"Ahärôn\") is a prophet\twith a tab."
                ),
                p("2", "Title \"quoted\"", "Plain text, no quotes."),
            ]
        );
        // Nothing but the output is left in its folder.
        assert_eq!(fs::read_dir(dir.path().join("out")).unwrap().count(), 1);
    }

    #[test]
    fn dpr_tsv_reads_gzip_and_writes_gzip_with_columns_in_header_order() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("psgs.tsv.gz");
        let mut gz = GzEncoder::new(File::create(&input).unwrap(), Compression::fast());
        gz.write_all(b"title\tid\ttext\nT\t7\tsome text\n").unwrap();
        gz.finish().unwrap();
        let out = dir.path().join("corpus.jsonl.gz");
        prepare(&input, InputFormat::DprTsv, &out, &opts()).unwrap();
        assert_eq!(fs::read(&out).unwrap()[..2], GZIP_MAGIC);
        assert_eq!(read_passages(&out).unwrap(), [p("7", "T", "some text")]);
    }

    #[test]
    fn hotpotqa_json_one_passage_per_title() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("dev.json");
        let questions = serde_json::json!([
            {"_id": "q1", "question": "?", "answer": "a",
             "context": [["Arrowhead Stadium", ["Arrowhead Stadium is a stadium.", " It is in Missouri."]],
                         ["Lamar Hunt", ["Lamar Hunt founded the AFL.", ""]]]},
            {"_id": "q2", "question": "?", "answer": "b",
             "context": [["Lamar Hunt", ["A different copy."]],
                         ["AFC West", [" The AFC West is a division. "]]]}
        ]);
        fs::write(&input, questions.to_string()).unwrap();
        let out = dir.path().join("ctx.jsonl");
        let o = PrepareOptions {
            id_prefix: "hotpot-dev-ctx-".into(),
            ..opts()
        };
        let s = prepare(&input, InputFormat::HotpotqaJson, &out, &o).unwrap();
        assert_eq!((s.passages, s.duplicates), (3, 1));
        assert_eq!(
            read_passages(&out).unwrap(),
            [
                p(
                    "hotpot-dev-ctx-000000",
                    "Arrowhead Stadium",
                    "Arrowhead Stadium is a stadium. It is in Missouri."
                ),
                p(
                    "hotpot-dev-ctx-000001",
                    "Lamar Hunt",
                    "Lamar Hunt founded the AFL."
                ),
                p(
                    "hotpot-dev-ctx-000002",
                    "AFC West",
                    "The AFC West is a division."
                ),
            ]
        );
    }

    #[test]
    fn a_bad_line_names_file_and_line_and_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("psgs.tsv");
        fs::write(
            &input,
            "id\ttext\ttitle\n1\tok\tT\n2\t\"never closed\tT\n3\tok\tT\n",
        )
        .unwrap();
        let out = dir.path().join("corpus.jsonl");
        let err = prepare(&input, InputFormat::DprTsv, &out, &opts()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}:3:", input.display())), "{msg}");
        assert!(matches!(err, PrepareError::Malformed { line: 3, .. }));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the input"
        );

        fs::write(&input, "id\ttext\ttitle\n1\tok\n").unwrap();
        let msg = prepare(&input, InputFormat::DprTsv, &out, &opts())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":2:") && msg.contains("found 2"), "{msg}");

        fs::write(&input, "a\tb\tc\n").unwrap();
        let msg = prepare(&input, InputFormat::DprTsv, &out, &opts())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":1:") && msg.contains("header"), "{msg}");

        let bad_json = dir.path().join("bad.json");
        fs::write(
            &bad_json,
            "[\n{\"context\": [[\"T\", [\"s\"]]]},\n{\"context\": 5}\n]",
        )
        .unwrap();
        let msg = prepare(&bad_json, InputFormat::HotpotqaJson, &out, &opts())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("{}:3:", bad_json.display())),
            "{msg}"
        );
    }

    #[test]
    fn jsonl_passes_through_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        fs::write(
            &input,
            "{\"id\": 1, \"title\": \"T\", \"text\": \"x\"}\n{\"id\": \"1\", \"title\": \"T\", \"text\": \"dup\"}\n",
        )
        .unwrap();
        let out = dir.path().join("out.jsonl");
        let s = prepare(&input, InputFormat::Jsonl, &out, &opts()).unwrap();
        assert_eq!((s.passages, s.duplicates), (1, 1));
        assert_eq!(read_passages(&out).unwrap(), [p("1", "T", "x")]);

        fs::write(
            &input,
            "{\"id\": \"a\", \"title\": \"T\", \"text\": \"x\"}\n{\"id\": \"b\"}\n",
        )
        .unwrap();
        let msg = prepare(&input, InputFormat::Jsonl, &out, &opts())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("{}:2:", input.display())), "{msg}");
        // The earlier output is untouched by the failed run.
        assert_eq!(read_passages(&out).unwrap(), [p("1", "T", "x")]);
    }

    #[test]
    fn seen_ids_keep_numeric_and_text_ids_apart() {
        let mut seen = SeenIds::default();
        assert!(seen.insert("1"));
        assert!(!seen.insert("1"));
        assert!(seen.insert("01"));
        assert!(seen.insert("+1"));
        assert!(seen.insert("wiki-1"));
        assert!(!seen.insert("wiki-1"));
        assert_eq!(seen.numeric.len(), 1);
    }

    #[test]
    fn format_names_round_trip() {
        for name in InputFormat::NAMES {
            assert_eq!(name.parse::<InputFormat>().unwrap().name(), name);
        }
        assert!("csv".parse::<InputFormat>().is_err());
    }
}
