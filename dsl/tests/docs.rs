//! Every ```hyb example in docs/language.md parses, checks without diagnostics, and is in
//! canonical layout.

mod common;
use common::*;

fn hyb_examples(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```hyb") => current = Some((i + 2, String::new())),
            (Some(_), "```") => out.push(current.take().unwrap()),
            (Some((_, text)), l) => {
                text.push_str(l);
                text.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn language_reference_examples_check() {
    let md = std::fs::read_to_string(repo_root().join("docs/language.md")).unwrap();
    let examples = hyb_examples(&md);
    assert!(examples.len() >= 10, "found only {} examples", examples.len());
    for (line, src) in examples {
        let diags = check_src(&src);
        assert!(diags.is_empty(), "docs/language.md example at line {line}:\n{src}\n{diags:#?}");
        let ast = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &src).unwrap();
        assert_eq!(hyb_dsl::fmt::format(&ast, &src), src, "example at line {line} is not formatted");
    }
}

/// The language reference lists every primitive a model may call, and no internal one.
#[test]
fn language_reference_lists_every_callable_primitive() {
    use hyb_dsl::prims::Primitives;
    let md = std::fs::read_to_string(repo_root().join("docs/language.md")).unwrap();
    let table = md.split("### Primitives").nth(1).unwrap().split("\n## ").next().unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
    let listed = |name: &str| {
        rows.iter().any(|row| row.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|word| word == name))
    };
    let ops = &hyb_compiler::ops::OPS;
    for name in ops.names() {
        assert!(listed(name), "docs/language.md does not list the primitive `{name}`");
    }
    for internal in ["ssd_scan_grad", "all_reduce", "tp_copy", "rope_grad"] {
        assert!(ops.internal(internal).is_some() && !listed(internal), "{internal}");
    }
}
