//! Files written atomically: the one temp-then-rename writer of the crate.
//!
//! A reader (a resumed run, `eval --compare`, a second process) must never see half a file, and
//! a kill or a full disk must never destroy the previous version. So every file sleuth writes
//! for later reading (reports, trajectories, collected episodes, metrics rewritten on resume,
//! run state, cache entries, graph indexes) is written to a hidden temporary file beside it,
//! `.NAME.tmp-PID`, which is renamed over the target only once complete; on any failure the
//! temporary file is removed and the target is left as it was. The same folder holds both, so
//! the rename never crosses file systems (POSIX `rename(2)` replaces the target atomically).
//!
//! A process killed between create and rename leaves its `.NAME.tmp-PID` behind; the next
//! successful write of the same target removes such leftovers whose process is gone (Linux:
//! no `/proc/PID`), so a resumed run ends with a clean folder. Elsewhere they are left alone.
//!
//! Not promised: durability across a power loss. Nothing is `fsync`ed unless the caller's
//! closure does it ([`write_with`] hands it the open file); the graph index does, because it is
//! expensive to rebuild.
//!
//! Checkpoints (folders of several files) have their own two-rename scheme,
//! `sleuth::rl::checkpoint`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary path [`write()`] and [`write_with`] use for `path`: `.NAME.tmp-PID` in the same
/// folder (hidden, and distinct per process so two writers never share one). Also what a writer
/// of a whole folder renames into place (`export`), and what a drawing library writes into
/// (`plot`).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (module docs).
///
/// # Errors
/// The I/O error of the create, write or rename, with the temporary file removed.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes.as_ref()))
}

/// Streams a file into `path` atomically: `fill` writes into a buffered handle on the
/// temporary file, which is flushed and renamed over `path` when `fill` returns `Ok`.
///
/// # Errors
/// `fill`'s error, or the I/O error of the create, flush or rename; the temporary file is then
/// removed and `path` left as it was.
pub fn write_with<E: From<std::io::Error>>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        remove_dead_leftovers(path);
    }
    result
}

/// Removes `.NAME.tmp-PID` files beside `path` left by processes that no longer run (killed
/// mid-write). Best effort: errors are ignored, and a file whose process may still be alive
/// (or whose liveness cannot be told on this OS) is kept.
fn remove_dead_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && process_gone(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` has certainly exited (Linux: `/proc/PID` is absent; other systems:
/// never certain, so `false`).
fn process_gone(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").exists() && !Path::new("/proc").join(pid.to_string()).exists()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write(&path, "old").unwrap();
        let failed: std::io::Result<()> = write_with(&path, |w| {
            w.write_all(b"half a ne")?;
            Err(std::io::Error::other("disk full"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "disk full");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file was removed");
        write(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!temp_path(&path).exists());
        assert_eq!(
            temp_path(&path).file_name().unwrap().to_string_lossy(),
            format!(".report.json.tmp-{}", std::process::id())
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_removes_leftovers_of_killed_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curriculum.json");
        // A writer that was killed mid-write: a process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_tmp = dir.path().join(format!(".curriculum.json.tmp-{dead}"));
        std::fs::write(&dead_tmp, "half").unwrap();
        // A live writer of the same target (pid 1 always runs) and another target's leftover.
        let live_tmp = dir.path().join(".curriculum.json.tmp-1");
        std::fs::write(&live_tmp, "busy").unwrap();
        let other = dir.path().join(format!(".metrics.jsonl.tmp-{dead}"));
        std::fs::write(&other, "x").unwrap();
        write(&path, "{}").unwrap();
        assert!(!dead_tmp.exists(), "a dead writer's leftover is removed");
        assert!(live_tmp.exists(), "a live writer's file is kept");
        assert!(
            other.exists(),
            "another target's leftover waits for that target's next write"
        );
    }
}
