//! The recognised kernels, each defined by the composite it computes: that body is what the
//! reference interpreter runs, what autodiff differentiates, and what a backend's template
//! must match.

use crate::ir::{Graph, Kernel, KernelKind, Op, TensorType};
use crate::ops::{
    Binary, CausalConv1d, CausalMask, DocumentConv1d, DocumentMask, DocumentRope, Int8Quant, Prim, ReduceOp, Rope,
    ScaledInt8, ScaledTernary, TernaryQuant, Transpose, Unary, F64,
};
use hyb_dsl::dim::Dim;

fn input(g: &mut Graph, i: usize, ty: &TensorType) -> usize {
    g.add(Op::Input(i.to_string()), vec![], ty.clone())
}

fn row(g: &mut Graph, op: ReduceOp, x: usize) -> usize {
    g.reduce(op, x, -1, true)
}

/// Causal attention over `q [B, H, T, D]`, `k, v [B, H/groups, T, D]`:
/// `softmax(causal_mask(q kᵀ · scale)) v`, each key/value head serving `groups` query heads.
/// With `rope`, q and k arrive token-major (`[B, T, heads, D]`) and are rotated first.
/// With `positions [B, T]` (packed rows, input 3), of `document_mask` and `document_rope`.
///
/// A second output, each query row's logsumexp of its scaled scores `[B, H, T, 1]`, is what
/// the gradient needs of the forward pass besides the output: kept, it spares the gradient
/// running the forward pass again.
pub fn flash_attention(
    (q, k, v): (&TensorType, &TensorType, &TensorType),
    scale: f64,
    groups: usize,
    rope: Option<f64>,
    positions: Option<&TensorType>,
) -> Kernel {
    let mut g = Graph::default();
    let (mut qi, mut ki, mut vi) = (input(&mut g, 0, q), input(&mut g, 1, k), input(&mut g, 2, v));
    let pos = positions.map(|ty| input(&mut g, 3, ty));
    if let Some(theta) = rope {
        for x in [&mut qi, &mut ki] {
            let theta = F64(theta);
            let r = match pos {
                Some(p) => g.apply(DocumentRope { theta }, vec![*x, p]),
                None => g.apply(Rope { theta }, vec![*x]),
            };
            *x = g.apply(Transpose { dim0: 1, dim1: 2 }, vec![r]);
        }
    }
    let q_shape = g.shape(qi).to_vec();
    if groups > 1 {
        for x in [&mut ki, &mut vi] {
            let s = g.shape(*x).to_vec();
            let mut one = s.clone();
            one.insert(2, Dim::constant(1));
            let mut wide = s.clone();
            wide.insert(2, Dim::constant(groups as i64));
            let r = g.reshape(*x, one);
            let b = g.broadcast(r, wide);
            *x = g.reshape(b, q_shape.clone());
        }
    }
    let s = g.matmul(qi, ki, false, true);
    let s = g.scale(s, scale);
    let s = match pos {
        Some(p) => g.apply(DocumentMask, vec![s, p]),
        None => g.apply(CausalMask, vec![s]),
    };
    let m = row(&mut g, ReduceOp::Max, s);
    let s = g.binary(Binary::Sub, s, m);
    let e = g.unary(Unary::Exp, s);
    let z = row(&mut g, ReduceOp::Sum, e);
    let p = g.binary(Binary::Div, e, z);
    let o = g.matmul(p, vi, false, false);
    let log_z = g.unary(Unary::Log, z);
    let lse = g.binary(Binary::Add, m, log_z);
    g.outputs = vec![o, lse];
    Kernel { kind: KernelKind::FlashAttention { scale, groups, rope, documents: pos.is_some() }, body: g }
}

/// BitNet b1.58 linear: `int8_quant(x) @ ternary_quant(w)ᵀ`.
///
/// Each operand comes with its scale when its quantiser is the scaled form (a
/// tensor-parallel part quantised with the scale of the whole): inputs `x`, `x`'s scale,
/// `W`, `W`'s scale, those present, in that order.
pub fn bitlinear(x: (&TensorType, Option<&TensorType>), w: (&TensorType, Option<&TensorType>)) -> Kernel {
    let mut g = Graph::default();
    let mut next = 0;
    let mut quantised = |g: &mut Graph, (v, scale): (&TensorType, Option<&TensorType>), plain: Prim, scaled: Prim| {
        let vi = input(g, next, v);
        next += 1;
        match scale {
            Some(s) => {
                let si = input(g, next, s);
                next += 1;
                g.apply(scaled, vec![vi, si])
            }
            None => g.apply(plain, vec![vi]),
        }
    };
    let xq = quantised(&mut g, x, Int8Quant.into(), ScaledInt8.into());
    let wq = quantised(&mut g, w, TernaryQuant.into(), ScaledTernary.into());
    let y = g.matmul(xq, wq, false, true);
    g.outputs = vec![y];
    Kernel { kind: KernelKind::BitLinear, body: g }
}

/// Mamba's conv and its activation: `silu(causal_conv1d(x, w, bias))` over `x [B, T, C]`,
/// `w [C, K]` and `bias [C]` when there is one; with `positions [B, T]` (packed rows), of
/// `document_conv1d`. Inputs in that order: x, w, bias, positions.
pub fn conv1d_silu(
    x: &TensorType,
    w: &TensorType,
    bias: Option<&TensorType>,
    positions: Option<&TensorType>,
) -> Kernel {
    let mut g = Graph::default();
    let mut inputs = vec![input(&mut g, 0, x), input(&mut g, 1, w)];
    for ty in bias.into_iter().chain(positions) {
        inputs.push(input(&mut g, inputs.len(), ty));
    }
    let conv = match positions {
        Some(_) => g.apply(DocumentConv1d { bias: bias.is_some() }, inputs),
        None => g.apply(CausalConv1d, inputs),
    };
    let y = g.unary(Unary::Silu, conv);
    g.outputs = vec![y];
    Kernel { kind: KernelKind::ConvSilu { documents: positions.is_some() }, body: g }
}
