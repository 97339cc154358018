//! Helpers shared by the front-end tests.
#![allow(dead_code)]

use hyb_compiler::check::{check_paths, check_text, Checked};
use std::path::Path;

/// Runs `f` on a thread with the stack the CLI uses, as every front-end entry point expects.
pub fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(512 << 20).spawn(f).unwrap().join().unwrap()
}

/// A diagnostic as tests see it: code, 1-based line and column, and the text under the caret.
#[derive(Debug, Clone)]
pub struct Seen {
    pub code: String,
    pub line: usize,
    pub col: usize,
    pub snippet: String,
    pub message: String,
}

pub fn seen(c: &Checked) -> Vec<Seen> {
    c.diagnostics
        .iter()
        .map(|d| {
            let text = c.program.sources.text(d.file());
            let s = d.span();
            let (line, col) = c.program.sources.line_col(d.file(), s.start);
            Seen {
                code: d.code.as_str().to_string(),
                line,
                col,
                snippet: text.get(s.start..s.end.min(text.len())).unwrap_or("").to_string(),
                message: d.message.clone(),
            }
        })
        .collect()
}

pub fn check_src(src: &str) -> Vec<Seen> {
    let src = src.to_string();
    big_stack(move || seen(&check_text("test.hyb", &src)))
}

pub fn check_file(path: &Path) -> Vec<Seen> {
    let path = path.to_path_buf();
    big_stack(move || seen(&check_paths(&[&path]).unwrap()))
}

/// Asserts that exactly the one diagnostic with `code` is reported, at `line:col`, over `snippet`.
#[track_caller]
pub fn expect_one(diags: &[Seen], code: &str, line: usize, col: usize, snippet: &str) {
    assert_eq!(diags.len(), 1, "expected one diagnostic, got {diags:#?}");
    let d = &diags[0];
    assert_eq!((d.code.as_str(), d.line, d.col, d.snippet.as_str()), (code, line, col, snippet), "{d:#?}");
}

pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.hyb` file under the repository's stdlib/, examples/ and tests/.
pub fn repo_hyb_files() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<std::path::PathBuf> =
        ["stdlib", "examples", "tests"].iter().map(|d| repo_root().join(d)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "hyb") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
