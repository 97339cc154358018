//! The language checker refuses what the runtime cannot do and bounds its own work: huge
//! or wrapping sizes, indices outside their dimension, initialisers with impossible
//! arguments, and programs whose expansion would take hours are diagnostics, never panics,
//! aborts, hangs or silent acceptance.

use super::*;
use std::time::Instant;

/// A one-layer model whose layer block has `body` (the input is `x: [B, T, d]`, `d = 16`).
fn model_with(body: &str) -> String {
    format!("import std.nn\n\nblock layer(x: [B, T, d]) -> [B, T, d] {{\n{body}\n}}\n\nmodel m {{\n    vocab = 32\n    d = 16\n    layers = [layer]\n}}\n")
}

/// `hyb check` on `src` fails (exit 1, not a panic) with `code`, and `hyb show` too.
fn refused(src: &str, code: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.hyb");
    std::fs::write(&path, src).unwrap();
    let r = hyb(&["check", path.to_str().unwrap()]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{src}\nstdout: {}\nstderr: {err}", stdout(&r));
    assert!(err.contains(code), "missing {code} in:\n{err}");
    let shown = hyb(&["show", path.to_str().unwrap()]);
    assert_eq!(shown.status.code(), Some(1), "show: {}", stdout(&shown));
    err
}

#[test]
fn sizes_the_runtime_cannot_allocate_are_refused() {
    refused(&model_with("    param w: [1000000000000000000, d]\n    return x"), "E036");
    refused(&model_with("    param w: [10000000000, 8]\n    return x"), "E036");
    refused(&model_with("    y = linear(x, 10000000000)\n    return x"), "E036");
    refused(&model_with("    return x").replace("vocab = 32", "vocab = 1000000000000000000"), "E036");
    // 2^64 elements once showed as 0 parameters.
    let err = refused(&model_with("    param w: [4294967296, 4294967296]\n    return x"), "E036");
    assert!(err.contains("18446744073709551616 elements"), "{err}");
}

#[test]
fn bad_arguments_are_errors() {
    refused(&model_with("    a, b = split(x, [-4, 20])\n    return x"), "E016");
    refused(&model_with("    y = x[:, :, -100]\n    return x"), "E035");
    refused(&model_with("    param w: [d] init uniform(low = 1.0, high = -1.0)\n    return x * w"), "E038");
    refused(&model_with("    param w: [d] init normal(std = -0.5)\n    return x * w"), "E038");
    refused(&model_with("    return clamp(x, 1.0, -1.0)"), "E016");
    refused(&model_with("    y = broadcast(x[:, :, 0:1], [B, T, -5])\n    return x"), "E016");
}

#[test]
fn an_index_past_the_sequence_is_an_error_when_its_length_is_known() {
    let s = Scratch::new();
    std::fs::write(s.path("m.hyb"), model_with("    return x + x[:, -100:-99]")).unwrap();
    let checked = hyb(&["check", &s.s("m.hyb")]);
    assert_eq!(checked.status.code(), Some(0), "{}", stderr(&checked));
    let r = s.train(&["--seq", "8", "--out", &s.s("run")]);
    fails_with(&r, &["slice T - 100:T - 99", "T = 8", "too short"]);
    assert!(!s.path("run").exists(), "the failed run touched its directory");
    // Long enough sequences run.
    let r = s.train(&["--seq", "128", "--steps", "1", "--mqar-pairs", "3", "--out", &s.s("run2")]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
}

#[test]
fn expansion_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut exp = "block b0(x: [B, T, d]) -> [B, T, d] {\n    return x * 2.0\n}\n".to_string();
    for i in 1..40 {
        exp.push_str(&format!("block b{i}(x: [B, T, d]) -> [B, T, d] {{\n    return b{p}(b{p}(x))\n}}\n", p = i - 1));
    }
    let deep = super::MODEL.replace("pattern(\"H\"", "pattern(\"H{100000}\"");
    let many = exp.clone()
        + &(0..200)
            .map(|i| format!("model m{i} {{\n    vocab = 8\n    d = 4\n    layers = [b39]\n}}\n"))
            .collect::<String>();
    for (name, src, code) in [("exp", exp, "E037"), ("deep", deep, "E019"), ("many", many, "E037")] {
        let path = dir.path().join(format!("{name}.hyb"));
        std::fs::write(&path, src).unwrap();
        let start = Instant::now();
        let r = hyb(&["check", path.to_str().unwrap()]);
        let took = start.elapsed();
        assert_eq!(r.status.code(), Some(1), "{name}: {}", stderr(&r));
        assert!(stderr(&r).contains(code), "{name}: {}", stderr(&r));
        assert!(took.as_secs_f64() < 10.0, "{name} took {took:?}");
    }
}
