//! BitNet b1.58 quantisers, returned dequantised: ternary absmean weights and per-token
//! absmax int8 activations. Their gradients pass straight through. Tensor parallelism
//! splits them as Megatron's `BitNet*ParallelLinear` do: each rank quantises its part with
//! the scale of the whole (the absmean from summed partial sums, a token's absmax from
//! every rank's), through the `scaled_*` forms that take the scale as an input.

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

/// [`TernaryQuant`] of `w` with the scale `s` (a scalar, already floored) given: a rank's
/// part of a split weight, quantised with the whole weight's absmean.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScaledTernary;

/// [`Int8Quant`] of `x` with each token's `max|x|` given (`[.., 1]`, already floored): a
/// rank's part of a split activation, quantised with the whole token's absmax.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScaledInt8;

pub(super) const DECLS: &[Decl] = &[
    callable!("ternary_quant", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::TernaryQuant(TernaryQuant))),
    callable!("int8_quant", &[req("x", Kind::Tensor)], |_: &Args| Ok(Prim::Int8Quant(Int8Quant))),
    Decl::Internal { name: "scaled_ternary", what: "a tensor-parallel rank's ternary quantiser" },
    Decl::Internal { name: "scaled_int8", what: "a tensor-parallel rank's int8 quantiser" },
];

/// `round(clamp(w / s, -1, 1)) * s`, elementwise.
fn ternary<T: Real>(w: &Tensor<T>, s: T) -> Tensor<T> {
    w.map(|v| T::of((v / s).max(-T::one()).min(T::one()).f64().round_ties_even()) * s)
}

/// Each row of `x` quantised to int8 levels of its peak `m` (rows of the last axis).
fn int8_rows<T: Real>(x: &Tensor<T>, peaks: impl Iterator<Item = T>) -> Tensor<T> {
    let d = *x.shape.last().unwrap_or(&1);
    let mut data = Vec::with_capacity(x.len());
    for (row, m) in x.data.chunks(d.max(1)).zip(peaks) {
        let s = T::of(127.0) / m;
        data.extend(row.iter().map(|&v| T::of((v * s).max(T::of(-128.0)).min(T::of(127.0)).f64().round_ties_even()) / s));
    }
    Tensor::new(x.shape.clone(), data)
}

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
        vec![ternary(w, s.max(T::of(1e-5)))]
    }

    /// Elementwise but for its scale, which the sharder exchanges ([`ScaledTernary`]).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let w = g.nodes[y].inputs[0];
        for k in 0..g.nodes[y].ty.shape.len() {
            ax.same(w, k, y, k);
        }
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
        ScaledTernary.expand(g, &[w, s])
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
        let peaks = x.data.chunks(d.max(1)).map(|row| row.iter().fold(T::zero(), |a, v| a.max(v.abs())).max(T::of(1e-5)));
        vec![int8_rows(x, peaks)]
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
        ScaledInt8.expand(g, &[x, m])
    }

    /// Elementwise but for a token's scale, which the sharder exchanges when the row is
    /// split ([`ScaledInt8`]).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let x = g.nodes[y].inputs[0];
        for k in 0..g.nodes[y].ty.shape.len() {
            ax.same(x, k, y, k);
        }
    }
}

impl Primitive for ScaledTernary {
    fn name(&self) -> &'static str {
        "scaled_ternary"
    }

    fn class(&self) -> Class {
        Class::Quantize
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        match inputs.get(1) {
            Some((s, _)) if s.is_empty() => Ok(vec![first(inputs)]),
            _ => Err(RuleError::at(1, "the scale is a scalar")),
        }
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![ternary(inputs[0], inputs[1].data[0])]
    }

    /// Straight through to the weight; the scale is a statistic, not differentiated.
    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy), None])
    }

    fn expand(&self, g: &mut Graph, inputs: &[NodeId]) -> Option<Vec<NodeId>> {
        let (w, s) = (inputs[0], inputs[1]);
        let ratio = g.binary(Binary::Div, w, s);
        let clamped = g.apply(Clamp { low: F64(-1.0), high: F64(1.0) }, vec![ratio]);
        let level = g.unary(Unary::Round, clamped);
        Some(vec![g.binary(Binary::Mul, level, s)])
    }
}

impl Primitive for ScaledInt8 {
    fn name(&self) -> &'static str {
        "scaled_int8"
    }

    fn class(&self) -> Class {
        Class::Quantize
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (x, _) = first(inputs);
        let rows = x.split_last().map(|(_, lead)| [lead, &[hyb_dsl::dim::Dim::constant(1)]].concat());
        match (inputs.get(1), rows) {
            (Some((m, _)), Some(rows)) if *m == rows => Ok(vec![first(inputs)]),
            _ => Err(RuleError::at(1, "the peaks are one per row (`[.., 1]`)")),
        }
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![int8_rows(inputs[0], inputs[1].data.iter().copied())]
    }

    /// Straight through to the activation; the peaks are a statistic, not differentiated.
    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy), None])
    }

    fn expand(&self, g: &mut Graph, inputs: &[NodeId]) -> Option<Vec<NodeId>> {
        let (x, m) = (inputs[0], inputs[1]);
        let levels = g.constant(127.0);
        let s = g.binary(Binary::Div, levels, m);
        let scaled = g.binary(Binary::Mul, x, s);
        let clamped = g.apply(Clamp { low: F64(-128.0), high: F64(127.0) }, vec![scaled]);
        let level = g.unary(Unary::Round, clamped);
        Some(vec![g.binary(Binary::Div, level, s)])
    }
}
