//! Reductions along one axis: `sum`, `max`, `mean`.

use super::{axis, callable, first, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{opt, req, resolve_axis, Ctx, Default, Kind, Param, RuleError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
    Mean,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reduce {
    pub op: ReduceOp,
    /// As written: negative counts from the last axis.
    pub axis: i64,
    pub keepdim: bool,
}

const SIGNATURE: &[Param] = &[
    req("x", Kind::Tensor),
    opt("axis", Kind::Int, Default::Int(-1)),
    opt("keepdim", Kind::Bool, Default::Bool(true)),
];

fn bind(op: ReduceOp, a: &Args) -> Result<Prim, RuleError> {
    Ok(Prim::Reduce(Reduce {
        op,
        axis: a.known(1, "axis")?,
        keepdim: !matches!(a.0[2], hyb_dsl::prims::Arg::Bool(Some(false))),
    }))
}

pub(super) const DECLS: &[Decl] = &[
    callable!("sum", SIGNATURE, |a| bind(ReduceOp::Sum, a)),
    callable!("max", SIGNATURE, |a| bind(ReduceOp::Max, a)),
    callable!("mean", SIGNATURE, |a| bind(ReduceOp::Mean, a)),
];

impl Reduce {
    /// The reduced axis of a rank-`rank` input.
    pub fn axis_of(&self, rank: usize) -> usize {
        axis(self.axis, rank)
    }
}

impl Primitive for Reduce {
    fn name(&self) -> &'static str {
        match self.op {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Mean => "mean",
        }
    }

    fn class(&self) -> Class {
        Class::Reduction
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (mut s, d) = first(inputs);
        let a = resolve_axis(&Dim::constant(self.axis), s.len(), 1)?;
        if self.keepdim {
            s[a] = Dim::constant(1);
        } else {
            s.remove(a);
        }
        Ok(vec![(s, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        let a = self.axis_of(x.rank());
        let outer: usize = x.shape[..a].iter().product();
        let n = x.shape[a];
        let inner: usize = x.shape[a + 1..].iter().product();
        let mut data = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let vals = (0..n).map(|k| x.data[(o * n + k) * inner + i]);
                data.push(match self.op {
                    ReduceOp::Sum => vals.fold(T::zero(), |s, v| s + v),
                    ReduceOp::Mean => vals.fold(T::zero(), |s, v| s + v) / T::of(n as f64),
                    ReduceOp::Max => vals.fold(T::neg_infinity(), |m, v| m.max(v)),
                });
            }
        }
        let mut shape = x.shape.clone();
        if self.keepdim {
            shape[a] = 1;
        } else {
            shape.remove(a);
        }
        vec![Tensor::new(shape, data)]
    }

    /// The output gradient spread back over the reduced axis (for `max`, onto the elements
    /// equal to the maximum).
    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let x = g.nodes[node].inputs[0];
        let xs = g.shape(x).to_vec();
        let a = self.axis_of(xs.len());
        let mut kept = xs.clone();
        kept[a] = Dim::constant(1);
        let dyk = if self.keepdim { dy } else { g.reshape(dy, kept.clone()) };
        let spread = g.broadcast(dyk, xs.clone());
        let dx = match self.op {
            ReduceOp::Sum => spread,
            ReduceOp::Mean => {
                let n = xs[a].as_const().expect("mean over a known dimension");
                g.scale(spread, 1.0 / n as f64)
            }
            ReduceOp::Max => {
                let yk = if self.keepdim { node } else { g.reshape(node, kept) };
                let yb = g.broadcast(yk, xs);
                let gap = g.binary(super::Binary::Sub, yb, x);
                let below = g.unary(super::Unary::Step, gap);
                let one = g.constant(1.0);
                let at_max = g.binary(super::Binary::Sub, one, below);
                g.binary(super::Binary::Mul, spread, at_max)
            }
        };
        Ok(vec![Some(dx)])
    }

    /// A sum splits into partial sums freely; a maximum's axis must stay whole.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, node: NodeId) {
        let x = g.nodes[node].inputs[0];
        let r = g.nodes[x].ty.shape.len();
        let a = self.axis_of(r);
        for k in 0..r {
            if k == a {
                if self.op == ReduceOp::Max {
                    ax.block(ax.var(x, k));
                }
            } else {
                ax.same(x, k, node, if self.keepdim || k < a { k } else { k - 1 });
            }
        }
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        self.op != ReduceOp::Max && partial == [true]
    }

    /// Reducing any axis but batch and time keeps tokens apart.
    fn per_token(&self, g: &Graph, node: NodeId) -> bool {
        let rank = g.nodes[node].ty.shape.len() as i64;
        self.axis != 1 && self.axis != 0 && self.axis != -(rank - 1)
    }
}
