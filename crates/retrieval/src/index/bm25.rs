//! The tantivy BM25 index builder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions, STORED, STRING};
use tantivy::{doc, Index, IndexWriter, TantivyDocument};

use super::{IndexError, IndexManifest, TokenizerKind, FIELD_ID, FIELD_TEXT, FIELD_TITLE};
use crate::corpus::{CorpusError, Passage, PassageReader};

/// Default total memory budget of the index writer, in bytes (200 MB), shared by its threads.
pub const DEFAULT_WRITER_HEAP_BYTES: usize = 200_000_000;
/// Upper bound on writer threads when [`IndexOptions::threads`] is `None` (tantivy's own cap).
pub const MAX_WRITER_THREADS: usize = 8;
/// tantivy refuses a writer thread with less memory than this, in bytes.
const MIN_HEAP_BYTES_PER_THREAD: usize = 15_000_000;
/// tantivy refuses a writer thread with more memory than this, in bytes.
const MAX_HEAP_BYTES_PER_THREAD: usize = u32::MAX as usize - 1_000_000;
/// The progress bar is advanced once per this many passages.
const PROGRESS_EVERY: u64 = 1024;

/// How to build a BM25 index. `Default` gives the documented defaults; as a config section it
/// reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexOptions {
    /// Analyzer for `title` and `text`. Default: [`TokenizerKind::default()`].
    pub tokenizer: TokenizerKind,
    /// Total index-writer memory budget in bytes, split evenly across threads; each thread
    /// needs at least 15 MB (tantivy's floor), so the thread count is lowered to fit when the
    /// budget is small. Default: [`DEFAULT_WRITER_HEAP_BYTES`].
    pub writer_heap_bytes: usize,
    /// Number of indexing threads; `None` means the available cores, at most
    /// [`MAX_WRITER_THREADS`]. Default: `None`.
    pub threads: Option<usize>,
    /// Replace an existing index at the output path. Only a directory that looks like an index
    /// is ever replaced. Default: `false`.
    pub overwrite: bool,
    /// Merge all segments into one after the commit: slightly faster queries, and results that
    /// do not depend on how passages were spread over threads. Default: `true`.
    pub merge_segments: bool,
    /// Show a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    /// Default: `true`.
    pub progress: bool,
    /// The corpus file, recorded in the manifest; [`build_bm25_from_path`] fills it in.
    /// Default: `None`.
    pub corpus_path: Option<PathBuf>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            tokenizer: TokenizerKind::default(),
            writer_heap_bytes: DEFAULT_WRITER_HEAP_BYTES,
            threads: None,
            overwrite: false,
            merge_segments: true,
            progress: true,
            corpus_path: None,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Passages indexed.
    pub passages: u64,
    /// Wall-clock build time in seconds, from the call to the finished index in place (reading
    /// and parsing the corpus included).
    pub seconds: f64,
    /// Total size of the files in the finished index directory, in bytes.
    pub bytes_on_disk: u64,
}

