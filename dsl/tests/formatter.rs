//! Formatter properties: `parse(fmt(src)) == parse(src)` (spans ignored) and
//! `fmt(fmt(src)) == fmt(src)`, over every `.hyb` file in the repository and over
//! generated programs; comments survive.

mod common;
use common::*;
use hyb_dsl::ast::*;
use hyb_dsl::fmt::format;
use hyb_dsl::parse::parse;
use hyb_dsl::source::FileId;
use proptest::prelude::*;

fn parse_ok(src: &str) -> File {
    match parse(FileId(0), src) {
        Ok(f) => f,
        Err(d) => panic!("does not parse: {:?}\n{src}", d.iter().map(|d| &d.message).collect::<Vec<_>>()),
    }
}

/// Checks both properties for one source text.
fn assert_format_properties(src: &str) {
    let ast = parse_ok(src);
    let once = format(&ast, src);
    let reparsed = parse_ok(&once);
    assert_eq!(reparsed, ast, "formatting changed the tree:\n{once}");
    let twice = format(&reparsed, &once);
    assert_eq!(twice, once, "formatting is not idempotent");
}

fn comment_lines(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| {
            let i = l.find("//")?;
            let c = &l[i..];
            (!c.starts_with("///") || c.starts_with("////")).then(|| c.trim_end().to_string())
        })
        .collect()
}

#[test]
fn every_repository_file() {
    let files = repo_hyb_files();
    assert!(files.len() >= 11, "expected stdlib and examples, found {files:?}");
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        big_stack(move || assert_format_properties(&src));
    }
}

#[test]
fn repository_files_are_formatted() {
    for path in repo_hyb_files() {
        let src = std::fs::read_to_string(&path).unwrap();
        let out = format(&parse_ok(&src), &src);
        assert_eq!(out, src, "{} is not in canonical layout (run `hyb fmt`)", path.display());
    }
}

#[test]
fn comments_are_kept_in_place() {
    let src = "// header comment\nimport std.nn  // why nn\n\n/// Doc.\nblock f(x: [B, d]) -> [B, d] {\n    // leading\n    config k: float = 2.0  // trailing\n\n    // after a blank line\n    y = linear(\n        x,  // moved before the statement\n        d,\n    )\n    return y * k\n    // before the brace\n}\n// at the end\n";
    let once = format(&parse_ok(src), src);
    assert_eq!(comment_lines(&once), comment_lines(src), "{once}");
    assert!(once.contains("    config k: float = 2.0  // trailing\n"), "{once}");
    assert!(once.contains("    return y * k\n    // before the brace\n}"), "{once}");
    assert!(once.contains("float = 2.0  // trailing\n\n    // after a blank line\n"), "{once}");
    assert_format_properties(src);
}

#[test]
fn canonical_layout() {
    let src = "import std.nn\nblock f(x:[B,d])->[B,d]{config k:int=2,s:float=1e-5\nparam w:[d]init ones()role vector\ny=-x*(w+1)@x[...,0:k]\nreturn if k>1{y}else if k==0{-y}else{x}}\nmodel m{vocab=8 d=4 layers=[f] override layers[0]{k=1}}\n";
    let out = format(&parse_ok(src), src);
    let want = "import std.nn\n\nblock f(x: [B, d]) -> [B, d] {\n    config k: int = 2, s: float = 1e-5\n    param w: [d] init ones() role vector\n    y = -x * (w + 1) @ x[..., 0:k]\n    return if k > 1 { y } else if k == 0 { -y } else { x }\n}\n\nmodel m {\n    vocab = 8\n    d = 4\n    layers = [f]\n    override layers[0] { k = 1 }\n}\n";
    assert_eq!(out, want);
}

// ---- generated programs ----

const NAMES: &[&str] = &["x", "y", "d", "heads", "B", "T", "scale", "w", "mixer", "H"];

fn ident() -> impl Strategy<Value = Ident> {
    prop::sample::select(NAMES).prop_map(|n| Ident { name: n.to_string(), span: Span::default() })
}

fn mk(kind: ExprKind) -> Expr {
    Expr { kind: Box::new(kind), span: Span::default() }
}

