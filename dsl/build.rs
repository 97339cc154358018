//! Compiles the standard library into the crate: writes `$OUT_DIR/stdlib.rs`, a table with one
//! `include_str!` per `stdlib/*.hyb` at the repository root, so that a `hyb` binary resolves
//! `import std.x` wherever it is copied or installed, and a new stdlib file needs no code change.
//!
//! `stdlib/` lies outside this crate (`../stdlib`), so the crate builds only from the
//! workspace: `cargo install --path .` works, a packaged hyb-dsl on its own would not.

use std::path::Path;

fn main() {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../stdlib");
    // A directory is rescanned as a whole: added and removed files rerun this script too.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the standard library {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hyb"))
        .collect();
    files.sort();
    let mut table = String::from("&[\n");
    for f in &files {
        let module = f.file_stem().unwrap().to_str().expect("stdlib file names are UTF-8");
        let path = f.to_str().expect("the stdlib path is UTF-8");
        table += &format!("    ({module:?}, include_str!({path:?})),\n");
    }
    table += "]\n";
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("stdlib.rs");
    std::fs::write(out, table).unwrap();
}
