//! Source files: reading them (UTF-8 checked), naming them in diagnostics, and finding the
//! file an `import` path refers to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

struct SourceFile {
    /// Canonical path, or `None` for text that did not come from disk.
    path: Option<PathBuf>,
    name: String,
    text: Arc<str>,
}

/// Every file the front end has read, so that a diagnostic can show any of them.
#[derive(Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

/// Why a file could not be read as `.hyb` text.
pub enum ReadError {
    NotFound,
    NotUtf8 { offset: usize },
    Io(std::io::Error),
}

impl Sources {
    pub fn new() -> Self {
        Sources::default()
    }

    /// Adds text that has no file behind it (tests, stdin, fuzzing).
    pub fn add_text(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> FileId {
        self.files.push(SourceFile { path: None, name: name.into(), text: text.into() });
        FileId(self.files.len() - 1)
    }

    /// Reads a file, or returns the already-read copy when the same path was loaded before.
    pub fn load(&mut self, path: &Path) -> Result<FileId, ReadError> {
        let canonical = path.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        })?;
        if let Some(id) = self.lookup(&canonical) {
            return Ok(id);
        }
        let bytes = std::fs::read(&canonical).map_err(ReadError::Io)?;
        let text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 { offset: e.utf8_error().valid_up_to() })?;
        self.files.push(SourceFile { path: Some(canonical), name: path.display().to_string(), text: text.into() });
        Ok(FileId(self.files.len() - 1))
    }

    pub fn lookup(&self, canonical: &Path) -> Option<FileId> {
        self.files.iter().position(|f| f.path.as_deref() == Some(canonical)).map(FileId)
    }

    pub fn text(&self, id: FileId) -> &str {
        &self.files[id.0].text
    }

    pub fn text_arc(&self, id: FileId) -> Arc<str> {
        self.files[id.0].text.clone()
    }

    pub fn name(&self, id: FileId) -> &str {
        &self.files[id.0].name
    }

    pub fn path(&self, id: FileId) -> Option<&Path> {
        self.files[id.0].path.as_deref()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where the standard library lives: `$HYB_STDLIB`, else the nearest `stdlib/` above the
/// executable (a checkout's `target/…/hyb`), else the source tree this crate was built from.
pub fn stdlib_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HYB_STDLIB") {
        return Some(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().map(|a| a.join("stdlib")).find(|d| d.join("nn.hyb").is_file()).or_else(|| {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
        here.join("nn.hyb").is_file().then_some(here)
    })
}

/// The file an import path names: `std.a.b` → `<stdlib>/a/b.hyb`; `a.b` → `<dir>/a/b.hyb`.
pub fn import_target(path: &[String], importing_dir: Option<&Path>) -> Option<PathBuf> {
    let (base, rest) = match path.first().map(String::as_str) {
        Some("std") => (stdlib_dir()?, &path[1..]),
        _ => (importing_dir?.to_path_buf(), path),
    };
    if rest.is_empty() {
        return None;
    }
    let mut p = base;
    for part in rest {
        p.push(part);
    }
    p.set_extension("hyb");
    Some(p)
}
