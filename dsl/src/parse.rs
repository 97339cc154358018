//! Text → [`ast::File`]. A cheap lexical pre-scan rejects what would make a recursive-descent
//! parser misbehave (unterminated strings, absurd nesting) with a precise span; pest does the
//! rest, and its errors are rewritten into diagnostics with readable expectations.

use crate::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::source::FileId;
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct HybParser;

/// Deepest bracket nesting accepted. Real models nest a handful of levels; the limit keeps
/// every recursive stage (parser, checker, formatter) far from the stack's end.
pub const MAX_NESTING: usize = 256;

type PResult<T> = Result<T, Diagnostic>;

/// Parses one file. Returns every syntax problem the pre-scan finds, else pest's first error.
pub fn parse(file: FileId, text: &str) -> Result<File, Vec<Diagnostic>> {
    if text.trim().is_empty() {
        let d = Diagnostic::new(Code::EmptyFile, file, Span::new(0, text.len()), "the file is empty")
            .label("nothing to parse")
            .help("a .hyb file holds imports, `block` and `model` definitions; see docs/language.md");
        return Err(vec![d]);
    }
    let (problems, item_starts) = prescan(file, text);
    if !problems.is_empty() {
        return Err(problems);
    }
    let chunks = chunks(text.len(), &item_starts);
    if chunks.len() == 1 {
        return parse_chunk(file, text, 0, text.len()).map(|items| File { items }).map_err(|d| vec![d]);
    }
    // Large files: top-level items are independent, so chunks of them parse in parallel.
    let results: Vec<Result<Vec<Item>, Diagnostic>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&(start, end)| {
                std::thread::Builder::new()
                    .stack_size(64 << 20)
                    .spawn_scoped(scope, move || parse_chunk(file, text, start, end))
                    .expect("a parser thread starts")
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("the parser does not panic")).collect()
    });
    let mut items = Vec::new();
    for r in results {
        items.extend(r.map_err(|d| vec![d])?);
    }
    Ok(File { items })
}

/// Files above this size are parsed in parallel chunks.
const PARALLEL_BYTES: usize = 1 << 20;

/// Byte ranges covering the file, cut at top-level item starts into about one chunk per core.
fn chunks(len: usize, item_starts: &[usize]) -> Vec<(usize, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if len < PARALLEL_BYTES || cores < 2 {
        return vec![(0, len)];
    }
    let target = len / cores;
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in item_starts {
        if cut >= start + target && out.len() + 1 < cores {
            out.push((start, cut));
            start = cut;
        }
    }
    out.push((start, len));
    out
}

fn parse_chunk(file: FileId, text: &str, start: usize, end: usize) -> Result<Vec<Item>, Diagnostic> {
    let mut pairs = HybParser::parse(Rule::file, &text[start..end]).map_err(|e| syntax_error(file, text, start, e))?;
    let root = pairs.next().expect("the file rule always produces one pair");
    let b = Builder { file, src: text, offset: start, nested: std::cell::Cell::new(0) };
    b.file(root).map(|f| f.items)
}

