//! Feeds arbitrary text to the parser, checker and formatter. Any panic or stack overflow
//! is a bug; so is a formatted program that no longer parses to the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let checked = hyb_compiler::check::check_text("fuzz.hyb", text);
    for d in &checked.diagnostics {
        let _ = format!("{:?}", d.report(&checked.program.sources));
    }
    if let Ok(ast) = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), text) {
        let once = hyb_dsl::fmt::format(&ast, text);
        let again = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &once).expect("formatted output parses");
        assert_eq!(again, ast, "formatting changed the tree");
        assert_eq!(hyb_dsl::fmt::format(&again, &once), once, "formatting is not idempotent");
    }
});
