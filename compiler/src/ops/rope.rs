//! `rope`: rotary position embedding on `[B, T, heads, head_dim]` (position = index along
//! time) in the "rotate half" layout, and its gradient `rope_grad`, the rotation by minus
//! the angle (its transpose and inverse); for packed rows, `document_rope` and its
//! gradient, the position being the token's place in its document (`ops::documents`).

use super::documents::{check_positions, starts};
use super::{callable, first, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty, F64};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::prims::{req, Ctx, Kind, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rope {
    pub theta: F64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RopeGrad {
    pub theta: F64,
}

/// `rope` of inputs `(x [B, T, heads, head_dim], positions [B, T])`, each token rotated by
/// its place in its document.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentRope {
    pub theta: F64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentRopeGrad {
    pub theta: F64,
}

pub(super) const DECLS: &[Decl] = &[
    callable!("rope", &[req("x", Kind::Tensor), req("theta", Kind::Float)], |a: &Args| {
        Ok(Prim::Rope(Rope { theta: a.float(1) }))
    }),
    Decl::Internal { name: "rope_grad", what: "the gradient of `rope`" },
    Decl::Internal { name: "document_rope", what: "`rope` by each token's place in its document" },
    Decl::Internal { name: "document_rope_grad", what: "the gradient of `document_rope`" },
];

pub(super) fn check(inputs: &[Ty]) -> Result<Vec<Ty>, RuleError> {
    let (s, d) = first(inputs);
    if s.len() != 4 {
        return Err(RuleError::rank(0, format!("rope takes [B, T, heads, head_dim], got {}", shape_string(&s))));
    }
    if s[3].as_const().is_some_and(|n| n % 2 != 0) {
        return Err(RuleError::at(0, format!("rope needs an even head dimension, got {}", s[3])));
    }
    Ok(vec![(s, d)])
}

/// Rotates each (j, j + D/2) pair by `direction ·` its angle `t · theta^(-2j/D)`.
fn rotate<T: Real>(x: &Tensor<T>, theta: f64, direction: f64) -> Tensor<T> {
    rotate_from(x, theta, direction, 0)
}

/// [`rotate`] with token `t` at position `start + t` (a decode step's tokens).
pub(super) fn rotate_from<T: Real>(x: &Tensor<T>, theta: f64, direction: f64, start: usize) -> Tensor<T> {
    rotate_at(x, theta, direction, &|_, ti| start + ti)
}

/// [`rotate`] with each token in a packed row at its place in its document.
fn rotate_in_documents<T: Real>(x: &Tensor<T>, positions: &Tensor<T>, theta: f64, direction: f64) -> Tensor<T> {
    let (t, start) = (x.shape[1], starts(positions));
    rotate_at(x, theta, direction, &|bi, ti| ti - start[bi * t + ti])
}

/// Rotates token `(b, t)` by the angle of position `at(b, t)`.
fn rotate_at<T: Real>(x: &Tensor<T>, theta: f64, direction: f64, at: &dyn Fn(usize, usize) -> usize) -> Tensor<T> {
    let (b, t, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let half = d / 2;
    let mut out = Tensor::zeros(x.shape.clone());
    for ti in 0..t {
        for j in 0..half {
            let frequency = theta.powf(-(2.0 * j as f64) / d as f64);
            for bi in 0..b {
                let angle = direction * at(bi, ti) as f64 * frequency;
                let (sin, cos) = (T::of(angle.sin()), T::of(angle.cos()));
                for hi in 0..h {
                    let base = ((bi * t + ti) * h + hi) * d;
                    let (x1, x2) = (x.data[base + j], x.data[base + j + half]);
                    out.data[base + j] = x1 * cos - x2 * sin;
                    out.data[base + j + half] = x2 * cos + x1 * sin;
                }
            }
        }
    }
    out
}

impl Primitive for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        check(inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![rotate(inputs[0], self.theta.0, 1.0)]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(RopeGrad { theta: self.theta }, vec![dy]))])
    }

    /// The rotation pairs make head_dim whole; heads and batch split.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let x = g.nodes[y].inputs[0];
        let rank = g.nodes[y].ty.shape.len();
        for k in 0..rank {
            ax.same(x, k, y, k);
        }
        ax.block(ax.var(y, rank - 1));
    }
}

impl Primitive for RopeGrad {
    fn name(&self) -> &'static str {
        "rope_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        check(inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![rotate(inputs[0], self.theta.0, -1.0)]
    }

    /// A rotation's transpose is the opposite rotation.
    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(Rope { theta: self.theta }, vec![dy]))])
    }
}

fn check_with_positions(name: &str, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
    let out = check(&inputs[..1])?;
    check_positions(inputs, 1, &out[0].0[0], &out[0].0[1], ctx, name)?;
    Ok(out)
}

impl Primitive for DocumentRope {
    fn name(&self) -> &'static str {
        "document_rope"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_with_positions(self.name(), inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![rotate_in_documents(inputs[0], inputs[1], self.theta.0, 1.0)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let positions = g.nodes[node].inputs[1];
        Ok(vec![Some(g.apply(DocumentRopeGrad { theta: self.theta }, vec![dy, positions])), None])
    }

    /// As `rope`, with the positions following batch and time.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let ins = &g.nodes[y].inputs;
        let rank = g.nodes[y].ty.shape.len();
        for k in 0..rank {
            ax.same(ins[0], k, y, k);
        }
        ax.same(ins[1], 0, y, 0);
        ax.same(ins[1], 1, y, 1);
        ax.block(ax.var(y, rank - 1));
    }
}

impl Primitive for DocumentRopeGrad {
    fn name(&self) -> &'static str {
        "document_rope_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_with_positions(self.name(), inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![rotate_in_documents(inputs[0], inputs[1], self.theta.0, -1.0)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let positions = g.nodes[node].inputs[1];
        Ok(vec![Some(g.apply(DocumentRope { theta: self.theta }, vec![dy, positions])), None])
    }
}
