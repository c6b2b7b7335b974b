//! Progress lines on stderr for long commands (indicatif): a bar over a known number of items
//! (eval questions, training steps) or a spinner over work of unknown length (collect).
//! Each shows elapsed time on a one-second tick, since a CPU step or question can take
//! minutes. indicatif draws nothing when stderr is not a terminal, so logs stay clean; the
//! machine-readable output (JSON lines, `metrics.jsonl`) is separate and unaffected.

/// A progress line on stderr over `len` items: `WHAT [bar] k/N MESSAGE · elapsed, ETA`, with
/// a steady tick so a slow first item still shows time passing. indicatif draws nothing when
/// stderr is not a terminal, so logs and pipes stay clean.
pub fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:24}] {pos}/{len} {msg} · {elapsed}, ETA {eta}",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}

/// A spinner on stderr for work of unknown length: `WHAT MESSAGE · elapsed`.
pub fn spinner(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} · {elapsed}")
            .expect("the progress template is valid"),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}
