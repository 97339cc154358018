//! Syntax tree of one `.hyb` file. Every node keeps the byte span it came from so that
//! any later stage can point back at the source; equality ignores spans (see [`Span`]).

use std::fmt;

/// Byte range in one source file. Spans compare equal to each other so that two trees
/// that differ only in layout (e.g. before and after `hyb fmt`) compare equal.
#[derive(Clone, Copy, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    /// Smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// An identifier with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `///` lines attached to the item, statement or entry that follows them (without the slashes).
pub type Docs = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Import(Import),
    Block(Block),
    Model(Model),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Import(i) => i.span,
            Item::Block(b) => b.span,
            Item::Model(m) => m.span,
        }
    }
}

/// `import std.attention`: `std.` resolves in the standard library, anything else
/// relative to the importing file (`import layers.mixer` reads `layers/mixer.hyb`).
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub docs: Docs,
    pub path: Vec<String>,
    pub path_span: Span,
    pub span: Span,
}

/// A reusable computation on tensors: inputs with shape types, configs, µP multipliers,
/// learnable parameters, and a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub docs: Docs,
    pub name: Ident,
    pub inputs: Vec<Input>,
    pub ret: Option<Vec<TensorType>>,
    pub body: Vec<Stmt>,
    /// Span of the closing brace, where comments before it are kept.
    pub body_end: Span,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: Ident,
    pub ty: TensorType,
}

/// `[B, T, d]`, `[..., heads * head_dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    pub dims: Vec<TypeDim>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeDim {
    /// `...`: any number of leading dimensions.
    Ellipsis(Span),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub docs: Docs,
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    Config(Vec<ConfigItem>),
    Mup(Vec<MupItem>),
    Param(ParamDecl),
    Let { targets: Vec<Ident>, value: Expr },
    Return(Expr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarType {
    Int,
    Float,
    Bool,
    String,
}

impl ScalarType {
    pub fn keyword(self) -> &'static str {
        match self {
            ScalarType::Int => "int",
            ScalarType::Float => "float",
            ScalarType::Bool => "bool",
            ScalarType::String => "string",
        }
    }
}

/// `heads: int = 8`: a compile-time setting of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigItem {
    pub docs: Docs,
    pub name: Ident,
    pub ty: ScalarType,
    pub ty_span: Span,
    pub default: Option<Expr>,
}

/// `key_multiplier = 1.0`: a non-learnable multiplier, overridable by the model.
#[derive(Clone, Debug, PartialEq)]
pub struct MupItem {
    pub docs: Docs,
    pub name: Ident,
    pub value: Expr,
}

/// `param weight: [d_out, d_in] init normal(std = 0.02) role hidden`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: TensorType,
    pub init: Option<Call>,
    pub role: Option<Ident>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub callee: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Positional(Expr),
    Named(Ident, Expr),
}

impl Arg {
    pub fn span(&self) -> Span {
        match self {
            Arg::Positional(e) => e.span,
            Arg::Named(n, e) => n.span.to(e.span),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: Box<ExprKind>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(String),
    List(Vec<Expr>),
    /// `(e)`: kept so that the formatter can reproduce grouping the user wrote.
    Paren(Expr),
    Call(Call),
    Unary(UnaryOp, Expr),
    Binary(BinOp, Expr, Expr),
    Index(Expr, Vec<IndexItem>),
    If(Expr, Branch, Branch),
}

/// The body of one arm of an `if`: statements, then the arm's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub stmts: Vec<Stmt>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
        }
    }

    /// Binding strength: higher binds tighter. All operators are left-associative and, as in
    /// Python, `@` binds like `*`.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::MatMul => 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    Ellipsis(Span),
    At(Expr),
    Slice(Option<Expr>, Option<Expr>, Span),
}

/// A model: embedding, a stack of layers, final norm and head; see `docs/language.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub docs: Docs,
    pub name: Ident,
    pub entries: Vec<ModelEntry>,
    pub body_end: Span,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    pub docs: Docs,
    pub kind: ModelEntryKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelEntryKind {
    /// `d = 1024`, `layers = pattern("H{36}")`.
    Setting(Ident, Expr),
    Mup(Vec<MupItem>),
    /// `override layers[0..2] { heads = 12 }`.
    Override {
        first: u32,
        last: Option<u32>,
        range_span: Span,
        args: Vec<(Ident, Expr)>,
    },
}
