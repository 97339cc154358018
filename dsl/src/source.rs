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

    /// Adds `text` in place of the file at `path` (a variant of it): its imports resolve
    /// next to `path`, and diagnostics name it.
    pub fn add_text_at(&mut self, path: &Path, text: impl Into<Arc<str>>) -> Result<FileId, ReadError> {
        let canonical = path.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        })?;
        self.files.push(SourceFile { path: Some(canonical), name: path.display().to_string(), text: text.into() });
        Ok(FileId(self.files.len() - 1))
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

    /// Adds a compiled-in std module once, however many modules import it; it is found again
    /// by its virtual name (`<std>/…`) among the texts that have no path.
    pub fn add_std(&mut self, name: String, text: &'static str) -> FileId {
        match self.files.iter().position(|f| f.path.is_none() && f.name == name) {
            Some(i) => FileId(i),
            None => self.add_text(name, text),
        }
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

/// The standard library compiled in by `build.rs`: module name (`layers`) and text.
const EMBEDDED_STD: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/stdlib.rs"));

/// The names of the compiled-in standard library modules, sorted.
pub fn std_modules() -> impl Iterator<Item = &'static str> {
    EMBEDDED_STD.iter().map(|(m, _)| *m)
}

/// What an import path names.
pub enum ImportTarget {
    /// A file on disk: a module next to the importer, or a std module under `$HYB_STDLIB`.
    File(PathBuf),
    /// A compiled-in standard library module, named by a virtual path (`<std>/layers.hyb`)
    /// that diagnostics show with its text.
    Std { name: String, text: &'static str },
}

/// The module an import path names: `a.b` → `<dir>/a/b.hyb`; `std.a` → the compiled-in
/// `stdlib/a.hyb`, or `$HYB_STDLIB/a.hyb` when that is set (to try a changed stdlib without
/// rebuilding).
pub fn import_target(path: &[String], importing_dir: Option<&Path>) -> Option<ImportTarget> {
    let (base, rest) = match path.first().map(String::as_str) {
        Some("std") => match std::env::var_os("HYB_STDLIB") {
            Some(dir) => (PathBuf::from(dir), &path[1..]),
            None => {
                let [module] = &path[1..] else { return None };
                let &(_, text) = EMBEDDED_STD.iter().find(|(m, _)| m == module)?;
                return Some(ImportTarget::Std { name: format!("<std>/{module}.hyb"), text });
            }
        },
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
    Some(ImportTarget::File(p))
}
