//! Hostile inputs: what a careless user or an attacker can hand `hyb`, one module per class
//! of failure (docs/reliability.md lists the promises these tests hold hyb to). Every case
//! must end in a clear error or a correct result: no panic, no silent acceptance, no lost
//! or misplaced data.

mod cli_values;
mod data_loss;
mod import;
mod language;
mod long_lines;
mod messages;
mod resume;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A one-layer Falcon-H1 model small enough to train in a blink.
pub const MODEL: &str = "import std.layers\n\nmodel m {\n    vocab = 32\n    d = 16\n    layers = pattern(\"H\", H = falcon_h1_layer)\n    heads = 2\n    kv_heads = 1\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n    d_ff = 32\n}\n";

pub fn hyb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyb"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch folder with the tiny model in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.hyb"), MODEL).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `hyb train m.hyb` with `extra`; a fresh run gets small, fast settings for the flags
    /// `extra` leaves out (a resumed run keeps its own).
    pub fn train(&self, extra: &[&str]) -> Output {
        let model = self.s("m.hyb");
        let mut args = vec!["train", model.as_str()];
        args.extend_from_slice(extra);
        let given = |flag: &str| extra.iter().any(|a| a.split('=').next() == Some(flag));
        if !given("--resume") {
            for (flag, value) in [("--batch", "2"), ("--seq", "16"), ("--mqar-pairs", "3"), ("--eval-every", "0")] {
                if !(given(flag) || flag == "--mqar-pairs" && given("--data")) {
                    args.extend([flag, value]);
                }
            }
        }
        hyb(&args)
    }
}

/// Every file under `dir` with its bytes, to show that a failed command changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/falcon_h1").join(name)
}

/// Asserts a failed command: exit code 2 (an error, not a panic) and `want` in its stderr.
pub fn fails_with(o: &Output, want: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stdout: {}\nstderr: {err}", stdout(o));
    for w in want {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
}
