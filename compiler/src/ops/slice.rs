//! `slice` (a view of a range along one axis), its gradient `pad`, and `split`, which the
//! language offers and elaboration lowers to slices (so every node has one output).

use super::{axis, callable, first, Args, Class, Decl, Entry, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{opt, req, resolve_axis, Arg, Callable, Ctx, Default, Kind, Param, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    pub axis: i64,
    pub start: Dim,
    pub end: Dim,
}

/// Zero padding along one axis: the gradient of [`Slice`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pad {
    pub axis: i64,
    pub before: Dim,
    pub after: Dim,
}

const SPLIT: &[Param] = &[req("x", Kind::Tensor), req("sizes", Kind::Ints), opt("axis", Kind::Int, Default::Int(-1))];

pub(super) const DECLS: &[Decl] = &[
    callable!(
        "slice",
        &[req("x", Kind::Tensor), req("axis", Kind::Int), req("start", Kind::Int), req("end", Kind::Int)],
        |a: &Args| Ok(Prim::Slice(Slice { axis: a.known(1, "axis")?, start: a.int(2), end: a.int(3) }))
    ),
    Decl::Callable(Entry {
        call: Callable { name: "split", signature: SPLIT, rule: split, fold: None, tuple: true, heads: None },
        bind: None,
    }),
    Decl::Internal { name: "pad", what: "the gradient of `slice`" },
];

/// `split(x, sizes, axis)`: one output per size, which must add up to the axis.
fn split(args: &[Arg], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
    let (Arg::Tensor(s, d), Arg::Ints(sizes), Arg::Int(ax)) = (&args[0], &args[1], &args[2]) else {
        return Ok(Vec::new());
    };
    let axis = resolve_axis(ax, s.len(), 2)?;
    let mut total = Dim::constant(0);
    for sz in sizes {
        if sz.as_const().is_some_and(|c| c < 0) {
            return Err(RuleError::at(1, format!("split sizes must not be negative, got {sz}")));
        }
        total = total.add(sz).ok_or_else(|| RuleError::at(1, "split sizes overflow"))?;
    }
    if ctx.differ(&total, &s[axis]) {
        return Err(RuleError::at(
            1,
            format!("split sizes add up to {total} but dimension {axis} of {} is {}", shape_string(s), s[axis]),
        ));
    }
    Ok(sizes
        .iter()
        .map(|sz| {
            let mut o = s.clone();
            o[axis] = sz.clone();
            (o, *d)
        })
        .collect())
}

/// `x[start..end]` along `axis`, copied.
pub fn slice<T: Real>(x: &Tensor<T>, a: usize, start: usize, end: usize) -> Tensor<T> {
    let outer: usize = x.shape[..a].iter().product();
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * n + start) * inner..(o * n + end) * inner]);
    }
    let mut shape = x.shape.clone();
    shape[a] = end - start;
    Tensor::new(shape, data)
}

impl Slice {
    pub fn new(axis: usize, start: Dim, end: Dim) -> Slice {
        Slice { axis: axis as i64, start, end }
    }

    pub fn axis_of(&self, rank: usize) -> usize {
        axis(self.axis, rank)
    }
}

impl Primitive for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }

    fn class(&self) -> Class {
        Class::View
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (mut s, d) = first(inputs);
        let axis = resolve_axis(&Dim::constant(self.axis), s.len(), 1)?;
        let len = self.end.sub(&self.start).ok_or_else(|| RuleError::at(3, "slice bounds overflow"))?;
        // Out of range for every size of the symbols (`T - 1:T + 1`); the rest is checked
        // when the sizes are known (`reference::run`).
        let negative = |d: Option<Dim>| d.is_none_or(|d| d.as_const().is_some_and(|c| c < 0));
        if negative(Some(self.start.clone())) || negative(Some(len.clone())) || negative(s[axis].sub(&self.end)) {
            return Err(RuleError::at(
                3,
                format!("slice {}:{} is outside dimension {axis} of size {}", self.start, self.end, s[axis]),
            ));
        }
        s[axis] = len;
        Ok(vec![(s, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        let a = self.axis_of(x.rank());
        vec![slice(x, a, sizes.of(&self.start) as usize, sizes.of(&self.end) as usize)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let xs = g.shape(g.nodes[node].inputs[0]).to_vec();
        let after = xs[self.axis_of(xs.len())].sub(&self.end).expect("checked bounds");
        Ok(vec![Some(g.apply(Pad { axis: self.axis, before: self.start.clone(), after }, vec![dy]))])
    }

    /// The sliced axis stays whole, unless the slice is a section of a weight (then the
    /// section may be split on its own).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let x = g.nodes[y].inputs[0];
        let rank = g.nodes[y].ty.shape.len();
        let a = self.axis_of(rank);
        for k in (0..rank).filter(|&k| k != a) {
            ax.same(x, k, y, k);
        }
        if ax.sectioned[x] == Some(a) {
            for k in (0..rank).filter(|&k| k != a) {
                ax.block(ax.var(y, k));
            }
        } else {
            ax.block(ax.var(x, a));
            ax.block(ax.var(y, a));
        }
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }
}

impl Primitive for Pad {
    fn name(&self) -> &'static str {
        "pad"
    }

    fn class(&self) -> Class {
        Class::Movement
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (mut s, d) = first(inputs);
        let a = resolve_axis(&Dim::constant(self.axis), s.len(), 1)?;
        s[a] = s[a]
            .add(&self.before)
            .and_then(|x| x.add(&self.after))
            .ok_or_else(|| RuleError::at(2, "pad size overflows"))?;
        Ok(vec![(s, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        let a = axis(self.axis, x.rank());
        let (before, after) = (sizes.of(&self.before) as usize, sizes.of(&self.after) as usize);
        let outer: usize = x.shape[..a].iter().product();
        let n = x.shape[a];
        let inner: usize = x.shape[a + 1..].iter().product();
        let m = n + before + after;
        let mut data = vec![T::zero(); outer * m * inner];
        for o in 0..outer {
            data[(o * m + before) * inner..(o * m + before + n) * inner]
                .copy_from_slice(&x.data[o * n * inner..(o + 1) * n * inner]);
        }
        let mut shape = x.shape.clone();
        shape[a] = m;
        vec![Tensor::new(shape, data)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let xs = g.shape(g.nodes[node].inputs[0]).to_vec();
        let end = self.before.add(&xs[axis(self.axis, xs.len())]).expect("sizes add");
        Ok(vec![Some(g.apply(Slice { axis: self.axis, start: self.before.clone(), end }, vec![dy]))])
    }
}
