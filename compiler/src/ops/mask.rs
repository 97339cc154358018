//! `causal_mask` (−∞ above the diagonal of the last two axes: attention scores of future
//! keys) and its gradient `tril` (zeros there); for packed rows, `document_mask` and
//! `document_tril`, which also mask the keys of earlier documents (`ops::documents`).

use super::documents::{check_positions, starts};
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

/// `causal_mask` of scores `[B, heads…, T, T]` that also masks, for query `i`, every key
/// before the start of its document (inputs: the scores and `positions [B, T]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentMask;

/// The gradient of [`DocumentMask`]: zeros where it masks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentTril;

pub(super) const DECLS: &[Decl] = &[
    callable!("causal_mask", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::CausalMask(CausalMask)))
        .counting(Heads::Attention(heads_of_scores)),
    Decl::Internal { name: "tril", what: "the gradient of `causal_mask`" },
    Decl::Internal { name: "document_mask", what: "`causal_mask` within each document of a packed row" },
    Decl::Internal { name: "document_tril", what: "the gradient of `document_mask`" },
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
    fill_where(x, value, |_, i, j| j > i)
}

/// `x` with `value` wherever `masked(batch, row, column)` of its last two axes.
fn fill_where<T: Real>(x: &Tensor<T>, value: T, masked: impl Fn(usize, usize, usize) -> bool) -> Tensor<T> {
    let r = x.rank();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let per_batch = (x.data.len() / x.shape[0].max(1)).max(1);
    let mut out = x.clone();
    for (k, v) in out.data.iter_mut().enumerate() {
        if masked(k / per_batch, (k / cols) % rows, k % cols) {
            *v = value;
        }
    }
    out
}

/// Scores and positions: the square of the scores, and positions for its batch and time.
fn square_with_positions(name: &str, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
    let out = square(name, inputs)?;
    let s = &out[0].0;
    let t = &s[s.len() - 1];
    check_positions(inputs, 1, &s[0], t, ctx, name)?;
    Ok(out)
}

/// Fills `value` where query `i` may not see key `j`: `j > i`, or `j` before the start of
/// `i`'s document.
fn fill_outside_document<T: Real>(x: &Tensor<T>, positions: &Tensor<T>, value: T) -> Tensor<T> {
    let rows = x.shape[x.rank() - 2];
    let start = starts(positions);
    fill_where(x, value, |b, i, j| j > i || j < start[b * rows + i])
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

/// Positions follow the scores' batch; time stays whole.
fn document_axes(ax: &mut Axes, g: &Graph, y: NodeId) {
    square_axes(ax, g, y);
    let positions = g.nodes[y].inputs[1];
    ax.same(positions, 0, y, 0);
    ax.block(ax.var(positions, 1));
}

impl Primitive for DocumentMask {
    fn name(&self) -> &'static str {
        "document_mask"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        square_with_positions(self.name(), inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![fill_outside_document(inputs[0], inputs[1], T::neg_infinity())]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let positions = g.nodes[node].inputs[1];
        Ok(vec![Some(g.apply(DocumentTril, vec![dy, positions])), None])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        document_axes(ax, g, y)
    }
}

impl Primitive for DocumentTril {
    fn name(&self) -> &'static str {
        "document_tril"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        square_with_positions(self.name(), inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![fill_outside_document(inputs[0], inputs[1], T::zero())]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let positions = g.nodes[node].inputs[1];
        Ok(vec![Some(g.apply(DocumentTril, vec![dy, positions])), None])
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        document_axes(ax, g, y)
    }
}