/// Builds a BM25 index over `passages` in `out_dir`.
///
/// The index is built in a temporary directory beside `out_dir` and renamed into place at the
/// end; `out_dir`'s parent is created if missing. `out_dir` may be absent or an empty directory;
/// a non-empty one is replaced only when `opts.overwrite` is set and it looks like an index.
///
/// # Errors
/// - [`IndexError::Corpus`] for the first error the iterator yields (nothing is left behind);
/// - [`IndexError::OutDirNotEmpty`], [`IndexError::NotAnIndexDir`],
///   [`IndexError::NotADirectory`] when `out_dir` may not be written;
/// - [`IndexError::InvalidOption`] for a zero thread count or a heap outside tantivy's limits;
/// - [`IndexError::Io`] / [`IndexError::Tantivy`] for filesystem or tantivy failures, naming
///   the path.
pub fn build_bm25(
    passages: impl Iterator<Item = Result<Passage, CorpusError>>,
    out_dir: &Path,
    opts: &IndexOptions,
) -> Result<IndexStats, IndexError> {
    let start = Instant::now();
    let (threads, heap) = writer_resources(opts)?;
    check_out_dir(out_dir, opts.overwrite)?;

    let _span = tracing::info_span!("build_bm25", out_dir = %out_dir.display()).entered();
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let build = TempDir::create(&parent, out_dir, "building")?;

    // Scope the index and its writer, so the writer's lock file is released and its threads
    // joined before the directory is moved.
    let count = {
        let (schema, fields) = schema(opts.tokenizer);
        let tantivy_err = |source| IndexError::Tantivy {
            path: build.path.clone(),
            source,
        };
        let index = Index::create_in_dir(&build.path, schema).map_err(tantivy_err)?;
        opts.tokenizer.register(&index);
        let mut writer: IndexWriter<TantivyDocument> = index
            .writer_with_num_threads(threads, heap)
            .map_err(tantivy_err)?;
        tracing::debug!(threads, heap_bytes = heap, "index writer started");

        let bar = progress_bar(opts.progress);
        let mut count = 0u64;
        for passage in passages {
            let Passage { id, title, text } = passage?;
            writer
                .add_document(doc!(fields.id => id, fields.title => title, fields.text => text))
                .map_err(tantivy_err)?;
            count += 1;
            if count.is_multiple_of(PROGRESS_EVERY) {
                bar.set_position(count);
            }
        }
        bar.set_position(count);
        bar.set_message("committing");
        writer.commit().map_err(tantivy_err)?;
        if opts.merge_segments {
            let segments = index.searchable_segment_ids().map_err(tantivy_err)?;
            if segments.len() > 1 {
                bar.set_message(format!("merging {} segments", segments.len()));
                writer.merge(&segments).wait().map_err(tantivy_err)?;
            }
        }
        writer.wait_merging_threads().map_err(tantivy_err)?;
        bar.finish_and_clear();
        count
    };

    IndexManifest::new(opts.tokenizer, count, opts.corpus_path.clone()).write(&build.path)?;
    let bytes_on_disk = dir_size(&build.path)?;
    install(build, out_dir, opts.overwrite)?;

    let stats = IndexStats {
        passages: count,
        seconds: start.elapsed().as_secs_f64(),
        bytes_on_disk,
    };
    tracing::info!(
        passages = stats.passages,
        seconds = stats.seconds,
        bytes_on_disk = stats.bytes_on_disk,
        "built BM25 index"
    );
    Ok(stats)
}

/// Builds a BM25 index from a corpus file (JSONL, plain or gzip), recording its path in the
/// manifest. Same behaviour and errors as [`build_bm25`], plus [`IndexError::Corpus`] when the
/// file cannot be opened.
pub fn build_bm25_from_path(
    corpus: &Path,
    out_dir: &Path,
    opts: &IndexOptions,
) -> Result<IndexStats, IndexError> {
    let reader = PassageReader::open(corpus)?;
    let opts = IndexOptions {
        corpus_path: Some(corpus.to_path_buf()),
        ..opts.clone()
    };
    build_bm25(reader, out_dir, &opts)
}

/// The three passage fields, resolved in a schema.
struct Fields {
    id: tantivy::schema::Field,
    title: tantivy::schema::Field,
    text: tantivy::schema::Field,
}

fn schema(tokenizer: TokenizerKind) -> (Schema, Fields) {
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer.name())
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let mut builder = Schema::builder();
    let fields = Fields {
        id: builder.add_text_field(FIELD_ID, STRING | STORED),
        title: builder.add_text_field(FIELD_TITLE, text_options.clone()),
        text: builder.add_text_field(FIELD_TEXT, text_options),
    };
    (builder.build(), fields)
}

/// Resolves the writer's (threads, total heap bytes), checking tantivy's per-thread limits.
fn writer_resources(opts: &IndexOptions) -> Result<(usize, usize), IndexError> {
    let heap = opts.writer_heap_bytes;
    if heap < MIN_HEAP_BYTES_PER_THREAD {
        return Err(IndexError::InvalidOption {
            name: "writer_heap_bytes",
            reason: format!(
                "{heap} bytes is below tantivy's minimum of {MIN_HEAP_BYTES_PER_THREAD}"
            ),
        });
    }
    let threads = match opts.threads {
        Some(0) => {
            return Err(IndexError::InvalidOption {
                name: "threads",
                reason: "must be at least 1".into(),
            })
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WRITER_THREADS),
    };
    // Fewer threads rather than starving each one below tantivy's floor.
    let threads = threads.min(heap / MIN_HEAP_BYTES_PER_THREAD).max(1);
    if heap / threads > MAX_HEAP_BYTES_PER_THREAD {
        return Err(IndexError::InvalidOption {
            name: "writer_heap_bytes",
            reason: format!(
                "{heap} bytes over {threads} threads exceeds tantivy's per-thread maximum of {MAX_HEAP_BYTES_PER_THREAD}"
            ),
        });
    }
    Ok((threads, heap))
}

