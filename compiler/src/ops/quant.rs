//! BitNet b1.58 quantisers, returned dequantised: ternary absmean weights and per-token
//! absmax int8 activations. Their gradients pass straight through.

use super::{callable, first, Args, Binary, Clamp, Class, Decl, NoGradient, Prim, Primitive, ReduceOp, Sizes, Ty, Unary, F64};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::prims::{req, Ctx, Kind, RuleError};
use serde::{Deserialize, Serialize};

/// `round(clamp(w / s, -1, 1)) * s` with `s = mean(|w|)` over the whole tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TernaryQuant;

/// `round(clamp(x * 127 / max|x|, -128, 127)) * max|x| / 127`, the maximum over the last
/// axis (one scale per token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Int8Quant;

pub(super) const DECLS: &[Decl] = &[
    callable!("ternary_quant", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::TernaryQuant(TernaryQuant))),
    callable!("int8_quant", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::Int8Quant(Int8Quant))),
];

impl Primitive for TernaryQuant {
    fn name(&self) -> &'static str {
        "ternary_quant"
    }

    fn class(&self) -> Class {
        Class::Quantize
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let w = inputs[0];
        let s = w.data.iter().fold(T::zero(), |a, v| a + v.abs()) / T::of(w.len() as f64);
        let s = s.max(T::of(1e-5));
        vec![w.map(|v| T::of((v / s).max(-T::one()).min(T::one()).f64().round_ties_even()) * s)]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy)])
    }

    /// The scale is one mean over the flattened tensor, so a generator can compute it once
    /// before the elements that use it.
    fn expand(&self, g: &mut Graph, inputs: &[NodeId]) -> Option<Vec<NodeId>> {
        let w = inputs[0];
        let count = g.nodes[w].ty.shape.iter().try_fold(hyb_dsl::dim::Dim::constant(1), |a, d| a.mul(d))?;
        let magnitude = g.unary(Unary::Abs, w);
        let flat = g.reshape(magnitude, vec![count]);
        let mean = g.reduce(ReduceOp::Mean, flat, 0, false);
        let floor = g.constant(1e-5);
        let s = g.binary(Binary::Maximum, mean, floor);
        let ratio = g.binary(Binary::Div, w, s);
        let clamped = g.apply(Clamp { low: F64(-1.0), high: F64(1.0) }, vec![ratio]);
        let level = g.unary(Unary::Round, clamped);
        Some(vec![g.binary(Binary::Mul, level, s)])
    }
}

impl Primitive for Int8Quant {
    fn name(&self) -> &'static str {
        "int8_quant"
    }

    fn class(&self) -> Class {
        Class::Quantize
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        let d = *x.shape.last().unwrap_or(&1);
        let mut data = Vec::with_capacity(x.len());
        for row in x.data.chunks(d.max(1)) {
            let m = row.iter().fold(T::zero(), |a, v| a.max(v.abs())).max(T::of(1e-5));
            let s = T::of(127.0) / m;
            data.extend(
                row.iter().map(|&v| T::of((v * s).max(T::of(-128.0)).min(T::of(127.0)).f64().round_ties_even()) / s),
            );
        }
        vec![Tensor::new(x.shape.clone(), data)]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy)])
    }

    /// A row reduction and a pointwise epilogue, in the reference's order of operations.
    fn expand(&self, g: &mut Graph, inputs: &[NodeId]) -> Option<Vec<NodeId>> {
        let x = inputs[0];
        let magnitude = g.unary(Unary::Abs, x);
        let peak = g.reduce(ReduceOp::Max, magnitude, -1, true);
        let floor = g.constant(1e-5);
        let m = g.binary(Binary::Maximum, peak, floor);
        let levels = g.constant(127.0);
        let s = g.binary(Binary::Div, levels, m);
        let scaled = g.binary(Binary::Mul, x, s);
        let clamped = g.apply(Clamp { low: F64(-128.0), high: F64(127.0) }, vec![scaled]);
        let level = g.unary(Unary::Round, clamped);
        Some(vec![g.binary(Binary::Div, level, s)])
    }

    /// A token's scale needs its row whole.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let x = g.nodes[y].inputs[0];
        let rank = g.nodes[y].ty.shape.len();
        for k in 0..rank {
            ax.same(x, k, y, k);
        }
        ax.block(ax.var(y, rank - 1));
    }
}
