//! `hyb fmt`: prints a syntax tree in the canonical layout. Four-space indents, one item per
//! paragraph, lines up to [`WIDTH`] columns (longer calls and lists break one argument per
//! line). `//` comments are recovered from the source text and kept: a comment on the line
//! a statement ends stays there; any other comment is placed on its own line before the
//! statement it was in or before. The layout depends only on the tree, so formatting is
//! idempotent.

use crate::ast::*;

pub const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// A `//` comment in the source: its byte offset and text (with the slashes).
struct Comment {
    start: usize,
    text: String,
}

/// Formats a parsed file; `src` is the text it was parsed from (for comments and blank lines).
pub fn format(file: &File, src: &str) -> String {
    let mut p = Printer { out: String::new(), src, comments: comments(src), next: 0 };
    let mut prev: Option<&Item> = None;
    for item in &file.items {
        let start = item.span().start;
        if let Some(prev) = prev {
            let both_imports = matches!((prev, item), (Item::Import(_), Item::Import(_)));
            if !both_imports || p.blank_between(prev.span().end, p.first_before(start)) {
                p.out.push('\n');
            }
        }
        // An item's span starts at its doc comment; comments among the docs go before them,
        // as they will be found the next time.
        p.leading(p.after_comments(start), 0);
        match item {
            Item::Import(i) => {
                p.docs(&i.docs, 0);
                p.line(0, &format!("import {}", i.path.join(".")));
                p.trailing(i.span.end);
            }
            Item::Block(b) => p.block(b),
            Item::Model(m) => p.model(m),
        }
        prev = Some(item);
    }
    if let Some(prev) = prev {
        if p.next < p.comments.len() && p.blank_between(prev.span().end, p.first_before(src.len())) {
            p.out.push('\n');
        }
    }
    p.leading(src.len(), 0);
    p.out
}

/// Finds `//` comments (not `///` docs), skipping string literals.
fn comments(src: &str) -> Vec<Comment> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = src[i..].find('\n').map_or(src.len(), |e| i + e);
                let is_doc = b.get(i + 2) == Some(&b'/') && b.get(i + 3) != Some(&b'/');
                if !is_doc {
                    out.push(Comment { start: i, text: src[i..end].trim_end().to_string() });
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

struct Printer<'s> {
    out: String,
    src: &'s str,
    comments: Vec<Comment>,
    next: usize,
}