fn binop() -> impl Strategy<Value = BinOp> {
    prop::sample::select(vec![
        BinOp::Or,
        BinOp::And,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::MatMul,
    ])
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (0i64..100_000).prop_map(|v| mk(ExprKind::Int(v))),
        (0.0f64..1e6).prop_map(|v| mk(ExprKind::Float(v))),
        any::<bool>().prop_map(|b| mk(ExprKind::Bool(b))),
        "[a-z_ ]{0,8}".prop_map(|s| mk(ExprKind::Str(s))),
        ident().prop_map(|i| mk(ExprKind::Name(i.name))),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 48, 4, |inner| {
        let arg = prop_oneof![
            inner.clone().prop_map(Arg::Positional),
            (ident(), inner.clone()).prop_map(|(n, e)| Arg::Named(n, e)),
        ];
        let item = prop_oneof![
            inner.clone().prop_map(IndexItem::At),
            (prop::option::of(inner.clone()), prop::option::of(inner.clone())).prop_map(|(a, b)| IndexItem::Slice(
                a,
                b,
                Span::default()
            )),
            Just(IndexItem::Ellipsis(Span::default())),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| mk(ExprKind::List(v))),
            inner.clone().prop_map(|e| mk(ExprKind::Paren(e))),
            (ident(), prop::collection::vec(arg, 0..4)).prop_map(|(callee, args)| mk(ExprKind::Call(Call {
                callee,
                args,
                span: Span::default()
            }))),
            ident().prop_map(|i| mk(ExprKind::Unary(UnaryOp::Neg, mk(ExprKind::Name(i.name))))),
            inner.clone().prop_map(|e| mk(ExprKind::Unary(UnaryOp::Not, e))),
            (binop(), inner.clone(), inner.clone()).prop_map(|(op, a, b)| mk(ExprKind::Binary(op, a, b))),
            (ident(), prop::collection::vec(item, 1..3))
                .prop_map(|(b, items)| mk(ExprKind::Index(mk(ExprKind::Name(b.name)), items))),
            (inner.clone(), inner.clone(), inner.clone(), prop::collection::vec(let_stmt(inner.clone()), 0..2))
                .prop_map(|(c, a, b, stmts)| mk(ExprKind::If(
                    c,
                    Branch { stmts, value: a },
                    Branch { stmts: vec![], value: b }
                ))),
        ]
    })
}

fn let_stmt(e: impl Strategy<Value = Expr>) -> impl Strategy<Value = Stmt> {
    (prop::collection::vec(ident(), 1..3), e).prop_map(|(targets, value)| Stmt {
        docs: vec![],
        kind: StmtKind::Let { targets, value },
        span: Span::default(),
    })
}

fn docs() -> impl Strategy<Value = Docs> {
    prop::collection::vec("[a-zA-Z0-9 .,]{0,20}".prop_map(|s| s.trim().to_string()), 0..2)
}

fn tensor_type() -> impl Strategy<Value = TensorType> {
    (any::<bool>(), prop::collection::vec(expr(), 0..3)).prop_map(|(ell, dims)| {
        let mut all: Vec<TypeDim> = dims.into_iter().map(TypeDim::Expr).collect();
        if ell {
            all.insert(0, TypeDim::Ellipsis(Span::default()));
        }
        TensorType { dims: all, span: Span::default() }
    })
}

fn stmt() -> impl Strategy<Value = Stmt> {
    let scalar = prop::sample::select(vec![ScalarType::Int, ScalarType::Float, ScalarType::Bool, ScalarType::String]);
    let config = prop::collection::vec((docs(), ident(), scalar, prop::option::of(expr())), 1..3).prop_map(|items| {
        StmtKind::Config(
            items
                .into_iter()
                .map(|(docs, name, ty, default)| ConfigItem { docs, name, ty, ty_span: Span::default(), default })
                .collect(),
        )
    });
    let mup = prop::collection::vec((docs(), ident(), expr()), 1..3).prop_map(|items| {
        StmtKind::Mup(items.into_iter().map(|(docs, name, value)| MupItem { docs, name, value }).collect())
    });
    let init = prop::option::of(
        (ident(), prop::collection::vec(leaf().prop_map(Arg::Positional), 0..2)).prop_map(|(callee, args)| Call {
            callee,
            args,
            span: Span::default(),
        }),
    );
    let param = (ident(), tensor_type(), init, prop::option::of(ident()))
        .prop_map(|(name, ty, init, role)| StmtKind::Param(ParamDecl { name, ty, init, role }));
    let kind =
        prop_oneof![config, mup, param, let_stmt(expr()).prop_map(|s| s.kind), expr().prop_map(StmtKind::Return)];
    (docs(), kind).prop_map(|(docs, kind)| Stmt { docs, kind, span: Span::default() })
}

