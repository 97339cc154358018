//! Views that reinterpret indices without arithmetic: `reshape`, `permute`, `transpose`,
//! `broadcast`. Their readers read through strides; the reference copies.

use super::{axis, callable, first, unbroadcast, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{opt, req, resolve_axis, Ctx, Default, Kind, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reshape {
    /// The target; at most one `-1` stands for what the other dimensions leave.
    pub shape: Vec<Dim>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permute {
    pub dims: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transpose {
    pub dim0: i64,
    pub dim1: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Broadcast {
    pub shape: Vec<Dim>,
}

pub(super) const DECLS: &[Decl] = &[
    callable!("reshape", &[req("x", Kind::Tensor), req("shape", Kind::Ints)], |a| {
        Ok(Prim::Reshape(Reshape { shape: a.ints(1) }))
    }),
    callable!("permute", &[req("x", Kind::Tensor), req("dims", Kind::Ints)], |a| {
        let dims = a.ints(1).iter().map(|d| d.as_const()).collect::<Option<Vec<i64>>>();
        let dims = dims.ok_or_else(|| RuleError::at(1, "permute's dims must be known integers"))?;
        Ok(Prim::Permute(Permute { dims }))
    }),
    callable!(
        "transpose",
        &[req("x", Kind::Tensor), opt("dim0", Kind::Int, Default::Int(-2)), opt("dim1", Kind::Int, Default::Int(-1))],
        |a| Ok(Prim::Transpose(Transpose { dim0: a.known(1, "axis")?, dim1: a.known(2, "axis")? }))
    ),
    callable!("broadcast", &[req("x", Kind::Tensor), req("shape", Kind::Ints)], |a| {
        Ok(Prim::Broadcast(Broadcast { shape: a.ints(1) }))
    }),
];

/// Whether axis 1 of a shape is time (work that keeps it treats tokens alike).
pub(crate) fn keeps_time(shape: &[Dim]) -> bool {
    shape.len() >= 2 && shape[1] == Dim::symbol("T")
}

impl Primitive for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }

    fn class(&self) -> Class {
        Class::View
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (s, d) = first(inputs);
        let target = &self.shape;
        let product = |dims: &[Dim]| dims.iter().try_fold(Dim::constant(1), |acc, x| acc.mul(x));
        let total = product(&s).ok_or_else(|| RuleError::at(1, "shape size overflows"))?;
        let holes: Vec<usize> = (0..target.len()).filter(|&i| target[i].as_const() == Some(-1)).collect();
        let mut out = target.clone();
        match holes.as_slice() {
            [] => {
                let want = product(target).ok_or_else(|| RuleError::at(1, "shape size overflows"))?;
                if ctx.differ(&total, &want) {
                    return Err(RuleError::at(
                        1,
                        format!(
                            "cannot reshape {} ({total} elements) to {} ({want} elements)",
                            shape_string(&s),
                            shape_string(target)
                        ),
                    ));
                }
            }
            [h] => {
                let rest: Vec<Dim> =
                    target.iter().enumerate().filter(|(i, _)| i != h).map(|(_, d)| d.clone()).collect();
                let known = product(&rest).ok_or_else(|| RuleError::at(1, "shape size overflows"))?;
                out[*h] = match total.div_exact(&known) {
                    Some(q) => q,
                    None if ctx.strict => {
                        return Err(RuleError::at(
                            1,
                            format!(
                                "cannot reshape {} to {}: {total} is not divisible by {known}",
                                shape_string(&s),
                                shape_string(target)
                            ),
                        ))
                    }
                    None => Dim::symbol("?"),
                };
            }
            _ => return Err(RuleError::at(1, "reshape allows at most one -1")),
        }
        if out.iter().any(|x| x.as_const().is_some_and(|c| c < 0)) {
            return Err(RuleError::at(1, format!("negative dimension in reshape target {}", shape_string(target))));
        }
        Ok(vec![(out, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        let target: Vec<i64> = self.shape.iter().map(|d| sizes.of(d)).collect();
        let known: i64 = target.iter().filter(|&&d| d >= 0).product();
        let shape = target.iter().map(|&d| if d < 0 { x.len() / known as usize } else { d as usize }).collect();
        vec![Tensor::new(shape, x.data.clone())]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let xs = g.shape(g.nodes[node].inputs[0]).to_vec();
        Ok(vec![Some(g.reshape(dy, xs))])
    }

    /// A reshape maps groups of input axes to groups of output axes with equal products.
    /// A one-to-one group unifies; a merge or split unifies its major (outermost non-unit)
    /// axes — splitting `heads · head_dim` contiguously is splitting `heads` — and blocks
    /// the rest. Grouped-query heads expanded from fewer key/value heads than ranks
    /// (`[kv, g] → [heads]` of a broadcast along `g`) link the two instead: each rank keeps
    /// the one key/value head its query heads read.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let x = g.nodes[y].inputs[0];
        let ranks = ax.ranks;
        let (xs, ys) = (g.nodes[x].ty.shape.clone(), g.nodes[y].ty.shape.clone());
        let (mut i, mut j) = (0, 0);
        while i < xs.len() || j < ys.len() {
            let (gi, gj) = (i, j);
            let (mut px, mut py) = (Dim::constant(1), Dim::constant(1));
            if i < xs.len() {
                px = px.mul(&xs[i]).unwrap_or_default();
                i += 1;
            }
            if j < ys.len() {
                py = py.mul(&ys[j]).unwrap_or_default();
                j += 1;
            }
            while px != py {
                let x_smaller = match (px.as_const(), py.as_const()) {
                    (Some(a), Some(b)) => a < b,
                    _ => true,
                };
                if (x_smaller || j >= ys.len()) && i < xs.len() {
                    px = px.mul(&xs[i]).unwrap_or_default();
                    i += 1;
                } else if j < ys.len() {
                    py = py.mul(&ys[j]).unwrap_or_default();
                    j += 1;
                } else {
                    break;
                }
            }
            if px != py {
                for k in gi..xs.len() {
                    ax.block(ax.var(x, k));
                }
                for k in gj..ys.len() {
                    ax.block(ax.var(y, k));
                }
                return;
            }
            let major = |s: &[Dim], from: usize, to: usize| (from..to).find(|&k| s[k].as_const() != Some(1));
            let (mx, my) = (major(&xs, gi, i), major(&ys, gj, j));
            if let (Some(a), Some(b)) = (mx, my) {
                let kv = xs[a].as_const().filter(|&kv| kv % ranks != 0 && ranks % kv == 0);
                match kv.filter(|_| i - gi == 2 && j - gj == 1 && a == gi && expands(g, x, a + 1)) {
                    Some(kv) => ax.link(ax.var(x, a), ax.var(y, b), kv),
                    None => ax.same(x, a, y, b),
                }
                for k in (gi..i).filter(|&k| k != a) {
                    ax.block(ax.var(x, k));
                }
                for k in (gj..j).filter(|&k| k != b) {
                    ax.block(ax.var(y, k));
                }
            }
        }
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }

    fn per_token(&self, g: &Graph, node: NodeId) -> bool {
        g.nodes[node].inputs.iter().all(|&x| keeps_time(&g.nodes[x].ty.shape))
    }
}

/// Whether `x` is a broadcast that expands its input's unit axis `axis` (the copies of
/// a key/value head its query heads share).
pub(crate) fn expands(g: &Graph, x: NodeId, axis: usize) -> bool {
    let n = &g.nodes[x];
    matches!(n.op, crate::ir::Op::Prim(Prim::Broadcast(_)))
        && g.nodes[n.inputs[0]].ty.shape.len() == n.ty.shape.len()
        && g.nodes[n.inputs[0]].ty.shape[axis].as_const() == Some(1)
}

/// The permutation `perm` of `x`'s axes, copied.
fn permute<T: Real>(x: &Tensor<T>, perm: &[usize]) -> Tensor<T> {
    let r = x.rank();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let src = x.strides();
    let mut data = Vec::with_capacity(x.len());
    let mut idx = vec![0usize; r];
    for _ in 0..x.len() {
        let at: usize = (0..r).map(|d| idx[d] * src[perm[d]]).sum();
        data.push(x.data[at]);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::new(shape, data)
}

/// Output axis `k` is input axis `perm[k]`.
fn permuted_axes(ax: &mut Axes, g: &Graph, y: NodeId, perm: &[usize]) {
    let x = g.nodes[y].inputs[0];
    for (k, &p) in perm.iter().enumerate() {
        ax.same(x, p, y, k);
    }
}

impl Permute {
    fn perm(&self, rank: usize) -> Vec<usize> {
        self.dims.iter().map(|&p| axis(p, rank)).collect()
    }
}

impl Primitive for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }

    fn class(&self) -> Class {
        Class::View
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (s, d) = first(inputs);
        if self.dims.len() != s.len() {
            return Err(RuleError::rank(
                1,
                format!("permute of a rank-{} tensor needs {} dims, got {}", s.len(), s.len(), self.dims.len()),
            ));
        }
        let mut seen = vec![false; s.len()];
        let mut out = Vec::new();
        for &p in &self.dims {
            let a = resolve_axis(&Dim::constant(p), s.len(), 1)?;
            if std::mem::replace(&mut seen[a], true) {
                return Err(RuleError::at(1, format!("axis {a} appears twice in the permutation")));
            }
            out.push(s[a].clone());
        }
        Ok(vec![(out, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![permute(inputs[0], &self.perm(inputs[0].rank()))]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let r = g.shape(node).len();
        let mut inverse = vec![0i64; r];
        for (i, p) in self.perm(r).into_iter().enumerate() {
            inverse[p] = i as i64;
        }
        Ok(vec![Some(g.apply(Permute { dims: inverse }, vec![dy]))])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        permuted_axes(ax, g, y, &self.perm(g.nodes[y].ty.shape.len()));
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }
}

impl Transpose {
    fn perm(&self, rank: usize) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(axis(self.dim0, rank), axis(self.dim1, rank));
        perm
    }

    /// The two axes it swaps, smaller first.
    pub fn pair(&self, rank: usize) -> (usize, usize) {
        let (i, j) = (axis(self.dim0, rank), axis(self.dim1, rank));
        (i.min(j), i.max(j))
    }
}

impl Primitive for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn class(&self) -> Class {
        Class::View
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (mut s, d) = first(inputs);
        let a = resolve_axis(&Dim::constant(self.dim0), s.len(), 1)?;
        let b = resolve_axis(&Dim::constant(self.dim1), s.len(), 2)?;
        s.swap(a, b);
        Ok(vec![(s, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![permute(inputs[0], &self.perm(inputs[0].rank()))]
    }

    fn vjp(&self, g: &mut Graph, _node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(self.clone(), vec![dy]))])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        permuted_axes(ax, g, y, &self.perm(g.nodes[y].ty.shape.len()));
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }
}

impl Primitive for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast"
    }

    fn class(&self) -> Class {
        Class::View
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (s, d) = first(inputs);
        let target = &self.shape;
        if s.len() > target.len() {
            return Err(RuleError::rank(
                1,
                format!("cannot broadcast {} to the lower rank {}", shape_string(&s), shape_string(target)),
            ));
        }
        let offset = target.len() - s.len();
        for (i, dim) in s.iter().enumerate() {
            if dim.as_const() != Some(1) && ctx.differ(dim, &target[offset + i]) {
                return Err(RuleError::at(
                    1,
                    format!("cannot broadcast {} to {}", shape_string(&s), shape_string(target)),
                ));
            }
        }
        Ok(vec![(target.clone(), d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].broadcast_to(&sizes.all(&self.shape))]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let xs = g.shape(g.nodes[node].inputs[0]).to_vec();
        Ok(vec![Some(unbroadcast(g, dy, &xs))])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        ax.aligned(g, g.nodes[y].inputs[0], y);
    }

    fn per_token(&self, g: &Graph, node: NodeId) -> bool {
        g.nodes[node].inputs.iter().all(|&x| keeps_time(&g.nodes[x].ty.shape))
    }
}
