//! The language front end over the compiler's op set: what `hyb check` runs, and what every
//! stage after it starts from.

use crate::ops::OPS;
use hyb_dsl::value::Value;
use std::collections::HashMap;
use std::path::Path;

pub use hyb_dsl::check::Checked;

/// Checks files given by path. A file that cannot be read at all is an `Err`.
pub fn check_paths(paths: &[&Path]) -> Result<Checked, String> {
    hyb_dsl::check::check_paths(&OPS, paths)
}

/// Checks source text; `std.` imports resolve in the standard library.
pub fn check_text(name: &str, text: &str) -> Checked {
    hyb_dsl::check::check_text(&OPS, name, text)
}

/// Checks files with some model settings replaced (every root model sees the same values).
pub fn check_paths_with(paths: &[&Path], settings: &HashMap<String, Value>) -> Result<Checked, String> {
    hyb_dsl::check::check_paths_with(&OPS, paths, settings)
}

/// Checks the file at `path` with `sets` applied to its model `model`.
pub fn check_variant(path: &Path, model: Option<&str>, sets: &[hyb_dsl::variant::Set]) -> Result<Checked, String> {
    hyb_dsl::check::check_variant(&OPS, path, model, sets)
}
