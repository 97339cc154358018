//! The checker's engine: it walks blocks the way the program will run, computing a
//! [`Value`] for every expression. Inside a model (strict mode) all configs are known and
//! it records the instantiated program as a [`Trace`]; a block checked on its own (lenient
//! mode) has symbolic configs and reports only what is wrong for every config value.

mod call;
pub mod model;
mod pattern;

pub use pattern::MAX_LAYERS;

use crate::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::dim::Dim;
use crate::prims::{Callable, Ctx, Primitives};
use crate::resolve::{DefId, DefKind, Program};
use crate::source::FileId;
use crate::trace::{Op, Trace, TraceArg};
use crate::value::{shape_string, DType, Tensor, Value};
use call::Bound;
use std::collections::{HashMap, HashSet};

/// Most elements one tensor may have: 2^32 (16 GiB as float32), twice the largest tensors of
/// published models (embedding tables of about 2^31 elements). Larger tensors cannot be
/// allocated by the runtime, so the checker refuses them.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 32;
/// Most parameters a model may have in total: 2^38 (2^40 bytes, 1 TiB, as float32).
pub const MAX_PARAMS: u64 = 1 << 38;
/// Most block instantiations and traced operations (primitive applications and parameters)
/// one check may make, over every block checked on its own and every model. It bounds the
/// checker's time and memory on any input, such as blocks that each call the previous one
/// twice (2^40 instantiations for 40 blocks): reaching it takes one to two seconds and a
/// few hundred megabytes. A Falcon-H1 layer costs about 110.
pub const MAX_EXPANSION: usize = 200_000;

/// What a name in a block body is bound to; configs, multipliers and parameters cannot be
/// rebound, locals and inputs can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    Input,
    Config,
    Mup,
    Param,
    Local,
    ShapeVar,
}

/// The variables of one block instantiation.
struct Frame {
    module: usize,
    file: FileId,
    vars: HashMap<String, (Value, Binding)>,
    /// Dims matched by `...` in the inputs.
    ellipsis: Option<Vec<Dim>>,
}

impl Frame {
    fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name).map(|(v, _)| v)
    }
}

pub struct Expander<'p> {
    prog: &'p Program,
    prims: &'p dyn Primitives,
    strict: bool,
    pub diags: Vec<Diagnostic>,
    reported: HashSet<(Code, FileId, usize, usize)>,
    pub trace: Trace,
    /// Blocks being instantiated, innermost last (recursion is an error).
    calls: Vec<DefId>,
    /// Parameter name prefix, one entry per block call, and per-scope name counters.
    path: Vec<String>,
    counters: Vec<HashMap<String, usize>>,
    /// Multiplier overrides: model-wide first, then the current layer's.
    mup_overrides: Vec<HashMap<String, (f64, FileId, Span)>>,
    used_mups: HashSet<String>,
    /// Values of the multipliers used since the current layer began.
    mup_values: std::collections::BTreeMap<String, f64>,
    /// Configs of the last layer-level block instantiated.
    layer_configs: std::collections::BTreeMap<String, Value>,
    /// Model settings replaced by the caller (e.g. `d` when sweeping widths).
    pub setting_overrides: HashMap<String, Value>,
    /// Secondary labels added to every diagnostic (e.g. which model layer is being built).
    context: Vec<(FileId, Span, String)>,
    /// Expansion work done so far in this check (carried from one expander to the next),
    /// against [`MAX_EXPANSION`]; once it is spent every further instantiation and operation
    /// is poison.
    pub work: usize,
    pub exhausted: bool,
}

impl<'p> Expander<'p> {
    pub fn new(prog: &'p Program, prims: &'p dyn Primitives, strict: bool) -> Self {
        Expander {
            prog,
            prims,
            strict,
            diags: Vec::new(),
            reported: HashSet::new(),
            trace: Trace::default(),
            calls: Vec::new(),
            path: Vec::new(),
            counters: vec![HashMap::new()],
            mup_overrides: Vec::new(),
            used_mups: HashSet::new(),
            mup_values: Default::default(),
            layer_configs: Default::default(),
            setting_overrides: HashMap::new(),
            context: Vec::new(),
            work: 0,
            exhausted: false,
        }
    }

    /// Counts one unit of expansion work; `false` once the budget is spent (reported once,
    /// at the place that spent it).
    fn spend(&mut self, file: FileId, span: Span) -> bool {
        if self.exhausted {
            return false;
        }
        self.work += 1;
        if self.work <= MAX_EXPANSION {
            return true;
        }
        self.exhausted = true;
        self.report(
            Diagnostic::new(
                Code::ExpansionBudget,
                file,
                span,
                format!("the program expands to more than {MAX_EXPANSION} block instantiations and operations"),
            )
            .label("the budget ran out here")
            .help("the checker's limit bounds its time and memory; use fewer layers or fewer nested block calls"),
        );
        false
    }

