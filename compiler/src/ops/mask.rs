//! `causal_mask` (−∞ above the diagonal of the last two axes: attention scores of future
//! keys) and its gradient `tril` (zeros there).

use super::{callable, first, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{req, Ctx, Heads, Kind, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CausalMask;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tril;

pub(super) const DECLS: &[Decl] = &[
    callable!("causal_mask", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::CausalMask(CausalMask)))
        .counting(Heads::Attention(heads_of_scores)),
    Decl::Internal { name: "tril", what: "the gradient of `causal_mask`" },
];

/// Attention scores `[B, heads…, T, T]` mix the heads between batch and the square.
fn heads_of_scores(scores: &[Dim]) -> u64 {
    let inner = scores.get(1..scores.len().saturating_sub(2)).unwrap_or(&[]);
    inner.iter().filter_map(|d| d.as_const()).map(|c| c as u64).product()
}

fn square(name: &str, inputs: &[Ty]) -> Result<Vec<Ty>, RuleError> {
    let (s, d) = first(inputs);
    if s.len() < 2 {
        return Err(RuleError::rank(0, format!("{name} needs at least 2 dims, got {}", shape_string(&s))));
    }
    Ok(vec![(s, d)])
}

fn fill_above_diagonal<T: Real>(x: &Tensor<T>, value: T) -> Tensor<T> {
    let r = x.rank();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        if i % cols > (i / cols) % rows {
            *v = value;
        }
    }
    out
}

/// Leading axes split; the square of the last two stays whole.
fn square_axes(ax: &mut Axes, g: &Graph, y: NodeId) {
    let x = g.nodes[y].inputs[0];
    let rank = g.nodes[y].ty.shape.len();
    for k in 0..rank {
        ax.same(x, k, y, k);
    }
    for k in rank - 2..rank {
        ax.block(ax.var(y, k));
    }
}

impl Primitive for CausalMask {
    fn name(&self) -> &'static str {
        "causal_mask"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        square(self.name(), inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![fill_above_diagonal(inputs[0], T::neg_infinity())]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(Tril, vec![dy]))])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        square_axes(ax, g, y)
    }
}

impl Primitive for Tril {
    fn name(&self) -> &'static str {
        "tril"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        square(self.name(), inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![fill_above_diagonal(inputs[0], T::zero())]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(Tril, vec![dy]))])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        square_axes(ax, g, y)
    }
}