/// Finds unterminated strings and over-deep bracket nesting without recursion, and where
/// top-level items start (a line at bracket depth 0 beginning with `import`, `block` or
/// `model`, moved up over the `///` lines documenting it).
fn prescan(file: FileId, text: &str) -> (Vec<Diagnostic>, Vec<usize>) {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut starts = Vec::new();
    let mut docs_from: Option<usize> = None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if depth == 0 && (i == 0 || bytes[i - 1] == b'\n') {
            let line = &text[i..];
            let word = |w: &str| {
                line.starts_with(w) && !line[w.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            };
            if line.starts_with("///") && !line.starts_with("////") {
                docs_from.get_or_insert(i);
            } else if word("import") || word("block") || word("model") {
                starts.push(docs_from.take().unwrap_or(i));
            } else {
                docs_from = None;
            }
        }
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' && i + 1 < bytes.len() && bytes[i + 1] != b'\n' { 2 } else { 1 };
                }
                if i >= bytes.len() || bytes[i] == b'\n' {
                    out.push(
                        Diagnostic::new(Code::UnterminatedString, file, Span::new(start, i), "unterminated string")
                            .label("this string is never closed")
                            .help("close it with `\"` on the same line"),
                    );
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    out.push(
                        Diagnostic::new(Code::NestingTooDeep, file, Span::new(i, i + 1), "brackets nested too deeply")
                            .label(format!("nesting depth {MAX_NESTING} is exceeded here"))
                            .help("split the expression into named steps"),
                    );
                    return (out, starts);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (out, starts)
}

/// A pest error in the chunk starting at `offset` of `text`, as a diagnostic.
fn syntax_error(file: FileId, text: &str, offset: usize, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (offset + p, offset + p),
        InputLocation::Span((s, e)) => (offset + s, offset + e),
    };
    let end = if end == start { text[start..].chars().next().map_or(start, |c| start + c.len_utf8()) } else { end };
    let found = match text[start..].chars().next() {
        None => "end of file".to_string(),
        Some(_) => format!("`{}`", token_at(&text[start..])),
    };
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            names
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", one_of(&expected))
    };
    Diagnostic::new(Code::Syntax, file, Span::new(start, end), message)
        .label("here")
        .help("see docs/language.md for the syntax of each construct")
}

fn token_at(s: &str) -> String {
    let first = s.chars().next().unwrap_or(' ');
    if first.is_alphanumeric() || first == '_' {
        s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect()
    } else {
        first.to_string()
    }
}

fn one_of(names: &[&str]) -> String {
    match names {
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => String::new(),
    }
}

fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of file",
        Rule::import | Rule::block_def | Rule::model_def | Rule::item => "`import`, `block` or `model`",
        Rule::ident | Rule::reference => "a name",
        Rule::module_path => "a module path like `std.attention`",
        Rule::tensor_type => "a tensor type like `[B, T, d]`",
        Rule::stmt | Rule::config_decl | Rule::mup_decl | Rule::param_decl | Rule::return_stmt | Rule::let_stmt => {
            "a statement"
        }
        Rule::scalar_type => "a type (`int`, `float`, `bool` or `string`)",
        Rule::expr | Rule::operand | Rule::call | Rule::call_args | Rule::list | Rule::paren | Rule::if_expr => {
            "an expression"
        }
        Rule::float_lit | Rule::int_lit => "a number",
        Rule::string_lit => "a string",
        Rule::bool_lit => "`true` or `false`",
        Rule::or | Rule::and | Rule::eq | Rule::ne | Rule::le | Rule::ge | Rule::lt | Rule::gt => "an operator",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul => "an operator",
        Rule::index => "`[`",
        Rule::named_arg => "a named argument",
        Rule::model_entry | Rule::setting | Rule::r#override => "a model entry",
        Rule::layer_range => "a layer index like `0` or `0..4`",
        Rule::branch | Rule::body => "`{`",
        Rule::doc_line | Rule::docs => "a doc comment",
        Rule::input | Rule::inputs => "an input like `x: [B, T, d]`",
        Rule::ret_type => "a return type",
        _ => return None,
    })
}

struct Builder<'s> {
    file: FileId,
    /// The whole file; pest's positions are relative to the chunk at `offset`.
    src: &'s str,
    offset: usize,
    /// Deepest expression finished since the enclosing `expr` started (see `expr`).
    nested: std::cell::Cell<usize>,
}

