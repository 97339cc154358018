//! Calls: binding arguments to a primitive's or a block's slots, and instantiating a block
//! (unifying input shapes with its declared types, evaluating configs and multipliers).

use super::{suggest, Binding, Expander, Frame};
use crate::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::dim::Dim;
use crate::prims::{self, Callable, Kind};
use crate::resolve::{DefId, DefKind};
use crate::source::FileId;
use crate::value::{shape_string, Tensor, Value};
use std::collections::HashMap;

/// A primitive argument after binding and type checking.
pub(super) enum Bound {
    Tensor(Tensor),
    Tensors(Vec<Tensor>),
    Scalar(Option<f64>),
    Int(Dim),
    Bool(Option<bool>),
    Str(Option<String>),
    Ints(Vec<Dim>),
    Absent,
}

impl Bound {
    pub(super) fn rule_arg(&self) -> prims::Arg {
        match self {
            Bound::Tensor(t) => prims::Arg::Tensor(t.shape.clone(), t.dtype),
            Bound::Tensors(ts) => prims::Arg::Tensors(ts.iter().map(|t| (t.shape.clone(), t.dtype)).collect()),
            Bound::Scalar(x) => prims::Arg::Scalar(*x),
            Bound::Int(d) => prims::Arg::Int(d.clone()),
            Bound::Bool(b) => prims::Arg::Bool(*b),
            Bound::Str(s) => prims::Arg::Str(s.clone()),
            Bound::Ints(v) => prims::Arg::Ints(v.clone()),
            Bound::Absent => prims::Arg::Absent,
        }
    }
}

/// One argument slot of a callee.
pub(super) struct Slot {
    pub name: String,
    pub required: bool,
    /// Takes every positional argument (e.g. `concat`'s tensors).
    pub variadic: bool,
    /// Can only be given by name (multipliers, the parameter scope `name`).
    pub named_only: bool,
}

impl Slot {
    pub(super) fn scalar(name: &str, optional: bool) -> Slot {
        Slot { name: name.to_string(), required: !optional, variadic: false, named_only: false }
    }
}

/// A block's configs in declaration order: name, type, default.
pub(super) fn configs(block: &Block) -> Vec<(&Ident, ScalarType, Option<&Expr>)> {
    block
        .body
        .iter()
        .filter_map(|s| match &s.kind {
            StmtKind::Config(items) => Some(items.iter().map(|c| (&c.name, c.ty, c.default.as_ref()))),
            _ => None,
        })
        .flatten()
        .collect()
}