impl Printer<'_> {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.out.push_str(INDENT);
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn blank_between(&self, from: usize, to: usize) -> bool {
        let gap = &self.src[from.min(to)..to];
        let mut lines = gap.split('\n');
        lines.next();
        let mut inner: Vec<&str> = lines.collect();
        inner.pop();
        inner.iter().any(|l| l.trim().is_empty())
    }

    /// Where the next thing printed starts in the source: the next comment if it comes
    /// before `pos`, else `pos` (blank lines are judged up to it).
    fn first_before(&self, pos: usize) -> usize {
        self.comments.get(self.next).filter(|c| c.start < pos).map_or(pos, |c| c.start)
    }

    /// The first byte at or after `pos` that is neither white space nor in a `//` or `///`
    /// line: where an item's keyword starts after its doc comments.
    fn after_comments(&self, mut pos: usize) -> usize {
        loop {
            let rest = &self.src[pos..];
            let trimmed = rest.trim_start();
            pos += rest.len() - trimmed.len();
            if !trimmed.starts_with("//") {
                return pos;
            }
            pos += trimmed.find('\n').unwrap_or(trimmed.len());
        }
    }

    /// Emits every comment that starts before `pos` on its own line.
    fn leading(&mut self, pos: usize, indent: usize) {
        let mut last = None;
        while self.next < self.comments.len() && self.comments[self.next].start < pos {
            let c = &self.comments[self.next];
            let (start, text) = (c.start, c.text.clone());
            if let Some(prev_end) = last {
                if self.blank_between(prev_end, start) {
                    self.out.push('\n');
                }
            }
            self.line(indent, &text);
            last = Some(start + text.len());
            self.next += 1;
        }
        if let Some(end) = last {
            if self.blank_between(end, pos) && pos < self.src.len() {
                self.out.push('\n');
            }
        }
    }

    /// Appends a comment that follows `end` on the same source line to the last line.
    fn trailing(&mut self, end: usize) {
        if let Some(c) = self.comments.get(self.next) {
            if c.start >= end && !self.src[end..c.start].contains('\n') {
                let text = c.text.clone();
                self.out.pop();
                self.out.push_str("  ");
                self.out.push_str(&text);
                self.out.push('\n');
                self.next += 1;
            }
        }
    }

    fn docs(&mut self, docs: &Docs, indent: usize) {
        for d in docs {
            if d.is_empty() {
                self.line(indent, "///");
            } else {
                self.line(indent, &format!("/// {d}"));
            }
        }
    }

    fn block(&mut self, b: &Block) {
        self.docs(&b.docs, 0);
        let inputs: Vec<String> = b.inputs.iter().map(|i| format!("{}: {}", i.name.name, tensor_type(&i.ty))).collect();
        let ret = match &b.ret {
            None => String::new(),
            Some(ts) if ts.len() == 1 => format!(" -> {}", tensor_type(&ts[0])),
            Some(ts) => format!(" -> ({})", ts.iter().map(tensor_type).collect::<Vec<_>>().join(", ")),
        };
        self.line(0, &format!("block {}({}){ret} {{", b.name.name, inputs.join(", ")));
        self.stmts(&b.body, 1, b.body_end.start);
        self.line(0, "}");
        self.trailing(b.span.end);
    }

    fn stmts(&mut self, stmts: &[Stmt], indent: usize, end: usize) {
        let mut prev_end: Option<usize> = None;
        for s in stmts {
            if let Some(pe) = prev_end {
                if self.blank_between(pe, self.first_before(s.span.start)) {
                    self.out.push('\n');
                }
            }
            self.leading(s.span.end, indent);
            self.docs(&s.docs, indent);
            self.stmt(s, indent);
            self.trailing(s.span.end);
            prev_end = Some(s.span.end);
        }
        self.leading(end, indent);
    }

    fn stmt(&mut self, s: &Stmt, indent: usize) {
        match &s.kind {
            StmtKind::Config(items) => {
                let parts: Vec<(Docs, String)> = items.iter().map(|c| (c.docs.clone(), config_text(c))).collect();
                self.list_decl("config", parts, indent);
            }
            StmtKind::Mup(items) => self.list_decl("mup", mup_parts(items), indent),
            StmtKind::Param(p) => self.line(indent, &param_text(p)),
            StmtKind::Let { targets, value } => {
                let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                let lhs = format!("{} = ", names.join(", "));
                let text = format!("{lhs}{}", self.expr(value, indent, lhs.len()));
                self.line(indent, &text);
            }
            StmtKind::Return(e) => {
                let text = format!("return {}", self.expr(e, indent, 7));
                self.line(indent, &text);
            }
        }
    }

    /// `config a: int, b: float` on one line when it fits and no item has docs; else one
    /// item per line.
    fn list_decl(&mut self, keyword: &str, parts: Vec<(Docs, String)>, indent: usize) {
        let one = format!("{keyword} {}", parts.iter().map(|p| p.1.as_str()).collect::<Vec<_>>().join(", "));
        if parts.iter().all(|p| p.0.is_empty()) && indent * 4 + one.len() <= WIDTH {
            self.line(indent, &one);
            return;
        }
        self.line(indent, keyword);
        let n = parts.len();
        for (i, (docs, text)) in parts.into_iter().enumerate() {
            self.docs(&docs, indent + 1);
            let comma = if i + 1 < n { "," } else { "" };
            self.line(indent + 1, &format!("{text}{comma}"));
        }
    }

    fn model(&mut self, m: &Model) {
        self.docs(&m.docs, 0);
        self.line(0, &format!("model {} {{", m.name.name));
        let mut prev_end: Option<usize> = None;
        for e in &m.entries {
            if let Some(pe) = prev_end {
                if self.blank_between(pe, self.first_before(e.span.start)) {
                    self.out.push('\n');
                }
            }
            self.leading(e.span.end, 1);
            self.docs(&e.docs, 1);
            match &e.kind {
                ModelEntryKind::Setting(n, v) => {
                    let text = format!("{} = {}", n.name, self.expr(v, 1, n.name.len() + 3));
                    self.line(1, &text);
                }
                ModelEntryKind::Mup(items) => self.list_decl("mup", mup_parts(items), 1),
                ModelEntryKind::Override { first, last, args, .. } => {
                    let range = match last {
                        Some(l) => format!("{first}..{l}"),
                        None => first.to_string(),
                    };
                    let args: Vec<String> = args.iter().map(|(n, v)| format!("{} = {}", n.name, flat(v))).collect();
                    self.line(1, &format!("override layers[{range}] {{ {} }}", args.join(", ")));
                }
            }
            self.trailing(e.span.end);
            prev_end = Some(e.span.end);
        }
        self.leading(m.body_end.start, 1);
        self.line(0, "}");
        self.trailing(m.span.end);
    }

    /// An expression starting at `indent`: flat if it fits, otherwise with its outermost
    /// call or list broken one argument per line.
    /// `used`: columns already taken on the line after the indentation.
    fn expr(&self, e: &Expr, indent: usize, used: usize) -> String {
        let f = flat(e);
        if indent * 4 + used + f.len() <= WIDTH && !multiline(e) {
            return f;
        }
        self.broken(e, indent)
    }

    fn broken(&self, e: &Expr, indent: usize) -> String {
        let pad = INDENT.repeat(indent + 1);
        let close = INDENT.repeat(indent);
        match e.kind.as_ref() {
            ExprKind::Call(c) if !c.args.is_empty() => {
                let args: Vec<String> = c.args.iter().map(|a| format!("{pad}{},\n", self.arg(a, indent + 1))).collect();
                format!("{}(\n{}{close})", c.callee.name, args.concat())
            }
            ExprKind::List(items) if !items.is_empty() => {
                let items: Vec<String> =
                    items.iter().map(|i| format!("{pad}{},\n", self.expr(i, indent + 1, 1))).collect();
                format!("[\n{}{close}]", items.concat())
            }
            ExprKind::Binary(op, a, b) => {
                format!("{} {} {}", operand(a, *op, false), op.symbol(), self.operand_broken(b, *op, indent))
            }
            ExprKind::If(c, t, o) => self.if_broken(c, t, o, indent),
            _ => flat(e),
        }
    }

    fn operand_broken(&self, e: &Expr, parent: BinOp, indent: usize) -> String {
        if needs_parens(e, parent, true) {
            format!("({})", self.broken(e, indent))
        } else {
            self.broken(e, indent)
        }
    }

    fn arg(&self, a: &Arg, indent: usize) -> String {
        match a {
            Arg::Positional(e) => self.expr(e, indent, 1),
            Arg::Named(n, e) => format!("{} = {}", n.name, self.expr(e, indent, n.name.len() + 4)),
        }
    }

    fn if_broken(&self, c: &Expr, t: &Branch, o: &Branch, indent: usize) -> String {
        let mut s = format!("if {} {{\n", flat(c));
        s.push_str(&self.branch_body(t, indent + 1));
        s.push_str(&INDENT.repeat(indent));
        match (o.stmts.is_empty(), o.value.kind.as_ref()) {
            (true, ExprKind::If(c2, t2, o2)) => {
                s.push_str("} else ");
                s.push_str(&self.if_broken(c2, t2, o2, indent));
            }
            _ => {
                s.push_str("} else {\n");
                s.push_str(&self.branch_body(o, indent + 1));
                s.push_str(&INDENT.repeat(indent));
                s.push('}');
            }
        }
        s
    }

    fn branch_body(&self, b: &Branch, indent: usize) -> String {
        let mut sub = Printer { out: String::new(), src: self.src, comments: Vec::new(), next: 0 };
        for st in &b.stmts {
            sub.docs(&st.docs, indent);
            sub.stmt(st, indent);
        }
        // Comments inside branches were already moved before the enclosing statement.
        let value = self.expr(&b.value, indent, 0);
        if !b.stmts.is_empty() && continues(&value) {
            sub.out.pop();
            sub.out.push_str(";\n");
        }
        sub.line(indent, &value);
        sub.out
    }
}