/// pest's implicit whitespace makes a rule that ends in a repetition also cover the
/// whitespace and comments after it; spans end at the last character of code instead.
fn code_end(src: &str, start: usize, mut end: usize) -> usize {
    loop {
        while end > start && src.as_bytes()[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        let line_start = src[..end].rfind('\n').map_or(0, |i| i + 1).max(start);
        match comment_start(&src[line_start..end]) {
            Some(c) => end = line_start + c,
            None => return end,
        }
    }
}

/// Offset of the first `//` outside a string literal in one line.
fn comment_start(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && b.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

impl Builder<'_> {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let (start, end) = (self.offset + s.start(), self.offset + s.end());
        Span::new(start, code_end(self.src, start, end))
    }

    fn file(&self, root: Pair<Rule>) -> PResult<File> {
        let mut items = Vec::new();
        for p in root.into_inner() {
            match p.as_rule() {
                Rule::import => items.push(Item::Import(self.import(p))),
                Rule::block_def => items.push(Item::Block(self.block(p)?)),
                Rule::model_def => items.push(Item::Model(self.model(p)?)),
                Rule::EOI => {}
                r => unreachable!("file: {r:?}"),
            }
        }
        Ok(File { items })
    }

    fn docs(&self, p: Pair<Rule>) -> Docs {
        p.into_inner()
            .map(|l| {
                let t = &l.as_str()[3..];
                t.strip_prefix(' ').unwrap_or(t).trim_end().to_string()
            })
            .collect()
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn import(&self, p: Pair<Rule>) -> Import {
        let sp = self.span(&p);
        let mut it = p.into_inner();
        let docs = self.docs(it.next().unwrap());
        let path = it.next().unwrap();
        Import {
            docs,
            path: path.as_str().split('.').map(str::to_string).collect(),
            path_span: self.span(&path),
            span: sp,
        }
    }

    fn block(&self, p: Pair<Rule>) -> PResult<Block> {
        let sp = self.span(&p);
        let mut it = p.into_inner();
        let docs = self.docs(it.next().unwrap());
        let name = self.ident(it.next().unwrap());
        let mut inputs = Vec::new();
        for i in it.next().unwrap().into_inner() {
            let mut ii = i.into_inner();
            let name = self.ident(ii.next().unwrap());
            let ty = self.tensor_type(ii.next().unwrap())?;
            inputs.push(Input { name, ty });
        }
        let mut ret = None;
        let mut next = it.next().unwrap();
        if next.as_rule() == Rule::ret_type {
            ret = Some(next.into_inner().map(|t| self.tensor_type(t)).collect::<PResult<_>>()?);
            next = it.next().unwrap();
        }
        let body_span = self.span(&next);
        let body = next.into_inner().map(|s| self.stmt(s)).collect::<PResult<_>>()?;
        Ok(Block { docs, name, inputs, ret, body, body_end: Span::new(body_span.end - 1, body_span.end), span: sp })
    }

    fn tensor_type(&self, p: Pair<Rule>) -> PResult<TensorType> {
        let sp = self.span(&p);
        let dims = p
            .into_inner()
            .map(|d| match d.as_rule() {
                Rule::ellipsis => Ok(TypeDim::Ellipsis(self.span(&d))),
                _ => self.expr(d).map(TypeDim::Expr),
            })
            .collect::<PResult<_>>()?;
        Ok(TensorType { dims, span: sp })
    }

    fn stmt(&self, p: Pair<Rule>) -> PResult<Stmt> {
        let sp = self.span(&p);
        let mut it = p.into_inner();
        let docs = self.docs(it.next().unwrap());
        let s = it.next().unwrap();
        let kind = match s.as_rule() {
            Rule::config_decl => StmtKind::Config(
                s.into_inner()
                    .map(|c| {
                        let mut ci = c.into_inner();
                        let docs = self.docs(ci.next().unwrap());
                        let name = self.ident(ci.next().unwrap());
                        let ty_pair = ci.next().unwrap();
                        let ty = match ty_pair.as_str() {
                            "int" => ScalarType::Int,
                            "float" => ScalarType::Float,
                            "bool" => ScalarType::Bool,
                            _ => ScalarType::String,
                        };
                        let default = ci.next().map(|e| self.expr(e)).transpose()?;
                        Ok(ConfigItem { docs, name, ty, ty_span: self.span(&ty_pair), default })
                    })
                    .collect::<PResult<_>>()?,
            ),
            Rule::mup_decl => StmtKind::Mup(self.mup_items(s)?),
            Rule::param_decl => {
                let mut pi = s.into_inner();
                let name = self.ident(pi.next().unwrap());
                let ty = self.tensor_type(pi.next().unwrap())?;
                let mut init = None;
                let mut role = None;
                for rest in pi {
                    match rest.as_rule() {
                        Rule::call => init = Some(self.call(rest)?),
                        _ => role = Some(self.ident(rest)),
                    }
                }
                StmtKind::Param(ParamDecl { name, ty, init, role })
            }
            Rule::return_stmt => StmtKind::Return(self.expr(s.into_inner().next().unwrap())?),
            Rule::let_stmt => {
                let mut parts: Vec<Pair<Rule>> = s.into_inner().collect();
                let value = self.expr(parts.pop().unwrap())?;
                let targets = parts.into_iter().map(|t| self.ident(t)).collect();
                StmtKind::Let { targets, value }
            }
            r => unreachable!("stmt: {r:?}"),
        };
        Ok(Stmt { docs, kind, span: sp })
    }

    fn mup_items(&self, p: Pair<Rule>) -> PResult<Vec<MupItem>> {
        p.into_inner()
            .map(|m| {
                let mut mi = m.into_inner();
                let docs = self.docs(mi.next().unwrap());
                let name = self.ident(mi.next().unwrap());
                let value = self.expr(mi.next().unwrap())?;
                Ok(MupItem { docs, name, value })
            })
            .collect()
    }

    fn model(&self, p: Pair<Rule>) -> PResult<Model> {
        let sp = self.span(&p);
        let mut it = p.into_inner();
        let docs = self.docs(it.next().unwrap());
        let name = self.ident(it.next().unwrap());
        let mut entries = Vec::new();
        for e in it {
            let esp = self.span(&e);
            let mut ei = e.into_inner();
            let docs = self.docs(ei.next().unwrap());
            let inner = ei.next().unwrap();
            let kind = match inner.as_rule() {
                Rule::setting => {
                    let mut si = inner.into_inner();
                    let name = self.ident(si.next().unwrap());
                    ModelEntryKind::Setting(name, self.expr(si.next().unwrap())?)
                }
                Rule::mup_decl => ModelEntryKind::Mup(self.mup_items(inner)?),
                Rule::r#override => {
                    let mut oi = inner.into_inner();
                    let range = oi.next().unwrap();
                    let range_span = self.span(&range);
                    let mut bounds = range.into_inner().map(|b| self.layer_index(b));
                    let first = bounds.next().unwrap()?;
                    let last = bounds.next().transpose()?;
                    let args = oi.map(|a| self.named_arg(a)).collect::<PResult<_>>()?;
                    ModelEntryKind::Override { first, last, range_span, args }
                }
                r => unreachable!("model entry: {r:?}"),
            };
            entries.push(ModelEntry { docs, kind, span: esp });
        }
        Ok(Model { docs, name, entries, body_end: Span::new(sp.end - 1, sp.end), span: sp })
    }

    fn layer_index(&self, p: Pair<Rule>) -> PResult<u32> {
        p.as_str().parse().map_err(|_| {
            Diagnostic::new(Code::InvalidNumber, self.file, self.span(&p), "layer index is too large")
                .label("not a valid layer index")
        })
    }

    fn named_arg(&self, p: Pair<Rule>) -> PResult<(Ident, Expr)> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        Ok((name, self.expr(it.next().unwrap())?))
    }

    fn call(&self, p: Pair<Rule>) -> PResult<Call> {
        let sp = self.span(&p);
        let mut it = p.into_inner();
        let callee = self.ident(it.next().unwrap());
        let args = self.args(it.next().unwrap())?;
        Ok(Call { callee, args, span: sp })
    }

    fn args(&self, p: Pair<Rule>) -> PResult<Vec<Arg>> {
        p.into_inner()
            .map(|a| match a.as_rule() {
                Rule::named_arg => self.named_arg(a).map(|(n, e)| Arg::Named(n, e)),
                _ => self.expr(a).map(Arg::Positional),
            })
            .collect()
    }

    /// Operator precedence by shunting-yard: iterative, so long operator chains cannot
    /// exhaust the stack while parsing. Tree depth is tracked as the tree is built and
    /// capped at [`MAX_NESTING`], so no later recursive pass can exhaust it either.
    fn expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        let outer = self.nested.replace(0);
        let mut operands: Vec<(Expr, usize)> = Vec::new();
        let mut ops: Vec<(BinOp, Span)> = Vec::new();
        let mut prefixes: Vec<(UnaryOp, Span)> = Vec::new();
        let reduce = |operands: &mut Vec<(Expr, usize)>, (op, at): (BinOp, Span)| -> PResult<()> {
            let (rhs, dr) = operands.pop().unwrap();
            let (lhs, dl) = operands.pop().unwrap();
            let depth = 1 + dl.max(dr);
            if depth > MAX_NESTING {
                return Err(self.too_deep(at));
            }
            let span = lhs.span.to(rhs.span);
            let kind = Box::new(ExprKind::Binary(op, lhs, rhs));
            operands.push((Expr { kind, span }, depth));
            Ok(())
        };
        for part in p.into_inner() {
            match part.as_rule() {
                Rule::neg => prefixes.push((UnaryOp::Neg, self.span(&part))),
                Rule::not => prefixes.push((UnaryOp::Not, self.span(&part))),
                Rule::operand => {
                    let at = self.span(&part);
                    self.nested.set(0);
                    let mut e = self.operand(part)?;
                    let depth = 1 + self.nested.get() + prefixes.len();
                    if depth > MAX_NESTING {
                        return Err(self.too_deep(at));
                    }
                    while let Some((op, sp)) = prefixes.pop() {
                        e = fold_unary(op, sp, e);
                    }
                    operands.push((e, depth));
                }
                rule => {
                    let op = (binop(rule), self.span(&part));
                    while ops.last().is_some_and(|top| top.0.precedence() >= op.0.precedence()) {
                        reduce(&mut operands, ops.pop().unwrap())?;
                    }
                    ops.push(op);
                }
            }
        }
        while let Some(op) = ops.pop() {
            reduce(&mut operands, op)?;
        }
        let (e, depth) = operands.pop().unwrap();
        self.nested.set(outer.max(depth));
        Ok(e)
    }

    fn too_deep(&self, at: Span) -> Diagnostic {
        Diagnostic::new(Code::NestingTooDeep, self.file, at, "expression nested too deeply")
            .label(format!("nesting depth {MAX_NESTING} is exceeded here"))
            .help("split the expression into named steps")
    }

    fn operand(&self, p: Pair<Rule>) -> PResult<Expr> {
        let mut it = p.into_inner();
        let mut e = self.primary(it.next().unwrap())?;
        for idx in it {
            let sp = e.span.to(self.span(&idx));
            let items = idx
                .into_inner()
                .map(|item| match item.as_rule() {
                    Rule::ellipsis => Ok(IndexItem::Ellipsis(self.span(&item))),
                    Rule::slice => {
                        let ssp = self.span(&item);
                        let mut lo = None;
                        let mut hi = None;
                        for b in item.into_inner() {
                            let is_lo = b.as_rule() == Rule::slice_lo;
                            let bound = self.expr(b.into_inner().next().unwrap())?;
                            *(if is_lo { &mut lo } else { &mut hi }) = Some(bound);
                        }
                        Ok(IndexItem::Slice(lo, hi, ssp))
                    }
                    _ => self.expr(item).map(IndexItem::At),
                })
                .collect::<PResult<_>>()?;
            e = Expr { kind: Box::new(ExprKind::Index(e, items)), span: sp };
        }
        Ok(e)
    }

    fn primary(&self, p: Pair<Rule>) -> PResult<Expr> {
        let sp = self.span(&p);
        let kind = match p.as_rule() {
            Rule::int_lit => ExprKind::Int(p.as_str().parse().map_err(|_| {
                Diagnostic::new(Code::InvalidNumber, self.file, sp, format!("integer `{}` is too large", p.as_str()))
                    .label("does not fit in 64 bits")
                    .help("integers must lie within ±9223372036854775807")
            })?),
            Rule::float_lit => {
                let v: f64 = p.as_str().parse().unwrap_or(f64::INFINITY);
                if !v.is_finite() {
                    return Err(Diagnostic::new(
                        Code::InvalidNumber,
                        self.file,
                        sp,
                        format!("number `{}` is out of range", p.as_str()),
                    )
                    .label("not a finite 64-bit float")
                    .help("floats must be finite"));
                }
                ExprKind::Float(v)
            }
            Rule::bool_lit => ExprKind::Bool(p.as_str() == "true"),
            Rule::string_lit => ExprKind::Str(unescape(p.into_inner().next().unwrap().as_str())),
            Rule::reference => {
                let mut it = p.into_inner();
                let callee = self.ident(it.next().unwrap());
                match it.next() {
                    Some(args) => ExprKind::Call(Call { callee, args: self.args(args)?, span: sp }),
                    None => ExprKind::Name(callee.name),
                }
            }
            Rule::list => ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect::<PResult<_>>()?),
            Rule::paren => ExprKind::Paren(self.expr(p.into_inner().next().unwrap())?),
            Rule::if_expr => return self.if_expr(p),
            r => unreachable!("primary: {r:?}"),
        };
        Ok(Expr { kind: Box::new(kind), span: sp })
    }

    /// `if a {…} else if b {…} else {…}`: the grammar lists the arms (so long chains do not
    /// recurse in the parser); the tree nests them from the last arm outwards.
    fn if_expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        let sp = self.span(&p);
        let parts: Vec<Pair<Rule>> = p.into_inner().collect();
        let arms = parts.len() / 2;
        if arms > MAX_NESTING {
            return Err(self.too_deep(sp));
        }
        let mut it = parts.into_iter();
        let mut conds = Vec::new();
        for _ in 0..arms {
            let c = it.next().unwrap();
            let b = it.next().unwrap();
            let start = c.as_span().start();
            conds.push((self.expr(c)?, self.branch(b)?, start));
        }
        let mut otherwise = self.branch(it.next().unwrap())?;
        let mut result = None;
        while let Some((cond, then, start)) = conds.pop() {
            let is_first = conds.is_empty();
            let span = if is_first { sp } else { Span::new(start, sp.end) };
            let e = Expr { kind: Box::new(ExprKind::If(cond, then, otherwise)), span };
            if is_first {
                result = Some(e);
                break;
            }
            otherwise = Branch { stmts: Vec::new(), value: e };
        }
        self.nested.set(self.nested.get().max(arms));
        Ok(result.unwrap())
    }

    fn branch(&self, p: Pair<Rule>) -> PResult<Branch> {
        let mut parts: Vec<Pair<Rule>> = p.into_inner().collect();
        let value = self.expr(parts.pop().unwrap())?;
        let stmts = parts.into_iter().map(|s| self.stmt(s)).collect::<PResult<_>>()?;
        Ok(Branch { stmts, value })
    }
}

