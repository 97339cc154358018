//! Run directories: held by one writer at a time, and never taken over by accident.
//!
//! A trainer holds an exclusive lock on `DIR/.lock` for as long as it lives, so a second
//! `hyb train` on the same directory fails at once instead of interleaving checkpoints and
//! metrics. The lock file itself stays (removing it would race with the next writer) and
//! does not count as content.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file's name in a run directory.
pub const LOCK: &str = ".lock";
/// The files a run writes; `--force` removes them before a fresh run.
pub const RUN_FILES: &[&str] = &[super::checkpoint::FILE, "metrics.jsonl", "loss.png"];

/// What to do with a directory that already holds files when a fresh run starts in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: it may hold a run someone wants to keep.
    Refuse,
    /// Start over: the previous run's files are removed.
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{dir} is in use by another hyb process (it holds the lock {dir}/{LOCK}); wait for it to finish or choose another directory")]
    Busy { dir: String },
    #[error("{dir} already holds files ({files}); continue that run with `--resume {dir}`, or start over in it with `--force`")]
    NotEmpty { dir: String, files: String },
    #[error("cannot use {path} as a run directory: {error}")]
    Io { path: String, error: std::io::Error },
}

/// A locked run directory; the lock is released when this is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `dir` if needed and locks it.
    pub fn lock(dir: &Path) -> Result<RunDir, RunDirError> {
        let io = |error| RunDirError::Io { path: dir.display().to_string(), error };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK)).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => Ok(RunDir { path: dir.to_path_buf(), _lock: lock }),
            Err(TryLockError::WouldBlock) => Err(RunDirError::Busy { dir: dir.display().to_string() }),
            Err(TryLockError::Error(error)) => Err(io(error)),
        }
    }

    /// Locks `dir` for a fresh run: it must be empty unless `existing` says to replace
    /// the run it holds.
    pub fn fresh(dir: &Path, existing: Existing) -> Result<RunDir, RunDirError> {
        let run = RunDir::lock(dir)?;
        let io = |error| RunDirError::Io { path: dir.display().to_string(), error };
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        files.retain(|f| f != LOCK);
        files.sort();
        match existing {
            Existing::Refuse if !files.is_empty() => {
                Err(RunDirError::NotEmpty { dir: dir.display().to_string(), files: files.join(", ") })
            }
            Existing::Refuse => Ok(run),
            Existing::Replace => {
                for f in RUN_FILES.iter().filter(|f| files.iter().any(|g| g == *f)) {
                    let path = dir.join(f);
                    std::fs::remove_file(&path)
                        .map_err(|error| RunDirError::Io { path: path.display().to_string(), error })?;
                }
                Ok(run)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