fn item() -> impl Strategy<Value = Item> {
    let import = (docs(), prop::collection::vec(ident(), 1..3)).prop_map(|(docs, path)| {
        Item::Import(Import {
            docs,
            path: path.into_iter().map(|i| i.name).collect(),
            path_span: Span::default(),
            span: Span::default(),
        })
    });
    let block = (
        docs(),
        ident(),
        prop::collection::vec((ident(), tensor_type()), 0..3),
        prop::option::of(prop::collection::vec(tensor_type(), 1..3)),
        prop::collection::vec(stmt(), 0..5),
    )
        .prop_map(|(docs, name, inputs, ret, body)| {
            Item::Block(Block {
                docs,
                name,
                inputs: inputs.into_iter().map(|(name, ty)| Input { name, ty }).collect(),
                ret,
                body,
                body_end: Span::default(),
                span: Span::default(),
            })
        });
    let entry = prop_oneof![
        (ident(), expr()).prop_map(|(n, e)| ModelEntryKind::Setting(n, e)),
        prop::collection::vec((docs(), ident(), expr()), 1..3).prop_map(|items| {
            ModelEntryKind::Mup(items.into_iter().map(|(docs, name, value)| MupItem { docs, name, value }).collect())
        }),
        (0u32..50, prop::option::of(0u32..50), prop::collection::vec((ident(), expr()), 0..3)).prop_map(
            |(first, last, args)| { ModelEntryKind::Override { first, last, range_span: Span::default(), args } }
        ),
    ];
    let model = (docs(), ident(), prop::collection::vec((docs(), entry), 0..5)).prop_map(|(docs, name, entries)| {
        Item::Model(Model {
            docs,
            name,
            entries: entries.into_iter().map(|(docs, kind)| ModelEntry { docs, kind, span: Span::default() }).collect(),
            body_end: Span::default(),
            span: Span::default(),
        })
    });
    prop_oneof![import, block, model]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn generated_programs(items in prop::collection::vec(item(), 1..4)) {
        let src = format(&File { items }, "");
        assert_format_properties(&src);
    }
}

/// Comments and blank lines in every order around imports, doc comments, statements and
/// model entries (where the fuzzer found `fmt` moving a comment on each run).
#[test]
fn comments_among_docs_and_imports() {
    for src in [
        "// c2\n///\n//\n\nimport std.layers\nimport std.layers",
        "/// doc\n// inside the docs\nimport std.nn\n",
        "import std.nn\n// c\n\nimport std.layers\n",
        "block f(x: [B]) -> [B] {\n    return x\n}\n\n// at the end\n",
        "/// doc\n\n// c\n\n/// more\nblock f(x: [B]) -> [B] {\n    /// d\n    // c\n\n    y = x\n    return y\n}\n",
    ] {
        assert_format_properties(src);
    }
}

const LINES: &[&str] = &[
    "import std.nn",
    "import std.layers  // why",
    "// c",
    "////",
    "",
    "/// d",
    "///",
    "block f(x: [B]) -> [B] {\n    /// d\n    // c\n\n    config k: int = 2  // t\n    // c\n    return x\n    // end\n}",
    "model m {\n    // c\n    /// d\n    vocab = 8\n\n    // c\n    d = 4  // t\n}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn comments_and_blank_lines_anywhere(lines in prop::collection::vec(prop::sample::select(LINES), 1..8), end in 0..3usize) {
        let src = format!("{}{}", lines.join("\n"), "\n".repeat(end));
        if parse(FileId(0), &src).is_ok() {
            assert_format_properties(&src);
        }
    }
}
