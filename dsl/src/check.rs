//! `hyb check`: load files with their imports, check every block on its own, then
//! instantiate every model (where all configs are known and every shape is decided). The
//! primitives come from the caller: the compiler owns the op set.

use crate::diag::Diagnostic;
use crate::expand::model::Expanded;
use crate::expand::Expander;
use crate::prims::Primitives;
use crate::resolve::{DefId, Loader, Program};
use crate::value::Value;
use std::collections::HashMap;
use std::path::Path;

/// The outcome of checking: the program, every diagnostic, and each root model that
/// instantiated cleanly.
pub struct Checked {
    pub program: Program,
    pub diagnostics: Vec<Diagnostic>,
    pub models: Vec<(DefId, Expanded)>,
}

/// Checks files given by path. A file that cannot be read at all is an `Err`.
pub fn check_paths(prims: &dyn Primitives, paths: &[&Path]) -> Result<Checked, String> {
    let mut loader = Loader::new();
    for p in paths {
        loader.add_path(p)?;
    }
    Ok(finish(prims, loader, &HashMap::new()))
}

/// Checks source text (tests, fuzzing); `std.` imports resolve in the standard library.
pub fn check_text(prims: &dyn Primitives, name: &str, text: &str) -> Checked {
    let mut loader = Loader::new();
    loader.add_text(name, text);
    finish(prims, loader, &HashMap::new())
}

/// Checks the file at `path` with `sets` applied to its model `model` ([`crate::variant`]):
/// its imports resolve as the file's do, and diagnostics point into the variant's text.
pub fn check_variant(
    prims: &dyn Primitives,
    path: &Path,
    model: Option<&str>,
    sets: &[crate::variant::Set],
) -> Result<Checked, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = crate::variant::apply(&text, model, sets)?;
    let mut loader = Loader::new();
    loader.add_text_at(path, &text)?;
    Ok(finish(prims, loader, &HashMap::new()))
}

/// Checks files with some model settings replaced (every root model sees the same values).
pub fn check_paths_with(
    prims: &dyn Primitives,
    paths: &[&Path],
    settings: &HashMap<String, Value>,
) -> Result<Checked, String> {
    let mut loader = Loader::new();
    for p in paths {
        loader.add_path(p)?;
    }
    Ok(finish(prims, loader, settings))
}

fn finish(prims: &dyn Primitives, loader: Loader, settings: &HashMap<String, Value>) -> Checked {
    let (program, mut diagnostics) = loader.finish();
    let mut models = Vec::new();
    {
        let mut generic = Expander::new(&program, prims, false);
        for (m, module) in program.modules.iter().enumerate() {
            for (i, item) in module.ast.items.iter().enumerate() {
                if matches!(item, crate::ast::Item::Block(_)) {
                    generic.check_block(DefId { module: m, item: i });
                }
            }
        }
        diagnostics.append(&mut generic.diags);
        // One expansion budget for the whole check: once it is spent (and reported), the
        // remaining models are not expanded.
        let (mut work, mut exhausted) = (generic.work, generic.exhausted);
        for def in program.root_models() {
            if exhausted {
                break;
            }
            let mut strict = Expander::new(&program, prims, true);
            strict.setting_overrides = settings.clone();
            strict.work = work;
            let expanded = strict.expand_model(def);
            (work, exhausted) = (strict.work, strict.exhausted);
            diagnostics.append(&mut strict.diags);
            if let Some(e) = expanded {
                models.push((def, e));
            }
        }
    }
    dedup(&mut diagnostics);
    Checked { program, diagnostics, models }
}

/// One report per (code, place): a block used by many layers would otherwise repeat it.
fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.code, d.file(), d.span().start, d.span().end)));
    diags.sort_by_key(|d| (d.file(), d.span().start));
}
