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
