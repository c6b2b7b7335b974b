//! Steps every graph builder shares: refusing to overwrite before the long work starts, the
//! progress spinner, the title gazetteer read from the corpus, and rounding of reported
//! figures.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{EntityLinker, GraphError};
use crate::corpus::PassageReader;

/// Fails with [`GraphError::Exists`] when `out` exists and `overwrite` is off, so a build does
/// not run for seconds only to be refused at the write.
pub(super) fn refuse_existing(out: &Path, overwrite: bool) -> Result<(), GraphError> {
    if out.exists() && !overwrite {
        return Err(GraphError::Exists {
            path: out.to_path_buf(),
            reason: "it exists (pass overwrite to replace it)",
        });
    }
    Ok(())
}

/// The entity linker over every passage title of `corpus` (one pass over the file, counted on
/// `bar`).
///
/// # Errors
/// [`GraphError::Corpus`] naming the corpus file and line of a bad passage.
pub(super) fn title_linker(
    corpus: &Path,
    min_title_chars: usize,
    capitalised_spans: bool,
    bar: &ProgressBar,
) -> Result<EntityLinker, GraphError> {
    bar.set_message("reading titles");
    let mut titles = Vec::new();
    for p in PassageReader::open(corpus)? {
        titles.push(p?.title);
        if titles.len().is_multiple_of(4096) {
            bar.set_position(titles.len() as u64);
        }
    }
    Ok(EntityLinker::new(
        titles.iter().map(String::as_str),
        min_title_chars,
        capitalised_spans,
    ))
}

/// `x` rounded to 3 decimals (seconds and means in build statistics).
pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A spinner on stderr counting passages, or a hidden bar when `enabled` is off.
pub(super) fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    // `stderr()` draws nothing when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {human_pos} passages ({elapsed})")
            .expect("the progress template is valid"),
    );
    if !bar.is_hidden() {
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    bar
}