fn mup_parts(items: &[MupItem]) -> Vec<(Docs, String)> {
    items.iter().map(|m| (m.docs.clone(), format!("{} = {}", m.name.name, flat(&m.value)))).collect()
}

pub fn tensor_type(t: &TensorType) -> String {
    let dims: Vec<String> = t
        .dims
        .iter()
        .map(|d| match d {
            TypeDim::Ellipsis(_) => "...".to_string(),
            TypeDim::Expr(e) => flat(e),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn flat_call(c: &Call) -> String {
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| match a {
            Arg::Positional(e) => flat(e),
            Arg::Named(n, e) => format!("{} = {}", n.name, flat(e)),
        })
        .collect();
    format!("{}({})", c.callee.name, args.join(", "))
}

/// Whether a child of a binary operator needs parentheses to keep the tree's shape.
fn needs_parens(child: &Expr, parent: BinOp, right: bool) -> bool {
    match child.kind.as_ref() {
        ExprKind::Binary(op, _, _) => {
            op.precedence() < parent.precedence() || (right && op.precedence() == parent.precedence())
        }
        ExprKind::If(..) => true,
        _ => false,
    }
}

fn operand(e: &Expr, parent: BinOp, right: bool) -> String {
    if needs_parens(e, parent, right) {
        format!("({})", flat(e))
    } else {
        flat(e)
    }
}

/// An expression on one line.
pub fn flat(e: &Expr) -> String {
    match e.kind.as_ref() {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => float(*v),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("\"{}\"", escape(s)),
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(items) => format!("[{}]", items.iter().map(flat).collect::<Vec<_>>().join(", ")),
        ExprKind::Paren(inner) => format!("({})", flat(inner)),
        ExprKind::Call(c) => flat_call(c),
        ExprKind::Unary(op, inner) => {
            let sym = if *op == UnaryOp::Neg { "-" } else { "!" };
            match inner.kind.as_ref() {
                ExprKind::Binary(..) | ExprKind::If(..) => format!("{sym}({})", flat(inner)),
                _ => format!("{sym}{}", flat(inner)),
            }
        }
        ExprKind::Binary(op, a, b) => format!("{} {} {}", operand(a, *op, false), op.symbol(), operand(b, *op, true)),
        ExprKind::Index(base, items) => {
            let base_s = match base.kind.as_ref() {
                ExprKind::Binary(..) | ExprKind::Unary(..) | ExprKind::If(..) => {
                    format!("({})", flat(base))
                }
                ExprKind::Int(v) if *v < 0 => format!("({v})"),
                ExprKind::Float(v) if *v < 0.0 => format!("({})", float(*v)),
                _ => flat(base),
            };
            let items: Vec<String> = items
                .iter()
                .map(|i| match i {
                    IndexItem::Ellipsis(_) => "...".to_string(),
                    IndexItem::At(e) => flat(e),
                    IndexItem::Slice(lo, hi, _) => format!(
                        "{}:{}",
                        lo.as_ref().map(flat).unwrap_or_default(),
                        hi.as_ref().map(flat).unwrap_or_default()
                    ),
                })
                .collect();
            format!("{base_s}[{}]", items.join(", "))
        }
        ExprKind::If(c, t, o) => {
            let mut s = format!("if {} {{ {} }}", flat(c), flat_branch(t));
            match (o.stmts.is_empty(), o.value.kind.as_ref()) {
                (true, ExprKind::If(..)) => s.push_str(&format!(" else {}", flat(&o.value))),
                _ => s.push_str(&format!(" else {{ {} }}", flat_branch(o))),
            }
            s
        }
    }
}

/// A branch on one line; statements need no separator in the grammar, except before a
/// value that would continue the last statement.
fn flat_branch(b: &Branch) -> String {
    let value = flat(&b.value);
    let mut parts: Vec<String> = b.stmts.iter().map(flat_stmt).collect();
    if let Some(last) = parts.last_mut() {
        if continues(&value) {
            last.push(';');
        }
    }
    parts.push(value);
    parts.join(" ")
}

/// Whether text placed after a statement would be read as part of it.
fn continues(next: &str) -> bool {
    next.starts_with(['-', '(', '['])
}

fn flat_stmt(s: &Stmt) -> String {
    match &s.kind {
        StmtKind::Config(items) => {
            let parts: Vec<String> = items.iter().map(config_text).collect();
            format!("config {}", parts.join(", "))
        }
        StmtKind::Mup(items) => {
            let parts: Vec<String> = mup_parts(items).into_iter().map(|p| p.1).collect();
            format!("mup {}", parts.join(", "))
        }
        StmtKind::Param(p) => param_text(p),
        StmtKind::Let { targets, value } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            format!("{} = {}", names.join(", "), flat(value))
        }
        StmtKind::Return(e) => format!("return {}", flat(e)),
    }
}

fn config_text(c: &ConfigItem) -> String {
    let d = c.default.as_ref().map(|e| format!(" = {}", flat(e))).unwrap_or_default();
    format!("{}: {}{d}", c.name.name, c.ty.keyword())
}

fn param_text(p: &ParamDecl) -> String {
    let mut t = format!("param {}: {}", p.name.name, tensor_type(&p.ty));
    if let Some(init) = &p.init {
        t.push_str(&format!(" init {}", flat_call(init)));
    }
    if let Some(r) = &p.role {
        t.push_str(&format!(" role {}", r.name));
    }
    t
}

/// Whether an expression holds an `if` with statements, which reads badly on one line.
fn multiline(e: &Expr) -> bool {
    match e.kind.as_ref() {
        ExprKind::If(c, t, o) => {
            !t.stmts.is_empty() || !o.stmts.is_empty() || multiline(c) || multiline(&t.value) || multiline(&o.value)
        }
        ExprKind::Call(c) => c.args.iter().any(|a| match a {
            Arg::Positional(e) | Arg::Named(_, e) => multiline(e),
        }),
        ExprKind::List(items) => items.iter().any(multiline),
        ExprKind::Paren(i) | ExprKind::Unary(_, i) => multiline(i),
        ExprKind::Binary(_, a, b) => multiline(a) || multiline(b),
        _ => false,
    }
}

fn float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\t', "\\t")
}