    /// Refuses a tensor too large to allocate, judged by its fewest elements (every
    /// remaining symbol at 1); `what` names it in the message.
    fn fits(&mut self, shape: &[Dim], file: FileId, span: Span, what: &str) -> bool {
        // A shape rule that let a negative size through (`broadcast(x, [B, -5])`).
        if shape.iter().any(|d| d.as_const().is_some_and(|c| c < 0)) {
            self.report(
                Diagnostic::new(
                    Code::DimMismatch,
                    file,
                    span,
                    format!("{what} {} has a negative dimension", shape_string(shape)),
                )
                .label("negative size"),
            );
            return false;
        }
        let elements = shape.iter().try_fold(1u128, |acc, d| match d.eval(&|_| Some(1)) {
            Some(n) if n <= 0 => None,
            Some(n) => Some(acc.saturating_mul(n as u128)),
            None => Some(u128::MAX),
        });
        match elements {
            Some(n) if n > u128::from(MAX_TENSOR_ELEMENTS) => {
                let count = if n == u128::MAX { "too many".to_string() } else { n.to_string() };
                self.report(
                    Diagnostic::new(
                        Code::TooLarge,
                        file,
                        span,
                        format!(
                            "{what} {} has {count} elements, more than the {MAX_TENSOR_ELEMENTS} one tensor may have",
                            shape_string(shape)
                        ),
                    )
                    .label("too large to allocate")
                    .help("a tensor may have at most 2^32 elements (16 GiB as float32)"),
                );
                false
            }
            _ => true,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx { strict: self.strict }
    }

    fn report(&mut self, mut d: Diagnostic) {
        let key = (d.code, d.file(), d.span().start, d.span().end);
        if !self.reported.insert(key) {
            return;
        }
        for (f, s, text) in &self.context {
            d = d.with(*f, *s, text.clone());
        }
        self.diags.push(d);
    }

    fn error(&mut self, code: Code, file: FileId, span: Span, message: impl Into<String>) -> Value {
        self.report(Diagnostic::new(code, file, span, message));
        Value::Poison
    }

    fn new_tensor(&mut self, shape: Vec<Dim>, dtype: DType) -> Tensor {
        let id = self.trace.new_tensor(shape.clone(), dtype);
        Tensor { id, shape, dtype }
    }

    /// Checks one block on its own, with symbolic configs and inputs built from its types.
    pub fn check_block(&mut self, id: DefId) {
        let block = self.prog.block(id);
        let file = self.prog.file_of(id);
        let mut frame = Frame { module: id.module, file, vars: HashMap::new(), ellipsis: None };
        let configs = call::configs(block);
        for input in &block.inputs {
            for d in &input.ty.dims {
                if let TypeDim::Expr(e) = d {
                    if let ExprKind::Name(n) = e.kind.as_ref() {
                        if !configs.iter().any(|c| c.0.name == *n) {
                            frame.vars.insert(n.clone(), (Value::Int(Dim::symbol(n)), Binding::ShapeVar));
                        }
                    }
                }
            }
        }
        for (name, ty, default) in configs {
            if let Some(e) = default {
                let v = self.expr(e, &mut frame);
                self.check_config_type(&v, ty, file, e.span, &name.name);
            }
            let v = match ty {
                ScalarType::Int => Value::Int(Dim::symbol(&name.name)),
                ScalarType::Float => Value::Float(None),
                ScalarType::Bool => Value::Bool(None),
                ScalarType::String => Value::Str(None),
            };
            self.bind(&mut frame, name, v, Binding::Config);
        }
        for m in call::mups(block) {
            let v = self.expr(&m.value, &mut frame);
            if !matches!(v, Value::Int(_) | Value::Float(_) | Value::Poison) {
                self.error(
                    Code::TypeMismatch,
                    file,
                    m.value.span,
                    format!("multiplier `{}` must be a number, found {}", m.name.name, v.kind()),
                );
            }
            self.bind(&mut frame, &m.name, Value::Float(None), Binding::Mup);
        }
        for input in &block.inputs {
            let mut shape = Vec::new();
            for d in &input.ty.dims {
                match d {
                    TypeDim::Ellipsis(_) => shape.push(Dim::symbol("...")),
                    TypeDim::Expr(e) => match self.expr(e, &mut frame) {
                        Value::Int(dim) => shape.push(dim),
                        Value::Poison => shape.push(Dim::symbol("?")),
                        other => {
                            self.error(
                                Code::TypeMismatch,
                                file,
                                e.span,
                                format!("a dimension must be an int, found {}", other.kind()),
                            );
                            shape.push(Dim::symbol("?"));
                        }
                    },
                }
            }
            let t = self.new_tensor(shape, DType::F32);
            self.bind(&mut frame, &input.name, Value::Tensor(t), Binding::Input);
        }
        self.calls.push(id);
        let result = self.body(&block.body, block.body_end, &mut frame);
        self.calls.pop();
        self.check_return(block, result, &mut frame);
    }

    fn bind(&mut self, frame: &mut Frame, name: &Ident, value: Value, how: Binding) {
        if let Some((_, prev)) = frame.vars.get(&name.name) {
            let fixed = matches!(prev, Binding::Config | Binding::Mup | Binding::Param);
            if fixed || (how != Binding::Local && *prev != Binding::ShapeVar) {
                let what = match prev {
                    Binding::Config => "a config",
                    Binding::Mup => "a multiplier",
                    Binding::Param => "a parameter",
                    Binding::Input => "an input",
                    Binding::ShapeVar => "a dimension",
                    Binding::Local => "a local",
                };
                self.report(
                    Diagnostic::new(
                        Code::Rebinding,
                        frame.file,
                        name.span,
                        format!("`{}` is already {what} of this block", name.name),
                    )
                    .label("cannot be bound again")
                    .help("choose another name"),
                );
                return;
            }
        }
        frame.vars.insert(name.name.clone(), (value, how));
    }

    /// Runs statements; returns the value of the `return` statement.
    fn body(&mut self, stmts: &[Stmt], end: Span, frame: &mut Frame) -> Option<(Value, Span)> {
        let mut result = None;
        for (i, s) in stmts.iter().enumerate() {
            match &s.kind {
                StmtKind::Config(_) | StmtKind::Mup(_) => {}
                StmtKind::Return(e) => {
                    let v = self.expr(e, frame);
                    if i + 1 != stmts.len() {
                        self.report(
                            Diagnostic::new(
                                Code::MissingReturn,
                                frame.file,
                                stmts[i + 1].span,
                                "statement after `return`",
                            )
                            .label("never runs")
                            .help("`return` must be the last statement of a block"),
                        );
                    }
                    result = Some((v, e.span));
                    break;
                }
                _ => self.stmt(s, frame),
            }
        }
        if result.is_none() {
            self.report(
                Diagnostic::new(Code::MissingReturn, frame.file, end, "block has no `return`")
                    .label("the block ends here without returning a value")
                    .help("end the block with `return <expression>`"),
            );
        }
        result
    }

    fn stmt(&mut self, s: &Stmt, frame: &mut Frame) {
        match &s.kind {
            StmtKind::Param(p) => {
                let v = self.param(p, frame);
                self.bind(frame, &p.name, v, Binding::Param);
            }
            StmtKind::Let { targets, value } => {
                let v = self.expr(value, frame);
                match (targets.as_slice(), v) {
                    ([one], v) => self.bind(frame, one, v, Binding::Local),
                    (many, Value::Tuple(ts)) if ts.len() == many.len() => {
                        for (t, tensor) in many.iter().zip(ts) {
                            self.bind(frame, t, Value::Tensor(tensor), Binding::Local);
                        }
                    }
                    (many, v) => {
                        if v != Value::Poison {
                            let found = match &v {
                                Value::Tuple(ts) => format!("{} values", ts.len()),
                                other => format!("one {}", other.kind()),
                            };
                            self.report(
                                Diagnostic::new(
                                    Code::UnpackCount,
                                    frame.file,
                                    value.span,
                                    format!("{} names to bind but the value has {found}", many.len()),
                                )
                                .label("this value")
                                .help("bind as many names as the value has parts"),
                            );
                        }
                        for t in many {
                            self.bind(frame, t, Value::Poison, Binding::Local);
                        }
                    }
                }
            }
            StmtKind::Config(_) | StmtKind::Mup(_) | StmtKind::Return(_) => {}
        }
    }

    fn check_config_type(&mut self, v: &Value, ty: ScalarType, file: FileId, span: Span, name: &str) -> bool {
        let ok = matches!(
            (ty, v),
            (_, Value::Poison)
                | (ScalarType::Int, Value::Int(_))
                | (ScalarType::Float, Value::Float(_) | Value::Int(_))
                | (ScalarType::Bool, Value::Bool(_))
                | (ScalarType::String, Value::Str(_))
        );
        if !ok {
            self.report(
                Diagnostic::new(
                    Code::ConfigType,
                    file,
                    span,
                    format!("config `{name}` is {} but this is {}", ty.keyword(), v.kind()),
                )
                .label(format!("expected {}", ty.keyword())),
            );
        }
        ok
    }

    fn check_return(&mut self, block: &Block, result: Option<(Value, Span)>, frame: &mut Frame) -> Value {
        let Some((value, span)) = result else {
            return Value::Poison;
        };
        let Some(ret) = &block.ret else { return value };
        let tensors = match &value {
            Value::Tensor(t) => vec![t.clone()],
            Value::Tuple(ts) => ts.clone(),
            Value::Poison => return value,
            other => {
                return self.error(
                    Code::ReturnType,
                    frame.file,
                    span,
                    format!("block `{}` must return a tensor, found {}", block.name.name, other.kind()),
                );
            }
        };
        if tensors.len() != ret.len() {
            return self.error(
                Code::ReturnType,
                frame.file,
                span,
                format!(
                    "block `{}` declares {} return tensors but returns {}",
                    block.name.name,
                    ret.len(),
                    tensors.len()
                ),
            );
        }
        let mut mismatch = false;
        for (t, ty) in tensors.iter().zip(ret) {
            let want = self.type_shape(ty, frame);
            if let Some(want) = want {
                if !self.shape_matches(&t.shape, &want) {
                    mismatch = true;
                    self.report(
                        Diagnostic::new(
                            Code::ReturnType,
                            frame.file,
                            span,
                            format!(
                                "returns {} but `{}` declares {}",
                                shape_string(&t.shape),
                                block.name.name,
                                shape_string(&want)
                            ),
                        )
                        .label("returned here")
                        .with(frame.file, ty.span, "declared return type"),
                    );
                }
            }
        }
        // A value of the wrong shape would only cause follow-on errors at the caller.
        if mismatch {
            Value::Poison
        } else {
            value
        }
    }

    fn shape_matches(&self, got: &[Dim], want: &[Dim]) -> bool {
        if got.len() != want.len() {
            return !self.strict;
        }
        got.iter().zip(want).all(|(a, b)| !self.ctx().differ(a, b))
    }

    /// Evaluates a tensor type in the frame (`...` expands to the matched dims).
    fn type_shape(&mut self, ty: &TensorType, frame: &mut Frame) -> Option<Vec<Dim>> {
        let mut out = Vec::new();
        for d in &ty.dims {
            match d {
                TypeDim::Ellipsis(_) => out.extend(frame.ellipsis.clone().unwrap_or_else(|| vec![Dim::symbol("...")])),
                TypeDim::Expr(e) => match self.expr(e, frame) {
                    Value::Int(dim) => out.push(dim),
                    Value::Poison => return None,
                    other => {
                        self.error(
                            Code::TypeMismatch,
                            frame.file,
                            e.span,
                            format!("a dimension must be an int, found {}", other.kind()),
                        );
                        return None;
                    }
                },
            }
        }
        Some(out)
    }

    fn param(&mut self, p: &ParamDecl, frame: &mut Frame) -> Value {
        let file = frame.file;
        let shape = self.type_shape(&p.ty, frame);
        if let Some(TypeDim::Ellipsis(s)) = p.ty.dims.iter().find(|d| matches!(d, TypeDim::Ellipsis(_))) {
            return self.error(Code::TypeMismatch, file, *s, "a parameter's shape must list every dimension");
        }
        let role = match &p.role {
            None => crate::inits::Role::default_for_rank(p.ty.dims.len()),
            Some(r) => match crate::inits::Role::parse(&r.name) {
                Some(role) => role,
                None => {
                    self.report(
                        Diagnostic::new(Code::UnknownRole, file, r.span, format!("unknown µP role `{}`", r.name))
                            .label("not a role")
                            .help("roles are input, hidden, output and vector"),
                    );
                    crate::inits::Role::Hidden
                }
            },
        };
        let init = match &p.init {
            Some(c) => self.init_call(c, frame),
            None => Some(crate::trace::InitSpec { name: "normal", args: vec![("std", 0.02), ("mean", 0.0)] }),
        };
        let Some(shape) = shape else {
            return Value::Poison;
        };
        if self.strict {
            if let Some(bad) = shape.iter().find(|d| d.as_const().is_none_or(|c| c <= 0)) {
                return self.error(
                    Code::DimMismatch,
                    file,
                    p.ty.span,
                    format!("parameter `{}` needs positive known dimensions, found {bad}", p.name.name),
                );
            }
        }
        if !self.fits(&shape, file, p.ty.span, &format!("parameter `{}`", p.name.name))
            || !self.spend(file, p.name.span)
        {
            return Value::Poison;
        }
        let t = self.new_tensor(shape.clone(), DType::F32);
        if let Some(init) = init {
            let mut name = self.path.clone();
            name.push(p.name.name.clone());
            self.trace.ops.push(Op::Param {
                out: t.id,
                param: crate::trace::ParamInfo { name: name.join("."), shape, init, role },
            });
        }
        Value::Tensor(t)
    }

    fn init_call(&mut self, c: &Call, frame: &mut Frame) -> Option<crate::trace::InitSpec> {
        let Some(f) = crate::inits::init_fn(&c.callee.name) else {
            let names: Vec<&str> = crate::inits::INITS.iter().map(|i| i.name).collect();
            self.report(
                Diagnostic::new(
                    Code::UnknownInit,
                    frame.file,
                    c.callee.span,
                    format!("unknown initialiser `{}`", c.callee.name),
                )
                .label("not an initialiser")
                .help(format!("initialisers are {}", names.join(", "))),
            );
            return None;
        };
        let params: Vec<call::Slot> = f.params.iter().map(|(n, d)| call::Slot::scalar(n, d.is_some())).collect();
        let bound = self.bind_args(&params, &c.args, c, frame, &format!("initialiser `{}`", f.name))?;
        let mut args = Vec::new();
        let mut known = Vec::new();
        let mut spans = Vec::new();
        for ((name, default), got) in f.params.iter().zip(bound) {
            let (v, x) = match got {
                Some((v, span)) => {
                    spans.push((*name, span));
                    match v.as_f64() {
                        Some(x) => (x, Some(x)),
                        None if matches!(v, Value::Float(None) | Value::Int(_)) => (default.unwrap_or(0.0), None),
                        None => {
                            self.error(
                                Code::TypeMismatch,
                                frame.file,
                                span,
                                format!("`{name}` must be a number, found {}", v.kind()),
                            );
                            return None;
                        }
                    }
                }
                None => {
                    let d = default.expect("required slots are bound");
                    (d, Some(d))
                }
            };
            args.push((*name, v));
            known.push((*name, x));
        }
        if let Err((arg, message)) = crate::inits::check_args(f.name, &known) {
            let at = spans.iter().find(|(n, _)| *n == arg).map_or(c.span, |(_, s)| *s);
            self.report(
                Diagnostic::new(Code::InitRange, frame.file, at, format!("initialiser `{}`: {message}", f.name))
                    .label("out of range")
                    .with(frame.file, c.span, "in this initialiser"),
            );
            return None;
        }
        Some(crate::trace::InitSpec { name: f.name, args })
    }

    fn expr(&mut self, e: &Expr, frame: &mut Frame) -> Value {
        let file = frame.file;
        match e.kind.as_ref() {
            ExprKind::Int(v) => Value::Int(Dim::constant(*v)),
            ExprKind::Float(v) => Value::Float(Some(*v)),
            ExprKind::Bool(b) => Value::Bool(Some(*b)),
            ExprKind::Str(s) => Value::Str(Some(s.clone())),
            ExprKind::Name(n) => self.name(n, e.span, frame),
            ExprKind::List(items) => Value::List(items.iter().map(|i| self.expr(i, frame)).collect()),
            ExprKind::Paren(inner) => self.expr(inner, frame),
            ExprKind::Call(c) => self.call(c, frame),
            ExprKind::Unary(op, inner) => {
                let v = self.expr(inner, frame);
                match (op, v) {
                    (_, Value::Poison) => Value::Poison,
                    (UnaryOp::Neg, Value::Int(d)) => d.neg().map(Value::Int).unwrap_or(Value::Poison),
                    (UnaryOp::Neg, Value::Float(f)) => Value::Float(f.map(|x| -x)),
                    (UnaryOp::Neg, Value::Tensor(t)) => {
                        self.apply(self.prims.builtin("neg"), vec![Bound::Tensor(t)], file, e.span)
                    }
                    (UnaryOp::Not, Value::Bool(b)) => Value::Bool(b.map(|x| !x)),
                    (op, v) => {
                        let sym = if *op == UnaryOp::Neg { "-" } else { "!" };
                        self.error(
                            Code::TypeMismatch,
                            file,
                            e.span,
                            format!("`{sym}` cannot be applied to {}", v.kind()),
                        )
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let va = self.expr(a, frame);
                let vb = self.expr(b, frame);
                self.binary(*op, va, vb, a.span, b.span, file)
            }
            ExprKind::Index(base, items) => {
                let v = self.expr(base, frame);
                self.index(v, items, e.span, frame)
            }
            ExprKind::If(cond, then, otherwise) => {
                let c = self.expr(cond, frame);
                match c {
                    Value::Bool(Some(true)) => self.branch(then, frame),
                    Value::Bool(Some(false)) => self.branch(otherwise, frame),
                    Value::Bool(None) => {
                        let v = self.branch(then, frame);
                        self.branch(otherwise, frame);
                        v
                    }
                    Value::Poison => Value::Poison,
                    other => self.error(
                        Code::TypeMismatch,
                        file,
                        cond.span,
                        format!("condition must be a bool, found {}", other.kind()),
                    ),
                }
            }
        }
    }

    fn branch(&mut self, b: &Branch, frame: &mut Frame) -> Value {
        let saved = frame.vars.clone();
        for s in &b.stmts {
            match &s.kind {
                StmtKind::Return(_) | StmtKind::Config(_) | StmtKind::Mup(_) => {
                    self.report(
                        Diagnostic::new(Code::Syntax, frame.file, s.span, "this statement is not allowed inside `if`")
                            .label("only bindings and `param` declarations may appear here")
                            .help("declare configs and multipliers at the top of the block; the branch's value is its last expression"),
                    );
                }
                _ => self.stmt(s, frame),
            }
        }
        let v = self.expr(&b.value, frame);
        frame.vars = saved;
        v
    }

    fn name(&mut self, n: &str, span: Span, frame: &mut Frame) -> Value {
        if let Some(v) = frame.get(n) {
            return v.clone();
        }
        if let Some((_, kind)) = self.prog.lookup(frame.module, n) {
            let what = if kind == DefKind::Block { "a block; call it with arguments" } else { "a model" };
            return self.error(Code::TypeMismatch, frame.file, span, format!("`{n}` is {what}"));
        }
        let candidates: Vec<String> =
            frame.vars.keys().cloned().chain(self.prog.modules[frame.module].scope.keys().cloned()).collect();
        let mut d = Diagnostic::new(Code::UnknownName, frame.file, span, format!("unknown name `{n}`"))
            .label("not defined here");
        d = match suggest(n, candidates.iter().map(String::as_str)) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("define it with `name = …`, declare it as a config, or import the module that defines it"),
        };
        self.report(d);
        Value::Poison
    }

    fn binary(&mut self, op: BinOp, a: Value, b: Value, sa: Span, sb: Span, file: FileId) -> Value {
        use Value::*;
        let span = sa.to(sb);
        match (op, a, b) {
            (_, Poison, _) | (_, _, Poison) => Poison,
            (BinOp::And, Bool(x), Bool(y)) => Bool(match (x, y) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }),
            (BinOp::Or, Bool(x), Bool(y)) => Bool(match (x, y) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }),
            (BinOp::Eq | BinOp::Ne, x, y) if !matches!(x, Tensor(_)) && !matches!(y, Tensor(_)) => {
                let eq = match (&x, &y) {
                    (Int(p), Int(q)) => (p.is_const() && q.is_const() || p == q).then_some(p == q),
                    (Str(Some(p)), Str(Some(q))) => Some(p == q),
                    (Bool(Some(p)), Bool(Some(q))) => Some(p == q),
                    _ => match (x.as_f64(), y.as_f64()) {
                        (Some(p), Some(q)) => Some(p == q),
                        _ if x.kind() == y.kind() || matches!(x, Int(_) | Float(_)) => None,
                        _ => {
                            return self.error(
                                Code::TypeMismatch,
                                file,
                                span,
                                format!("cannot compare {} with {}", x.kind(), y.kind()),
                            )
                        }
                    },
                };
                Bool(if op == BinOp::Eq { eq } else { eq.map(|e| !e) })
            }
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, x @ (Int(_) | Float(_)), y @ (Int(_) | Float(_))) => {
                Bool(match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => Some(match op {
                        BinOp::Lt => p < q,
                        BinOp::Le => p <= q,
                        BinOp::Gt => p > q,
                        _ => p >= q,
                    }),
                    _ => None,
                })
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, Int(x), Int(y)) => {
                let r = match op {
                    BinOp::Add => x.add(&y),
                    BinOp::Sub => x.sub(&y),
                    BinOp::Mul => x.mul(&y),
                    _ if y.as_const() == Some(0) => {
                        return self.error(Code::BadDivision, file, sb, "division by zero");
                    }
                    _ => match x.div_exact(&y) {
                        Some(q) => Some(q),
                        None if x.is_const() && y.is_const() => {
                            self.report(
                                Diagnostic::new(
                                    Code::BadDivision,
                                    file,
                                    span,
                                    format!("{x} / {y} is not a whole number"),
                                )
                                .label("integer division must be exact")
                                .help("dimensions must divide evenly; write a float (`2.0`) for real division"),
                            );
                            return Poison;
                        }
                        None => Some(Dim::symbol(&format!("({x})/({y})"))),
                    },
                };
                match r {
                    Some(d) => Int(d),
                    None => self.error(Code::InvalidNumber, file, span, "integer overflow"),
                }
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, x @ (Int(_) | Float(_)), y @ (Int(_) | Float(_))) => {
                Float(match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => {
                        let r = (self.prims.builtin(arithmetic(op)).fold.expect("arithmetic folds"))(p, q);
                        if !r.is_finite() {
                            return self.error(
                                Code::BadDivision,
                                file,
                                span,
                                format!("{p} {} {q} is not finite", op.symbol()),
                            );
                        }
                        Some(r)
                    }
                    _ => None,
                })
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, x, y)
                if matches!(x, Tensor(_)) || matches!(y, Tensor(_)) =>
            {
                let prim = self.prims.builtin(arithmetic(op));
                let (ta, tb) = (self.operand(x, sa, file), self.operand(y, sb, file));
                match (ta, tb) {
                    (Some(ta), Some(tb)) => self.apply_spanned(prim, vec![(ta, sa), (tb, sb)], file, span),
                    _ => Poison,
                }
            }
            (BinOp::MatMul, Tensor(x), Tensor(y)) => self.apply_spanned(
                self.prims.builtin("matmul"),
                vec![
                    (Bound::Tensor(x), sa),
                    (Bound::Tensor(y), sb),
                    (Bound::Bool(Some(false)), span),
                    (Bound::Bool(Some(false)), span),
                ],
                file,
                span,
            ),
            (op, x, y) => self.error(
                Code::TypeMismatch,
                file,
                span,
                format!("`{}` cannot be applied to {} and {}", op.symbol(), x.kind(), y.kind()),
            ),
        }
    }

    /// A value used as an operand of a pointwise tensor op.
    fn operand(&mut self, v: Value, span: Span, file: FileId) -> Option<Bound> {
        match v {
            Value::Tensor(t) => Some(Bound::Tensor(t)),
            Value::Int(_) | Value::Float(_) => Some(Bound::Scalar(v.as_f64())),
            other => {
                self.error(
                    Code::TypeMismatch,
                    file,
                    span,
                    format!("expected a tensor or a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn apply(&mut self, prim: &'static Callable, args: Vec<Bound>, file: FileId, span: Span) -> Value {
        let spanned = args.into_iter().map(|a| (a, span)).collect();
        self.apply_spanned(prim, spanned, file, span)
    }

    /// Applies a primitive to bound arguments: runs its shape rule, folds scalars, records
    /// the op in the trace. Errors point at the argument the rule blames.
    fn apply_spanned(&mut self, prim: &'static Callable, args: Vec<(Bound, Span)>, file: FileId, span: Span) -> Value {
        if let Some(fold) = prim.fold.filter(|_| args.iter().all(|(a, _)| !matches!(a, Bound::Tensor(_)))) {
            let xs: Vec<Option<f64>> = args
                .iter()
                .map(|(a, _)| match a {
                    Bound::Scalar(x) => *x,
                    _ => None,
                })
                .collect();
            return Value::Float(match xs.as_slice() {
                [Some(a)] => Some(fold(*a, 0.0)),
                [Some(a), Some(b)] => Some(fold(*a, *b)),
                _ => None,
            });
        }
        // The model's own skeleton (outside every block) is a fixed handful of operations.
        if !self.calls.is_empty() && !self.spend(file, span) {
            return Value::Poison;
        }
        let rule_args: Vec<_> = args.iter().map(|(a, _)| a.rule_arg()).collect();
        match (prim.rule)(&rule_args, self.ctx()) {
            Ok(outs) => {
                if !outs.iter().all(|(s, _)| self.fits(s, file, span, &format!("the result of `{}`", prim.name))) {
                    return Value::Poison;
                }
                let tensors: Vec<Tensor> = outs.into_iter().map(|(s, d)| self.new_tensor(s, d)).collect();
                self.trace.ops.push(Op::Prim {
                    prim,
                    args: args.iter().map(|(a, _)| a.trace_arg()).collect(),
                    outs: tensors.iter().map(|t| t.id).collect(),
                    file,
                    span,
                });
                if prim.tuple {
                    Value::Tuple(tensors)
                } else {
                    Value::Tensor(tensors.into_iter().next().unwrap())
                }
            }
            Err(e) => {
                if e.rank && !self.strict {
                    return Value::Poison;
                }
                let at = args.get(e.arg).map_or(span, |(_, s)| *s);
                let code = if e.rank { Code::RankMismatch } else { Code::DimMismatch };
                let code = if e.message.starts_with("axis") {
                    Code::AxisRange
                } else if e.message.starts_with("slice ") {
                    Code::IndexRange
                } else if e.message.starts_with("unknown dtype") {
                    Code::UnknownDtype
                } else {
                    code
                };
                self.report(
                    Diagnostic::new(code, file, at, format!("{}: {}", prim.name, e.message))
                        .label("this argument")
                        .with(file, span, "in this operation"),
                );
                Value::Poison
            }
        }
    }

    fn index(&mut self, v: Value, items: &[IndexItem], span: Span, frame: &mut Frame) -> Value {
        let file = frame.file;
        let t = match v {
            Value::Tensor(t) => t,
            Value::Poison => return Value::Poison,
            other => {
                return self.error(
                    Code::TypeMismatch,
                    file,
                    span,
                    format!("only tensors can be indexed, found {}", other.kind()),
                )
            }
        };
        let rank = t.shape.len();
        let ellipses = items.iter().filter(|i| matches!(i, IndexItem::Ellipsis(_))).count();
        let explicit = items.len() - ellipses;
        if ellipses > 1 || explicit > rank {
            if !self.strict && ellipses <= 1 {
                return Value::Poison;
            }
            return self.error(
                Code::RankMismatch,
                file,
                span,
                format!("{} indices for a rank-{rank} tensor {}", explicit, shape_string(&t.shape)),
            );
        }
        let mut cur = Value::Tensor(t.clone());
        let mut squeeze = Vec::new();
        let mut axis = 0usize;
        for item in items {
            match item {
                IndexItem::Ellipsis(_) => axis += rank - explicit,
                IndexItem::At(e) => {
                    let i = self.expr(e, frame);
                    let Value::Int(i) = i else {
                        return self.error(
                            Code::TypeMismatch,
                            file,
                            e.span,
                            format!("an index must be an int, found {}", i.kind()),
                        );
                    };
                    let n = &t.shape[axis];
                    if let (Some(c), Some(len)) = (i.as_const(), n.as_const()) {
                        if c < -len || c >= len {
                            return self.out_of_range("index", c, axis, len, file, e.span);
                        }
                    }
                    // A negative index counts from the end, also of a dimension known only
                    // at run time (`x[:, -1]` is `x[:, T - 1]`).
                    let lo = match i.as_const() {
                        Some(c) if c < 0 => n.add(&i),
                        _ => Some(i.clone()),
                    };
                    let Some((lo, hi)) = lo.and_then(|lo| Some((lo.clone(), lo.add(&Dim::constant(1))?))) else {
                        return self.error(Code::InvalidNumber, file, e.span, "integer overflow");
                    };
                    cur = self.slice(cur, axis, lo, hi, e.span, file);
                    squeeze.push(axis);
                    axis += 1;
                }
                IndexItem::Slice(lo, hi, s) => {
                    let n = t.shape[axis].clone();
                    let mut bound = |b: &Option<Expr>, default: Dim, this: &mut Self| -> Option<Dim> {
                        let Some(b) = b else { return Some(default) };
                        match this.expr(b, frame) {
                            Value::Int(d) => {
                                if let (Some(c), Some(len)) = (d.as_const(), n.as_const()) {
                                    if c < -len || c > len {
                                        this.out_of_range("slice bound", c, axis, len, file, b.span);
                                        return None;
                                    }
                                }
                                match d.as_const() {
                                    Some(c) if c < 0 => {
                                        let from_end = n.add(&d);
                                        if from_end.is_none() {
                                            this.error(Code::InvalidNumber, file, b.span, "integer overflow");
                                        }
                                        from_end
                                    }
                                    _ => Some(d),
                                }
                            }
                            Value::Poison => None,
                            other => {
                                this.error(
                                    Code::TypeMismatch,
                                    file,
                                    b.span,
                                    format!("a slice bound must be an int, found {}", other.kind()),
                                );
                                None
                            }
                        }
                    };
                    let (Some(l), Some(h)) = (bound(lo, Dim::constant(0), self), bound(hi, n.clone(), self)) else {
                        return Value::Poison;
                    };
                    if !(lo.is_none() && hi.is_none()) {
                        cur = self.slice(cur, axis, l, h, *s, file);
                    }
                    axis += 1;
                }
            }
        }
        if squeeze.is_empty() {
            return cur;
        }
        let Value::Tensor(c) = &cur else { return cur };
        let shape: Vec<Dim> =
            c.shape.iter().enumerate().filter(|(i, _)| !squeeze.contains(i)).map(|(_, d)| d.clone()).collect();
        let c = c.clone();
        self.apply(self.prims.builtin("reshape"), vec![Bound::Tensor(c), Bound::Ints(shape)], file, span)
    }

    fn out_of_range(&mut self, what: &str, c: i64, axis: usize, len: i64, file: FileId, span: Span) -> Value {
        self.report(
            Diagnostic::new(
                Code::IndexRange,
                file,
                span,
                format!("{what} {c} is outside dimension {axis}, of size {len}"),
            )
            .label("out of range")
            .help(format!("a dimension of size {len} has indices 0 to {}; negative ones count from the end", len - 1)),
        );
        Value::Poison
    }

    fn slice(&mut self, v: Value, axis: usize, lo: Dim, hi: Dim, span: Span, file: FileId) -> Value {
        let Value::Tensor(t) = v else {
            return Value::Poison;
        };
        let args = vec![Bound::Tensor(t), Bound::Int(Dim::constant(axis as i64)), Bound::Int(lo), Bound::Int(hi)];
        self.apply(self.prims.builtin("slice"), args, file, span)
    }
}

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        if d <= 2.max(name.len() / 3) && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Bound {
    fn trace_arg(&self) -> TraceArg {
        match self {
            Bound::Tensor(t) => TraceArg::Tensor(t.id),
            Bound::Tensors(ts) => TraceArg::Tensors(ts.iter().map(|t| t.id).collect()),
            Bound::Scalar(x) => TraceArg::Scalar(x.unwrap_or(f64::NAN)),
            Bound::Int(d) => TraceArg::Int(d.clone()),
            Bound::Bool(b) => TraceArg::Bool(b.unwrap_or(false)),
            Bound::Str(s) => TraceArg::Str(s.clone().unwrap_or_default()),
            Bound::Ints(v) => TraceArg::Ints(v.clone()),
            Bound::Absent => TraceArg::Absent,
        }
    }
}

/// The primitive an arithmetic operator applies.
fn arithmetic(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "add",
        BinOp::Sub => "sub",
        BinOp::Mul => "mul",
        BinOp::Div => "div",
        _ => unreachable!("{} is not arithmetic", op.symbol()),
    }
}