/// `-3` and `-1.5` become literals so that the formatter and the checker see numbers.
fn fold_unary(op: UnaryOp, sp: Span, e: Expr) -> Expr {
    let span = sp.to(e.span);
    let kind = match (op, *e.kind) {
        (UnaryOp::Neg, ExprKind::Int(v)) => ExprKind::Int(-v),
        (UnaryOp::Neg, ExprKind::Float(v)) => ExprKind::Float(-v),
        (op, kind) => ExprKind::Unary(op, Expr { kind: Box::new(kind), span: e.span }),
    };
    Expr { kind: Box::new(kind), span }
}

fn binop(r: Rule) -> BinOp {
    match r {
        Rule::or => BinOp::Or,
        Rule::and => BinOp::And,
        Rule::eq => BinOp::Eq,
        Rule::ne => BinOp::Ne,
        Rule::lt => BinOp::Lt,
        Rule::le => BinOp::Le,
        Rule::gt => BinOp::Gt,
        Rule::ge => BinOp::Ge,
        Rule::add => BinOp::Add,
        Rule::sub => BinOp::Sub,
        Rule::mul => BinOp::Mul,
        Rule::div => BinOp::Div,
        Rule::matmul => BinOp::MatMul,
        r => unreachable!("operator: {r:?}"),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
