//! Diagnostics: every error the front end reports has a stable code, a message that says
//! what is wrong, a help line that says what to do, and labelled source spans. They are
//! rendered through `miette`, which prints the line with a caret under the span.

use crate::ast::Span;
use crate::source::{FileId, Sources};
use miette::{LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};
use std::collections::BTreeMap;
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
    IndexRange,
    TooLarge,
    ExpansionBudget,
    InitRange,
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
            Code::IndexRange => "E035",
            Code::TooLarge => "E036",
            Code::ExpansionBudget => "E037",
            Code::InitRange => "E038",
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
    source: Windowed,
    labels: Vec<LabeledSpan>,
    related: Vec<Rendered>,
}

impl Rendered {
    fn build(d: &Diagnostic, sources: &Sources) -> Rendered {
        let primary = d.file();
        let here: Vec<Span> = d.labels.iter().filter(|l| l.file == primary).map(|l| l.span).collect();
        let (source, shown) = Windowed::new(sources.name(primary), sources.text_arc(primary), &here);
        let mut labels = Vec::new();
        let mut related = Vec::new();
        let mut spans = shown.into_iter();
        for (i, l) in d.labels.iter().enumerate() {
            let text = (!l.text.is_empty()).then(|| l.text.clone());
            if l.file == primary {
                let span = spans.next().expect("one shown span per label in the primary file");
                labels.push(if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                });
            } else {
                let note = Diagnostic::new(d.code, l.file, l.span, String::new());
                let mut r = Rendered::build(&note, sources);
                r.message = format!("note: {}", l.text);
                related.push(r);
            }
        }
        Rendered { code: d.code, message: d.message.clone(), help: d.help.clone(), source, labels, related }
    }
}

/// Lines longer than this (in bytes) are shown as a window around their labels: miette's
/// renderer panics on a label past column 65,535, and a window is more readable anyway.
const MAX_LINE: usize = 400;
/// Bytes of a long line kept on either side of its labels.
const CONTEXT: usize = 80;
/// Marks where a long line was cut.
const ELLIPSIS: &str = "…";

/// A file as miette shows it: each over-long line cut to a window (marked `…`), with the
/// columns reported in the header still those of the real line.
#[derive(Debug)]
struct Windowed {
    name: String,
    text: Arc<str>,
    /// Per windowed line (0-based): real column minus shown column, in bytes (the unit of
    /// miette's columns).
    shift: BTreeMap<usize, usize>,
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

impl Windowed {
    /// The shown file and each label's span in it.
    fn new(name: &str, text: Arc<str>, labels: &[Span]) -> (Windowed, Vec<SourceSpan>) {
        let clamped: Vec<(usize, usize)> = labels
            .iter()
            .map(|s| {
                let start = floor_boundary(&text, s.start.min(text.len()));
                (start, ceil_boundary(&text, s.end.clamp(start, text.len())))
            })
            .collect();
        let name = name.to_string();
        if text.split('\n').all(|l| l.len() <= MAX_LINE) {
            let spans = clamped.iter().map(|&(a, b)| SourceSpan::new(a.into(), b - a)).collect();
            return (Windowed { name, text, shift: BTreeMap::new() }, spans);
        }
        // Each kept piece of the real text: (real start, real end, shown start).
        let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
        let mut shown = String::new();
        let mut shift = BTreeMap::new();
        let mut line_start = 0;
        for (number, line) in text.split_inclusive('\n').enumerate() {
            let body_end = line_start + line.trim_end_matches('\n').len();
            let line_end = line_start + line.len();
            if line.len() <= MAX_LINE {
                pieces.push((line_start, line_end, shown.len()));
                shown.push_str(line);
            } else {
                let on_line = |o: &usize| (line_start..=body_end).contains(o);
                let first = clamped.iter().map(|l| l.0).filter(on_line).min();
                let mut from =
                    floor_boundary(&text, first.map_or(line_start, |s| s.saturating_sub(CONTEXT).max(line_start)));
                if from - line_start <= ELLIPSIS.len() {
                    from = line_start;
                }
                let last = clamped.iter().map(|l| l.1).filter(on_line).max().unwrap_or(from);
                let to = ceil_boundary(&text, (last.min(from + MAX_LINE) + CONTEXT).min(body_end).max(from));
                if from > line_start {
                    shown.push_str(ELLIPSIS);
                    shift.insert(number, from - line_start - ELLIPSIS.len());
                }
                pieces.push((from, to, shown.len()));
                shown.push_str(&text[from..to]);
                if to < body_end {
                    shown.push_str(ELLIPSIS);
                }
                pieces.push((body_end, line_end, shown.len()));
                shown.push_str(&text[body_end..line_end]);
            }
            line_start = line_end;
        }
        // A real offset's place in the shown text (cut text maps to the nearest kept byte).
        let place = |o: usize| {
            let i = pieces.partition_point(|p| p.0 <= o).saturating_sub(1);
            let (a, b, at) = pieces.get(i).copied().unwrap_or_default();
            at + o.clamp(a, b) - a
        };
        let spans = clamped
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (place(a), place(b));
                SourceSpan::new(a.into(), b.max(a) - a)
            })
            .collect();
        (Windowed { name, text: shown.into(), shift }, spans)
    }
}

impl SourceCode for Windowed {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self.text.read_span(span, before, after)?;
        let column = inner.column() + self.shift.get(&inner.line()).copied().unwrap_or(0);
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            column,
            inner.line_count(),
        )))
    }
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