/// Fails unless `out_dir` is absent, an empty directory, or (with `overwrite`) an index.
fn check_out_dir(out_dir: &Path, overwrite: bool) -> Result<(), IndexError> {
    let meta = match fs::metadata(out_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err("cannot stat", out_dir)(source)),
    };
    if !meta.is_dir() {
        return Err(IndexError::NotADirectory {
            path: out_dir.to_path_buf(),
        });
    }
    let empty = fs::read_dir(out_dir)
        .map_err(io_err("cannot list", out_dir))?
        .next()
        .is_none();
    if empty {
        Ok(())
    } else if !overwrite {
        Err(IndexError::OutDirNotEmpty {
            path: out_dir.to_path_buf(),
        })
    } else if out_dir.join(IndexManifest::FILE_NAME).is_file()
        || out_dir.join("meta.json").is_file()
    {
        Ok(())
    } else {
        Err(IndexError::NotAnIndexDir {
            path: out_dir.to_path_buf(),
        })
    }
}

/// Moves the finished build into `out_dir`. A previous index there is first moved aside, and
/// moved back should the final rename fail.
fn install(build: TempDir, out_dir: &Path, overwrite: bool) -> Result<(), IndexError> {
    // Check again: the directory may have changed during the build.
    check_out_dir(out_dir, overwrite)?;
    let mut old = None;
    if out_dir.exists() {
        if fs::read_dir(out_dir)
            .map_err(io_err("cannot list", out_dir))?
            .next()
            .is_none()
        {
            fs::remove_dir(out_dir).map_err(io_err("cannot remove", out_dir))?;
        } else {
            let parent = build.path.parent().unwrap_or(Path::new("."));
            let aside = TempDir::reserve(parent, out_dir, "old");
            fs::rename(out_dir, &aside.path).map_err(io_err("cannot move aside", out_dir))?;
            old = Some(aside);
        }
    }
    if let Err(source) = fs::rename(&build.path, out_dir) {
        if let Some(old) = &old {
            let _ = fs::rename(&old.path, out_dir);
        }
        return Err(io_err("cannot rename build into", out_dir)(source));
    }
    build.keep();
    // Dropping `old` deletes the previous index.
    drop(old);
    Ok(())
}

/// A hidden directory beside the output, removed on drop unless [`TempDir::keep`] is called.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Picks a fresh name `.{out_dir name}.{tag}-{pid}-{nanos}` in `parent` without creating it.
    fn reserve(parent: &Path, out_dir: &Path, tag: &str) -> Self {
        let name = out_dir
            .file_name()
            .map_or_else(|| "index".into(), |n| n.to_string_lossy().into_owned());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".{name}.{tag}-{}-{nanos}", std::process::id()));
        Self { path, keep: false }
    }

    /// Reserves a name and creates the directory.
    /// First removes what killed builds of the same target left ([`super::remove_stale_temps`]).
    fn create(parent: &Path, out_dir: &Path, tag: &str) -> Result<Self, IndexError> {
        if let Some(name) = out_dir.file_name().and_then(|n| n.to_str()) {
            super::remove_stale_temps(parent, name, &["building", "old"]);
        }
        let dir = Self::reserve(parent, out_dir, tag);
        fs::create_dir(&dir.path).map_err(io_err("cannot create", &dir.path))?;
        Ok(dir)
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep && self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temporary index directory");
            }
        }
    }
}

/// Total size in bytes of the regular files under `dir`.
fn dir_size(dir: &Path) -> Result<u64, IndexError> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
        let entry = entry.map_err(io_err("cannot list", dir))?;
        let meta = entry
            .metadata()
            .map_err(io_err("cannot stat", &entry.path()))?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    // `stderr()` draws nothing when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} indexed {human_pos} passages ({per_sec}, {elapsed}) {msg}",
        )
        .expect("the progress template is valid"),
    );
    if !bar.is_hidden() {
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    bar
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IndexError {
    let path = path.to_path_buf();
    move |source| IndexError::Io {
        action,
        path,
        source,
    }
}
