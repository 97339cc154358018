#![allow(dead_code)]
//! What the runtime's tests share: the example models, elaborated, and a small generator
//! of reproducible numbers.

use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::Graph;
use std::path::{Path, PathBuf};

/// Every model in `examples/`, in name order.
pub fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hyb"))
        .collect();
    out.sort();
    out
}

/// The forward graph of the model in `path` (checked and elaborated on a thread with a
/// large stack, as the CLI does).
pub fn forward(path: &Path) -> Graph {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_paths(&[&path]).unwrap();
            assert!(checked.diagnostics.is_empty(), "{}", path.display());
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// The next number in (−1, 1) of a linear congruential sequence.
pub fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}
