//! Diagnostics: every error the front end reports has a stable code, a message that says
//! what is wrong, a help line that says what to do, and labelled source spans. They are
//! rendered through `miette`, which prints the line with a caret under the span.

use crate::ast::Span;
use crate::source::{FileId, Sources};
use miette::{LabeledSpan, NamedSource, SourceSpan};
use std::fmt;
use std::sync::Arc;

/// Error classes. The numeric code is stable: tests and users refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    Syntax,
    UnterminatedString,
    InvalidNumber,
    NestingTooDeep,
    NotUtf8,
    EmptyFile,
    FileNotFound,
    CyclicImport,
    DuplicateDefinition,
    UnknownName,
    WrongArity,
    UnknownNamedArg,
    DuplicateArg,
    MissingArg,
    TypeMismatch,
    DimMismatch,
    RankMismatch,
    BadPatternLetter,
    BadPattern,
    ModelSetting,
    OverrideRange,
    MissingReturn,
    ReturnType,
    UnknownInit,
    UnknownRole,
    BadDivision,
    ConfigType,
    Rebinding,
    UnpackCount,
    AxisRange,
    RecursiveBlock,
    UnknownDtype,
    CannotRead,
    InternalPrimitive,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E001",
            Code::UnterminatedString => "E002",
            Code::InvalidNumber => "E003",
            Code::NestingTooDeep => "E004",
            Code::NotUtf8 => "E005",
            Code::EmptyFile => "E006",
            Code::FileNotFound => "E007",
            Code::CyclicImport => "E008",
            Code::DuplicateDefinition => "E009",
            Code::UnknownName => "E010",
            Code::WrongArity => "E011",
            Code::UnknownNamedArg => "E012",
            Code::DuplicateArg => "E013",
            Code::MissingArg => "E014",
            Code::TypeMismatch => "E015",
            Code::DimMismatch => "E016",
            Code::RankMismatch => "E017",
            Code::BadPatternLetter => "E018",
            Code::BadPattern => "E019",
            Code::ModelSetting => "E020",
            Code::OverrideRange => "E021",
            Code::MissingReturn => "E022",
            Code::ReturnType => "E023",
            Code::UnknownInit => "E024",
            Code::UnknownRole => "E025",
            Code::BadDivision => "E026",
            Code::ConfigType => "E027",
            Code::Rebinding => "E028",
            Code::UnpackCount => "E029",
            Code::AxisRange => "E030",
            Code::RecursiveBlock => "E031",
            Code::UnknownDtype => "E032",
            Code::CannotRead => "E033",
            Code::InternalPrimitive => "E034",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A labelled place in a file.
#[derive(Clone, Debug)]
pub struct Label {
    pub file: FileId,
    pub span: Span,
    pub text: String,
}

/// One reported problem. The first label is the primary location; labels in other files
/// (e.g. the model layer that instantiated a block) are rendered as related notes.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub help: Option<String>,
    pub labels: Vec<Label>,
}

impl Diagnostic {
    pub fn new(code: Code, file: FileId, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            help: None,
            labels: vec![Label { file, span, text: String::new() }],
        }
    }

    pub fn label(mut self, text: impl Into<String>) -> Self {
        self.labels[0].text = text.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary labelled span.
    pub fn with(mut self, file: FileId, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label { file, span, text: text.into() });
        self
    }

    pub fn file(&self) -> FileId {
        self.labels[0].file
    }

    pub fn span(&self) -> Span {
        self.labels[0].span
    }

    /// A `miette` report for terminal rendering.
    pub fn report(&self, sources: &Sources) -> miette::Report {
        miette::Report::new(Rendered::build(self, sources))
    }
}

/// The miette view of a [`Diagnostic`]: labels in the primary file inline, the others as
/// related reports with their own source.
#[derive(Debug)]
struct Rendered {
    code: Code,
    message: String,
    help: Option<String>,
    source: NamedSource<Arc<str>>,
    labels: Vec<LabeledSpan>,
    related: Vec<Rendered>,
}

impl Rendered {
    fn build(d: &Diagnostic, sources: &Sources) -> Rendered {
        let primary = d.file();
        let mut labels = Vec::new();
        let mut related = Vec::new();
        for (i, l) in d.labels.iter().enumerate() {
            let text = (!l.text.is_empty()).then(|| l.text.clone());
            if l.file == primary {
                let span = clamp(l.span, sources.text(primary));
                labels.push(if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                });
            } else {
                let note = Diagnostic::new(d.code, l.file, l.span, l.text.clone());
                let mut r = Rendered::build(&note, sources);
                r.message = format!("note: {}", l.text);
                r.labels[0] = LabeledSpan::new_primary_with_span(None, clamp(l.span, sources.text(l.file)));
                related.push(r);
            }
        }
        Rendered {
            code: d.code,
            message: d.message.clone(),
            help: d.help.clone(),
            source: NamedSource::new(sources.name(primary), sources.text_arc(primary)),
            labels,
            related,
        }
    }
}

fn clamp(span: Span, text: &str) -> SourceSpan {
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    SourceSpan::new(start.into(), end - start)
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|r| r as &dyn miette::Diagnostic)))
    }
}
