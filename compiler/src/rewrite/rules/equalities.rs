//! Plain equalities, as egg patterns with conditions. An e-graph's operators carry their
//! attributes (a transpose's axes, a reshape's target), so each pattern is instantiated for
//! the operators the e-graph holds when a phase starts; its condition reads the analysis.

use super::Rule;
use crate::ops::{Binary, Prim};
use crate::rewrite::lang::{Ctx, EGraph, ENode, OpKind};
use egg::{ConditionalApplier, ENodeOrVar, Id, Pattern, PatternAst, Rewrite, Subst, Var};

pub fn rules() -> Vec<Rule> {
    vec![
        Rule::equalities("transpose-cancel", transpose_cancel),
        Rule::equalities("reshape-fold", reshape_fold),
        Rule::equalities("broadcast-fold", broadcast_fold),
        Rule::equalities("scalar-identity", scalar_identity),
    ]
}

/// A pattern term: an operator (by its index in the analysis) over terms, or a variable.
enum Term {
    Op(u32, Vec<Term>),
    Var(&'static str),
}

fn op(id: u32, children: Vec<Term>) -> Term {
    Term::Op(id, children)
}

fn var(name: &'static str) -> Var {
    name.parse().expect("pattern variables start with ?")
}

fn pattern(t: &Term) -> Pattern<ENode> {
    fn add(t: &Term, ast: &mut PatternAst<ENode>) -> Id {
        match t {
            Term::Var(v) => ast.add(ENodeOrVar::Var(var(v))),
            Term::Op(id, children) => {
                let children = children.iter().map(|c| add(c, ast)).collect();
                ast.add(ENodeOrVar::ENode(ENode { op: *id, children }))
            }
        }
    }
    let mut ast = PatternAst::default();
    add(t, &mut ast);
    Pattern::new(ast)
}

/// `lhs = rhs` where `condition` holds of the match (its class and variables).
fn rewrite(
    name: &'static str,
    lhs: Term,
    rhs: Term,
    condition: impl Fn(&mut EGraph, Id, &Subst) -> bool + Send + Sync + 'static,
) -> Rewrite<ENode, Ctx> {
    let applier = ConditionalApplier { condition, applier: pattern(&rhs) };
    Rewrite::new(name, pattern(&lhs), applier).expect("the right side binds only the left side's variables")
}

/// The operators in the analysis applying primitives `pick` accepts, with what it picked.
fn ops<T>(ctx: &Ctx, pick: impl Fn(&Prim) -> Option<T>) -> Vec<(u32, T)> {
    ctx.ops
        .iter()
        .enumerate()
        .filter_map(|(i, k)| match k {
            OpKind::Prim(p) => pick(p).map(|t| (i as u32, t)),
            _ => None,
        })
        .collect()
}

fn always(_: &mut EGraph, _: Id, _: &Subst) -> bool {
    true
}

/// Whether variable `v` has the shape of the matched class.
fn same_shape(eg: &EGraph, class: Id, s: &Subst, v: Var) -> bool {
    eg[s[v]].data.ty.shape == eg[class].data.ty.shape
}

/// `transpose(transpose(x, i, j), i, j) = x`, however the axes are written.
fn transpose_cancel(name: &'static str, ctx: &Ctx) -> Vec<Rewrite<ENode, Ctx>> {
    let transposes = ops(ctx, |p| match p {
        Prim::Transpose(t) => Some(t.clone()),
        _ => None,
    });
    let mut out = Vec::new();
    for (outer, to) in &transposes {
        for (inner, ti) in &transposes {
            let (to, ti) = (to.clone(), ti.clone());
            let lhs = op(*outer, vec![op(*inner, vec![Term::Var("?x")])]);
            out.push(rewrite(name, lhs, Term::Var("?x"), move |eg, class, _| {
                let rank = eg[class].data.ty.shape.len();
                to.pair(rank) == ti.pair(rank)
            }));
        }
    }
    out
}

/// `view(x) = x` when the view keeps the shape; `view(view(x, s), t) = view(x, t)`: for the
/// views that only need the target shape (reshape, broadcast).
fn view_fold(name: &'static str, views: Vec<u32>) -> Vec<Rewrite<ENode, Ctx>> {
    let mut out = Vec::new();
    for &outer in &views {
        let keeps = op(outer, vec![Term::Var("?x")]);
        let x = var("?x");
        out.push(rewrite(name, keeps, Term::Var("?x"), move |eg, class, s| same_shape(eg, class, s, x)));
        for &inner in &views {
            let lhs = op(outer, vec![op(inner, vec![Term::Var("?x")])]);
            out.push(rewrite(name, lhs, op(outer, vec![Term::Var("?x")]), always));
        }
    }
    out
}

fn reshape_fold(name: &'static str, ctx: &Ctx) -> Vec<Rewrite<ENode, Ctx>> {
    let reshapes = ops(ctx, |p| matches!(p, Prim::Reshape(_)).then_some(()));
    view_fold(name, reshapes.into_iter().map(|(id, ())| id).collect())
}

fn broadcast_fold(name: &'static str, ctx: &Ctx) -> Vec<Rewrite<ENode, Ctx>> {
    let broadcasts = ops(ctx, |p| matches!(p, Prim::Broadcast(_)).then_some(()));
    view_fold(name, broadcasts.into_iter().map(|(id, ())| id).collect())
}

/// `x·1 = 1·x = x/1 = x + 0 = 0 + x = x − 0 = x`, when the scalar changes neither the shape
/// nor the dtype.
fn scalar_identity(name: &'static str, ctx: &Ctx) -> Vec<Rewrite<ENode, Ctx>> {
    let mut out = Vec::new();
    for (id, b) in ops(ctx, |p| match p {
        Prim::Binary(b @ (Binary::Mul | Binary::Div | Binary::Add | Binary::Sub)) => Some(*b),
        _ => None,
    }) {
        let unit = if matches!(b, Binary::Mul | Binary::Div) { 1.0 } else { 0.0 };
        let (x, c) = (var("?x"), var("?c"));
        let identity = move |eg: &mut EGraph, class: Id, s: &Subst| {
            let k = &eg[s[c]].data;
            k.ty.shape.is_empty() && k.constant == Some(unit) && eg[s[x]].data.ty == eg[class].data.ty
        };
        out.push(rewrite(name, op(id, vec![Term::Var("?x"), Term::Var("?c")]), Term::Var("?x"), identity));
        if matches!(b, Binary::Mul | Binary::Add) {
            out.push(rewrite(name, op(id, vec![Term::Var("?c"), Term::Var("?x")]), Term::Var("?x"), identity));
        }
    }
    out
}
