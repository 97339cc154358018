//! Diagnostics on very long lines: miette's renderer panics on a label past column 65,535,
//! so long lines are shown as a window around the label, with the real column reported.

use super::*;

#[test]
fn an_error_at_column_70000_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.hyb");
    let pad = " ".repeat(70_000);
    std::fs::write(&path, format!("block f(x: [B]) -> [B] {{\n    return x{pad}+ nope\n}}\n")).unwrap();
    let r = hyb(&["check", path.to_str().unwrap()]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("E010") && err.contains(&format!("wide.hyb:2:{}", 12 + 70_000 + 3)), "{err}");
    assert!(err.contains("nope") && err.contains('…'), "{err}");
    assert!(err.lines().all(|l| l.chars().count() < 1000), "the long line is windowed");
}

#[test]
fn windows_respect_multibyte_characters() {
    let mut sources = hyb_dsl::source::Sources::new();
    let text = format!("{}nope{}\n", "é".repeat(40_000), "ü".repeat(40_000));
    let start = "é".len() * 40_000;
    let id = sources.add_text("wide.hyb", text);
    // Spans that start and end inside characters, and one past the end.
    for (a, b) in [(start, start + 4), (start + 1, start + 3), (3, 200_001), (5, 5)] {
        let d =
            hyb_dsl::diag::Diagnostic::new(hyb_dsl::diag::Code::UnknownName, id, hyb_dsl::ast::Span::new(a, b), "x")
                .with(id, hyb_dsl::ast::Span::new(b, b + 1), "second");
        let shown = format!("{:?}", d.report(&sources));
        assert!(shown.contains("wide.hyb:1:"), "{shown}");
    }
}
