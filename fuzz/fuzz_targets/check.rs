//! Feeds arbitrary text to the parser, checker and formatter. Any panic or stack overflow
//! is a bug; so is a formatted program that no longer parses to the same tree. Diagnostics
//! are rendered with miette's graphical renderer, as the CLI renders them (it panics on
//! some inputs that `Debug` formatting does not reach, such as very long lines).
#![no_main]

use libfuzzer_sys::fuzz_target;
use miette::{GraphicalReportHandler, GraphicalTheme};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let checked = hyb_compiler::check::check_text("fuzz.hyb", text);
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
    for d in &checked.diagnostics {
        let mut out = String::new();
        handler.render_report(&mut out, d.report(&checked.program.sources).as_ref()).expect("diagnostics render");
    }
    if let Ok(ast) = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), text) {
        let once = hyb_dsl::fmt::format(&ast, text);
        let again = hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &once).expect("formatted output parses");
        assert_eq!(again, ast, "formatting changed the tree");
        assert_eq!(hyb_dsl::fmt::format(&again, &once), once, "formatting is not idempotent");
    }
});
