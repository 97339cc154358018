//! The recognised kernels, each defined by the composite it computes: that body is what the
//! reference interpreter runs, what autodiff differentiates, and what a backend's template
//! must match.

use crate::ir::{Attr, Graph, Kernel, KernelKind, Op, TensorType};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

fn input(g: &mut Graph, i: usize, ty: &TensorType) -> usize {
    g.add(Op::Input(i.to_string()), vec![], ty.clone())
}

fn reduce(g: &mut Graph, prim: Prim, x: usize) -> usize {
    g.apply(prim, vec![Attr::Tensor, Attr::Int(Dim::constant(-1)), Attr::Bool(true)], vec![x])
}

/// Causal attention over `q [B, H, T, D]`, `k, v [B, H/groups, T, D]`:
/// `softmax(causal_mask(q kᵀ · scale)) v`, each key/value head serving `groups` query heads.
/// With `rope`, q and k arrive token-major (`[B, T, heads, D]`) and are rotated first.
pub fn flash_attention(
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
    scale: f64,
    groups: usize,
    rope: Option<f64>,
) -> Kernel {
    let mut g = Graph::default();
    let (mut qi, mut ki, mut vi) = (input(&mut g, 0, q), input(&mut g, 1, k), input(&mut g, 2, v));
    if let Some(theta) = rope {
        for x in [&mut qi, &mut ki] {
            let r = g.apply(Prim::Rope, vec![Attr::Tensor, Attr::Float(theta)], vec![*x]);
            *x = g.apply(
                Prim::Transpose,
                vec![Attr::Tensor, Attr::Int(Dim::constant(1)), Attr::Int(Dim::constant(2))],
                vec![r],
            );
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
            let b = g.apply(Prim::Broadcast, vec![Attr::Tensor, Attr::Ints(wide)], vec![r]);
            *x = g.reshape(b, q_shape.clone());
        }
    }
    let s = g.matmul(qi, ki, false, true);
    let s = g.scale(s, scale);
    let s = g.unary(Prim::CausalMask, s);
    let m = reduce(&mut g, Prim::Max, s);
    let s = g.binary(Prim::Sub, s, m);
    let e = g.unary(Prim::Exp, s);
    let z = reduce(&mut g, Prim::Sum, e);
    let p = g.binary(Prim::Div, e, z);
    let o = g.matmul(p, vi, false, false);
    g.outputs = vec![o];
    Kernel { kind: KernelKind::FlashAttention { scale, groups, rope }, body: g }
}

/// BitNet b1.58 linear: `int8_quant(x) @ ternary_quant(w)ᵀ`.
pub fn bitlinear(x: &TensorType, w: &TensorType) -> Kernel {
    let mut g = Graph::default();
    let (xi, wi) = (input(&mut g, 0, x), input(&mut g, 1, w));
    let xq = g.unary(Prim::Int8Quant, xi);
    let wq = g.unary(Prim::TernaryQuant, wi);
    let y = g.matmul(xq, wq, false, true);
    g.outputs = vec![y];
    Kernel { kind: KernelKind::BitLinear, body: g }
}