pub(super) fn mups(block: &Block) -> Vec<&MupItem> {
    block
        .body
        .iter()
        .filter_map(|s| match &s.kind {
            StmtKind::Mup(items) => Some(items.iter()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Arguments of a block instantiation, already evaluated.
pub(super) struct Given {
    pub inputs: Vec<Option<(Value, Span)>>,
    pub named: HashMap<String, (Value, Span)>,
    pub label: Option<String>,
}

impl<'p> Expander<'p> {
    /// Binds call arguments to slots; `None` if the call is malformed (already reported).
    pub(super) fn bind_args(
        &mut self,
        slots: &[Slot],
        args: &[Arg],
        call: &Call,
        frame: &mut Frame,
        what: &str,
    ) -> Option<Vec<Option<(Value, Span)>>> {
        let file = frame.file;
        let mut bound: Vec<Option<(Value, Span)>> = slots.iter().map(|_| None).collect();
        let mut ok = true;
        let positional_slots: Vec<usize> = (0..slots.len()).filter(|&i| !slots[i].named_only).collect();
        let mut next_pos = 0;
        let mut variadic: Vec<Tensor> = Vec::new();
        let mut variadic_span: Option<Span> = None;
        for a in args {
            match a {
                Arg::Positional(e) => {
                    let v = self.expr(e, frame);
                    match positional_slots.get(next_pos) {
                        Some(&i) if slots[i].variadic => {
                            match v {
                                Value::Tensor(t) => variadic.push(t),
                                Value::Poison => ok = false,
                                other => {
                                    self.error(
                                        Code::TypeMismatch,
                                        file,
                                        e.span,
                                        format!("{what} takes tensors here, found {}", other.kind()),
                                    );
                                    ok = false;
                                }
                            }
                            variadic_span = Some(variadic_span.map_or(e.span, |s| s.to(e.span)));
                        }
                        Some(&i) => {
                            bound[i] = Some((v, e.span));
                            next_pos += 1;
                        }
                        None => {
                            let n = positional_slots.len();
                            self.report(
                                Diagnostic::new(
                                    Code::WrongArity,
                                    file,
                                    e.span,
                                    format!(
                                        "too many arguments: {what} takes {n} positional argument{}",
                                        if n == 1 { "" } else { "s" }
                                    ),
                                )
                                .label("unexpected argument")
                                .help(format!(
                                    "{what} takes ({})",
                                    slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                                )),
                            );
                            ok = false;
                        }
                    }
                }
                Arg::Named(name, e) => {
                    let v = self.expr(e, frame);
                    match slots.iter().position(|s| s.name == name.name) {
                        Some(i) if bound[i].is_some() || (slots[i].variadic && variadic_span.is_some()) => {
                            self.report(
                                Diagnostic::new(
                                    Code::DuplicateArg,
                                    file,
                                    name.span,
                                    format!("argument `{}` is given twice", name.name),
                                )
                                .label("given again here")
                                .help("remove one of them"),
                            );
                            ok = false;
                        }
                        Some(i) => bound[i] = Some((v, name.span.to(e.span))),
                        None => {
                            let mut d = Diagnostic::new(
                                Code::UnknownNamedArg,
                                file,
                                name.span,
                                format!("{what} has no argument named `{}`", name.name),
                            )
                            .label("unknown argument");
                            d = match suggest(&name.name, slots.iter().map(|s| s.name.as_str())) {
                                Some(s) => d.help(format!("did you mean `{s}`?")),
                                None => d.help(format!(
                                    "its arguments are: {}",
                                    slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                                )),
                            };
                            self.report(d);
                            ok = false;
                        }
                    }
                }
            }
        }
        if let Some(i) = slots.iter().position(|s| s.variadic) {
            if let Some(span) = variadic_span {
                bound[i] = Some((Value::Tuple(variadic), span));
            }
        }
        for (slot, b) in slots.iter().zip(&bound) {
            if slot.required && b.is_none() && ok {
                self.report(
                    Diagnostic::new(
                        Code::MissingArg,
                        file,
                        call.span,
                        format!("{what} needs the argument `{}`", slot.name),
                    )
                    .label(format!("`{}` is missing", slot.name))
                    .help(format!("pass it positionally or as `{} = …`", slot.name)),
                );
                ok = false;
            }
        }
        ok.then_some(bound)
    }

    pub(super) fn call(&mut self, c: &Call, frame: &mut Frame) -> Value {
        let name = c.callee.name.as_str();
        if let Some(prim) = self.prims.callable(name) {
            return self.prim_call(prim, c, frame);
        }
        if let Some(what) = self.prims.internal(name) {
            self.report(
                Diagnostic::new(
                    Code::InternalPrimitive,
                    frame.file,
                    c.callee.span,
                    format!("`{name}` is internal to the compiler ({what}); a model cannot call it"),
                )
                .label("internal primitive")
                .help("the compiler inserts it where it is needed (gradients, tensor parallelism)"),
            );
            return Value::Poison;
        }
        match self.prog.lookup(frame.module, name) {
            Some((def, DefKind::Block)) => return self.block_call(def, c, frame),
            Some((_, DefKind::Model)) => {
                return self.error(
                    Code::TypeMismatch,
                    frame.file,
                    c.callee.span,
                    format!("`{name}` is a model; only blocks can be called"),
                );
            }
            None => {}
        }
        if crate::inits::init_fn(name).is_some() {
            return self.error(
                Code::TypeMismatch,
                frame.file,
                c.callee.span,
                format!("`{name}` is an initialiser; use it after `init` in a `param` declaration"),
            );
        }
        if name == "pattern" {
            return self.error(
                Code::TypeMismatch,
                frame.file,
                c.callee.span,
                "`pattern` describes a model's layers; use it as `layers = pattern(…)` in a model",
            );
        }
        let scope = &self.prog.modules[frame.module].scope;
        let candidates: Vec<&str> = scope.keys().map(String::as_str).chain(self.prims.names()).collect();
        let mut d = Diagnostic::new(
            Code::UnknownName,
            frame.file,
            c.callee.span,
            format!("unknown block or primitive `{name}`"),
        )
        .label("not defined");
        d = match suggest(name, candidates.into_iter()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("define the block, or import the module that defines it (e.g. `import std.nn`)"),
        };
        self.report(d);
        // Evaluate the arguments anyway so that mistakes inside them are reported too.
        for a in &c.args {
            match a {
                Arg::Positional(e) | Arg::Named(_, e) => {
                    self.expr(e, frame);
                }
            }
        }
        Value::Poison
    }

    fn prim_call(&mut self, prim: &'static Callable, c: &Call, frame: &mut Frame) -> Value {
        let sig = prim.signature;
        let slots: Vec<Slot> = sig
            .iter()
            .map(|p| Slot {
                name: p.name.to_string(),
                required: p.default == prims::Default::Required,
                variadic: p.kind == Kind::Tensors,
                named_only: false,
            })
            .collect();
        let what = format!("`{}`", prim.name);
        let Some(bound) = self.bind_args(&slots, &c.args, c, frame, &what) else {
            return Value::Poison;
        };
        let mut args = Vec::new();
        let mut poisoned = false;
        for (p, b) in sig.iter().zip(bound) {
            let (v, span) = match b {
                Some(vs) => vs,
                None => {
                    let d = match p.default {
                        prims::Default::Int(i) => Bound::Int(Dim::constant(i)),
                        prims::Default::Float(x) => Bound::Scalar(Some(x)),
                        prims::Default::Bool(b) => Bound::Bool(Some(b)),
                        prims::Default::Absent | prims::Default::Required => Bound::Absent,
                    };
                    args.push((d, c.span));
                    continue;
                }
            };
            if v == Value::Poison {
                poisoned = true;
                continue;
            }
            match to_bound(p.kind, v) {
                Ok(b) => args.push((b, span)),
                Err(found) => {
                    self.report(
                        Diagnostic::new(
                            Code::TypeMismatch,
                            frame.file,
                            span,
                            format!(
                                "argument `{}` of `{}` must be {}, found {found}",
                                p.name,
                                prim.name,
                                p.kind.describe()
                            ),
                        )
                        .label(format!("expected {}", p.kind.describe())),
                    );
                    poisoned = true;
                }
            }
        }
        if poisoned {
            return Value::Poison;
        }
        self.apply_spanned(prim, args, frame.file, c.span)
    }

    fn block_call(&mut self, def: DefId, c: &Call, frame: &mut Frame) -> Value {
        let block = self.prog.block(def);
        if self.calls.contains(&def) {
            let chain: Vec<String> = self.calls.iter().map(|d| self.prog.block(*d).name.name.clone()).collect();
            return self.error(
                Code::RecursiveBlock,
                frame.file,
                c.callee.span,
                format!("block `{}` calls itself (through {})", block.name.name, chain.join(" → ")),
            );
        }
        if self.calls.len() >= crate::parse::MAX_NESTING {
            return self.error(
                Code::RecursiveBlock,
                frame.file,
                c.callee.span,
                format!("block calls are nested more than {} deep", crate::parse::MAX_NESTING),
            );
        }
        let configs = configs(block);
        let mups = mups(block);
        let mut slots: Vec<Slot> = block.inputs.iter().map(|i| Slot::scalar(&i.name.name, false)).collect();
        slots.extend(configs.iter().map(|(n, _, d)| Slot::scalar(&n.name, d.is_some())));
        for m in &mups {
            slots.push(Slot { name: m.name.name.clone(), required: false, variadic: false, named_only: true });
        }
        slots.push(Slot { name: "name".into(), required: false, variadic: false, named_only: true });
        let what = format!("block `{}`", block.name.name);
        let Some(mut bound) = self.bind_args(&slots, &c.args, c, frame, &what) else {
            return Value::Poison;
        };
        let label = match bound.pop().flatten() {
            Some((Value::Str(Some(s)), _)) => Some(s),
            Some((v, span)) => {
                return self.error(
                    Code::TypeMismatch,
                    frame.file,
                    span,
                    format!("`name` must be a string, found {}", v.kind()),
                );
            }
            None => None,
        };
        let n_inputs = block.inputs.len();
        let named = slots[n_inputs..]
            .iter()
            .zip(bound.drain(n_inputs..))
            .filter_map(|(s, b)| b.map(|b| (s.name.clone(), b)))
            .collect();
        let given = Given { inputs: bound, named, label };
        self.instantiate(def, given, frame.file, c.span)
    }

    /// Runs a block with given arguments; `at` is where the instantiation was asked for.
    pub(super) fn instantiate(&mut self, def: DefId, given: Given, at_file: FileId, at: Span) -> Value {
        if !self.spend(at_file, at) {
            return Value::Poison;
        }
        let block = self.prog.block(def);
        let file = self.prog.file_of(def);
        let mut frame = Frame { module: def.module, file, vars: HashMap::new(), ellipsis: None };
        let configs = configs(block);
        let config_types: HashMap<&str, ScalarType> = configs.iter().map(|(n, t, _)| (n.name.as_str(), *t)).collect();

        for (name, ty, _) in &configs {
            if let Some((v, span)) = given.named.get(&name.name) {
                let v = if !self.check_arg_type(v, *ty, at_file, *span, &name.name) {
                    Value::Poison
                } else if *ty == ScalarType::Float {
                    Value::Float(v.as_f64())
                } else {
                    v.clone()
                };
                frame.vars.insert(name.name.clone(), (v, Binding::Config));
            }
        }

        let mut deferred = Vec::new();
        let mut inputs_ok = true;
        for (input, arg) in block.inputs.iter().zip(&given.inputs) {
            let Some((v, span)) = arg else { continue };
            let t = match v {
                Value::Tensor(t) => t.clone(),
                Value::Poison => {
                    inputs_ok = false;
                    continue;
                }
                other => {
                    self.error(
                        Code::TypeMismatch,
                        at_file,
                        *span,
                        format!(
                            "input `{}` of `{}` must be a tensor, found {}",
                            input.name.name,
                            block.name.name,
                            other.kind()
                        ),
                    );
                    inputs_ok = false;
                    continue;
                }
            };
            if !self.unify(&input.ty, &t, &config_types, &mut frame, &mut deferred, at_file, *span) {
                inputs_ok = false;
            }
            frame.vars.insert(input.name.name.clone(), (Value::Tensor(t), Binding::Input));
        }

        for (name, ty, default) in &configs {
            if frame.vars.get(&name.name).is_some_and(|(_, b)| *b == Binding::Config) {
                continue;
            }
            match default {
                Some(e) => {
                    let v = self.expr(e, &mut frame);
                    self.check_config_type(&v, *ty, file, e.span, &name.name);
                    let v = if *ty == ScalarType::Float && v != Value::Poison { Value::Float(v.as_f64()) } else { v };
                    frame.vars.insert(name.name.clone(), (v, Binding::Config));
                }
                None => {
                    self.report(
                        Diagnostic::new(
                            Code::MissingArg,
                            at_file,
                            at,
                            format!("block `{}` needs the config `{}`", block.name.name, name.name),
                        )
                        .label(format!("`{}` is not given", name.name))
                        .with(file, name.span, "declared here without a default")
                        .help(format!("pass `{} = …`", name.name)),
                    );
                    frame.vars.insert(name.name.clone(), (Value::Poison, Binding::Config));
                }
            }
        }

        for (ty_dim, actual, span) in deferred {
            let v = self.expr(ty_dim, &mut frame);
            if let Value::Int(want) = v {
                if self.ctx().differ(&want, &actual) {
                    self.report(
                        Diagnostic::new(
                            Code::DimMismatch,
                            at_file,
                            span,
                            format!("dimension is {actual} but `{}` expects {want}", block.name.name),
                        )
                        .label(format!("has {actual}"))
                        .with(file, ty_dim.span, format!("expects {want}")),
                    );
                }
            }
        }

        for m in mups(block) {
            let v = if let Some((v, _)) = given.named.get(&m.name.name) {
                v.clone()
            } else if let Some(x) = self.mup_overrides.iter().rev().find_map(|o| o.get(&m.name.name)) {
                Value::Float(Some(x.0))
            } else {
                self.expr(&m.value, &mut frame)
            };
            self.used_mups.insert(m.name.name.clone());
            if let Some(x) = v.as_f64() {
                self.mup_values.insert(m.name.name.clone(), x);
            }
            let v = match v {
                Value::Int(_) | Value::Float(_) => Value::Float(v.as_f64()),
                Value::Poison => Value::Poison,
                other => self.error(
                    Code::TypeMismatch,
                    file,
                    m.value.span,
                    format!("multiplier `{}` must be a number, found {}", m.name.name, other.kind()),
                ),
            };
            frame.vars.insert(m.name.name.clone(), (v, Binding::Mup));
        }

        if !inputs_ok {
            return Value::Poison;
        }
        if self.calls.is_empty() {
            self.layer_configs = configs
                .iter()
                .filter_map(|(n, _, _)| frame.get(&n.name).map(|v| (n.name.clone(), v.clone())))
                .collect();
        }
        // `name = ""` inlines the block's parameters into the caller's scope.
        let label = given.label.unwrap_or_else(|| block.name.name.clone());
        let scoped = !label.is_empty();
        if scoped {
            let counter = self.counters.last_mut().unwrap().entry(label.clone()).or_insert(0);
            self.path.push(if *counter == 0 { label.clone() } else { format!("{label}_{counter}") });
            *counter += 1;
            self.counters.push(HashMap::new());
        }
        self.calls.push(def);
        let result = self.body(&block.body, block.body_end, &mut frame);
        self.calls.pop();
        if scoped {
            self.counters.pop();
            self.path.pop();
        }
        self.check_return(block, result, &mut frame)
    }

    fn check_arg_type(&mut self, v: &Value, ty: ScalarType, file: FileId, span: Span, name: &str) -> bool {
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
                    Code::TypeMismatch,
                    file,
                    span,
                    format!("config `{name}` is {} but {} was given", ty.keyword(), v.kind()),
                )
                .label(format!("expected {}", ty.keyword())),
            );
        }
        ok && *v != Value::Poison
    }

    /// Matches a tensor against an input type, binding dimension names; complex dimension
    /// expressions are checked after configs are known (`deferred`).
    #[allow(clippy::too_many_arguments)]
    fn unify<'a>(
        &mut self,
        ty: &'a TensorType,
        t: &Tensor,
        configs: &HashMap<&str, ScalarType>,
        frame: &mut Frame,
        deferred: &mut Vec<(&'a Expr, Dim, Span)>,
        at_file: FileId,
        span: Span,
    ) -> bool {
        let file = frame.file;
        let ellipsis = ty.dims.iter().position(|d| matches!(d, TypeDim::Ellipsis(_)));
        let explicit = ty.dims.len() - usize::from(ellipsis.is_some());
        let rank = t.shape.len();
        let rank_ok = match ellipsis {
            Some(_) => rank >= explicit,
            None => rank == explicit,
        };
        if !rank_ok {
            if self.strict {
                self.report(
                    Diagnostic::new(
                        Code::RankMismatch,
                        at_file,
                        span,
                        format!(
                            "this tensor is {} but the input is declared {}",
                            shape_string(&t.shape),
                            type_text(ty)
                        ),
                    )
                    .label(format!("rank {rank}"))
                    .with(file, ty.span, "declared here"),
                );
            }
            return false;
        }
        let mut pairs: Vec<(&TypeDim, Dim)> = Vec::new();
        match ellipsis {
            Some(p) => {
                let tail = explicit - p;
                let matched = t.shape[p..rank - tail].to_vec();
                match &frame.ellipsis {
                    Some(prev)
                        if prev.len() != matched.len()
                            || prev.iter().zip(&matched).any(|(a, b)| self.ctx().differ(a, b)) =>
                    {
                        self.report(
                            Diagnostic::new(
                                Code::DimMismatch,
                                at_file,
                                span,
                                format!(
                                    "`...` matched {} for an earlier input but {} here",
                                    shape_string(prev),
                                    shape_string(&matched)
                                ),
                            )
                            .label("leading dimensions differ"),
                        );
                        return false;
                    }
                    _ => frame.ellipsis = Some(matched),
                }
                for (i, d) in ty.dims.iter().enumerate() {
                    if i < p {
                        pairs.push((d, t.shape[i].clone()));
                    } else if i > p {
                        pairs.push((d, t.shape[rank - (ty.dims.len() - i)].clone()));
                    }
                }
            }
            None => pairs.extend(ty.dims.iter().zip(t.shape.iter().cloned())),
        }
        let mut ok = true;
        for (d, actual) in pairs {
            let TypeDim::Expr(e) = d else { continue };
            let ExprKind::Name(n) = e.kind.as_ref() else {
                deferred.push((e, actual, span));
                continue;
            };
            match frame.vars.get(n) {
                Some((Value::Int(want), _)) => {
                    if self.ctx().differ(want, &actual) {
                        self.report(
                            Diagnostic::new(
                                Code::DimMismatch,
                                at_file,
                                span,
                                format!(
                                    "dimension `{n}` is {want} but this tensor has {actual} ({})",
                                    shape_string(&t.shape)
                                ),
                            )
                            .label(format!("{} here", shape_string(&t.shape)))
                            .with(file, e.span, format!("`{n}` = {want}")),
                        );
                        ok = false;
                    }
                }
                Some((Value::Poison, _)) => {}
                Some((other, _)) => {
                    let k = other.kind();
                    self.error(Code::TypeMismatch, file, e.span, format!("`{n}` is {k}, not a dimension"));
                    ok = false;
                }
                None => {
                    let how = match configs.get(n.as_str()) {
                        Some(ScalarType::Int) => Binding::Config,
                        Some(other) => {
                            self.error(
                                Code::TypeMismatch,
                                file,
                                e.span,
                                format!("config `{n}` is {}, not a dimension", other.keyword()),
                            );
                            ok = false;
                            continue;
                        }
                        None => Binding::ShapeVar,
                    };
                    frame.vars.insert(n.clone(), (Value::Int(actual), how));
                }
            }
        }
        ok
    }
}

fn to_bound(kind: Kind, v: Value) -> Result<Bound, &'static str> {
    Ok(match (kind, v) {
        (Kind::Tensor | Kind::OptTensor | Kind::TensorOrScalar, Value::Tensor(t)) => Bound::Tensor(t),
        (Kind::TensorOrScalar | Kind::Float, v @ (Value::Int(_) | Value::Float(_))) => Bound::Scalar(v.as_f64()),
        (Kind::Tensors, Value::Tuple(ts)) => Bound::Tensors(ts),
        (Kind::Int, Value::Int(d)) => Bound::Int(d),
        (Kind::Bool, Value::Bool(b)) => Bound::Bool(b),
        (Kind::Str, Value::Str(s)) => Bound::Str(s),
        (Kind::Ints, Value::List(items)) => {
            let mut dims = Vec::new();
            for i in items {
                match i {
                    Value::Int(d) => dims.push(d),
                    _ => return Err("a list with a non-int element"),
                }
            }
            Bound::Ints(dims)
        }
        (_, v) => return Err(v.kind()),
    })
}

fn type_text(ty: &TensorType) -> String {
    format!("with {} dimension{}", ty.dims.len(), if ty.dims.len() == 1 { "" } else { "s" })
}
