//! Atomic file replacement, the one way hyb writes an output file.
//!
//! The bytes go to a fresh temporary file in the destination's folder, created exclusively
//! under a random name (so a planted file or symlink is never opened, and two writers never
//! share one), flushed to disk, then renamed over the destination. A crash leaves either
//! the old file or the new one; a failed write removes its temporary file. The
//! destination itself is replaced, never written through: a symlink there is replaced by
//! the new file, not followed.

use std::io::Write;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// The folder a path's file lives in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A written temporary file waiting to be renamed over its destination.
struct Staged {
    file: NamedTempFile,
    dest: PathBuf,
}

fn stage(dest: &Path, bytes: &[u8]) -> std::io::Result<Staged> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hyb-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // What `File::create` gives (0666 less the umask), not tempfile's private 0600.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(folder(dest))?;
    file.write_all(bytes)?;
    // Replacing a file keeps its permissions (an executable script stays executable).
    if let Ok(meta) = std::fs::symlink_metadata(dest) {
        if meta.is_file() {
            file.as_file().set_permissions(meta.permissions())?;
        }
    }
    file.as_file().sync_all()?;
    Ok(Staged { file, dest: dest.to_path_buf() })
}

fn commit(staged: Staged) -> std::io::Result<()> {
    staged.file.persist(&staged.dest).map_err(|e| e.error)?;
    // The rename itself is durable only once the folder is flushed.
    if let Ok(dir) = std::fs::File::open(folder(&staged.dest)) {
        dir.sync_all()?;
    }
    Ok(())
}

/// Replaces `path` with `bytes`.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    commit(stage(path, bytes)?)
}

/// Replaces several files as a set: every file is written and flushed before any is
/// renamed into place, so a failure while writing (a full disk) changes none of them.
/// The renames happen in the given order; put the file that makes the set usable last.
pub fn write_all(files: &[(PathBuf, Vec<u8>)]) -> Result<(), (PathBuf, std::io::Error)> {
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        staged.push(stage(path, bytes).map_err(|e| (path.clone(), e))?);
    }
    for s in staged {
        let dest = s.dest.clone();
        commit(s).map_err(|e| (dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["out.txt"]);
    }

    #[test]
    fn a_failed_set_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.txt");
        let bad = dir.path().join("missing/b.txt");
        let err = write_all(&[(good.clone(), b"a".to_vec()), (bad.clone(), b"b".to_vec())]).unwrap_err();
        assert_eq!(err.0, bad);
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    }
}
