//! The `.hyb` language front end: parsing, checking, formatting.
//!
//! `parse` turns text into an [`ast::File`]; `resolve` loads imports; `expand` walks
//! blocks and models to check names, types and shapes and to produce the instantiated
//! program ([`trace::Trace`]) that the compiler elaborates; `fmt` prints canonical source.

pub mod ast;
pub mod check;
pub mod diag;
pub mod dim;
pub mod expand;
pub mod fmt;
pub mod inits;
pub mod parse;
pub mod prims;
pub mod resolve;
pub mod source;
pub mod trace;
pub mod value;
pub mod variant;
