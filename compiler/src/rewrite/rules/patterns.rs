//! Pattern recognition: composites a library kernel computes better than their parts —
//! softmax attention (with grouped-query heads), BitNet's quantise-then-multiply, and
//! Mamba's conv with its activation.

use super::Rule;
use crate::ops::{Binary, Prim, ReduceOp, Reshape, ScaledInt8, ScaledTernary, Transpose, Unary};
use crate::rewrite::kernels;
use crate::rewrite::lang::{add_prim, as_prim, nodes_matching, nodes_of, shape, EGraph, ENode};
use egg::Id;

pub fn rules() -> Vec<Rule> {
    vec![
        Rule::custom("flash-attention", |p| matches!(p, Prim::Matmul(_)), flash_attention),
        Rule::custom("bitlinear", |p| matches!(p, Prim::Matmul(_)), bitlinear),
        Rule::custom("conv1d-silu", |p| *p == Prim::Unary(Unary::Silu), conv1d_silu),
    ]
}

fn kernel_node(eg: &mut EGraph, k: crate::ir::Kernel, children: Vec<Id>) -> Id {
    let op = eg.analysis.kernel(k);
    eg.add(ENode { op, children })
}

/// The input of the first node in class `id` that applies `prim`, if any.
fn unary_in(eg: &EGraph, id: Id, prim: Prim) -> Option<Id> {
    nodes_of(eg, id, |p| (*p == prim).then_some(())).first().map(|(n, ())| n.children[0])
}

/// The input of a `op` reduction over the last axis, keeping it, in class `id`.
fn last_axis_reduce(eg: &EGraph, id: Id, op: ReduceOp) -> Option<Id> {
    nodes_of(eg, id, |p| match p {
        Prim::Reduce(r) if r.op == op && r.keepdim => Some(r.clone()),
        _ => None,
    })
    .into_iter()
    .find_map(|(n, r)| {
        let rank = shape(eg, n.children[0]).len();
        (r.axis_of(rank) == rank - 1).then_some(n.children[0])
    })
}

/// Whether the transpose swaps axes 1 and 2 of a rank-4 tensor (heads and time).
fn swaps_heads_and_time(p: &Prim) -> Option<()> {
    matches!(p, Prim::Transpose(t) if t.pair(4) == (1, 2)).then_some(())
}

/// `softmax(causal_mask(q kᵀ · c)) v` over `[B, H, T, D]` operands → `flash_attention`;
/// of `document_mask` (packed rows), the kernel over the documents of its positions.
fn flash_attention(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some(Prim::Matmul(m)) = as_prim(eg, n) else { return vec![] };
    if m.transpose_a || m.transpose_b || shape(eg, class).len() != 4 {
        return vec![];
    }
    let (p, v) = (n.children[0], n.children[1]);
    let Some(found) = softmax_of_masked_scores(eg, p) else { return vec![] };
    let Scores { q, k, scale, positions } = found;
    if shape(eg, q).len() != 4 || shape(eg, k) != shape(eg, q) || shape(eg, v) != shape(eg, q) {
        return vec![];
    }
    let (k, v, groups) = match (grouped(eg, k), grouped(eg, v)) {
        (Some((k0, g1)), Some((v0, g2))) if g1 == g2 => (k0, v0, g1),
        _ => (k, v, 1),
    };
    let (k, v) = if groups > 1 { (heads_first(eg, k), heads_first(eg, v)) } else { (k, v) };
    let ty = |eg: &EGraph, x: Id| eg[x].data.ty.clone();
    let pos_ty = positions.map(|p| ty(eg, p));
    let children = |operands: [Id; 3]| operands.into_iter().chain(positions).collect::<Vec<_>>();
    let kernel = kernels::flash_attention((&ty(eg, q), &ty(eg, k), &ty(eg, v)), scale, groups, None, pos_ty.as_ref());
    let mut out = vec![(class, kernel_node(eg, kernel, children([q, k, v])))];
    // With RoPE (by the same positions) applied to q and k just before, the kernel can
    // rotate them itself.
    if let (Some((qr, t1)), Some((kr, t2))) = (roped(eg, q, positions), roped(eg, k, positions)) {
        if t1.to_bits() == t2.to_bits() {
            let operands = (&ty(eg, qr), &ty(eg, kr), &ty(eg, v));
            let kernel = kernels::flash_attention(operands, scale, groups, Some(t1), pos_ty.as_ref());
            out.push((class, kernel_node(eg, kernel, children([qr, kr, v]))));
        }
    }
    out
}

/// `transpose(rope(x, θ), 1, 2)`, or of `document_rope(x, positions, θ)` where the scores
/// are masked by those `positions`: `(x, θ)`, `x` token-major `[B, T, heads, D]`.
fn roped(eg: &EGraph, id: Id, positions: Option<Id>) -> Option<(Id, f64)> {
    nodes_of(eg, id, swaps_heads_and_time).into_iter().find_map(|(t, ())| {
        let ropes = nodes_of(eg, t.children[0], |p| match (p, positions) {
            (Prim::Rope(r), None) => Some(r.theta.0),
            (Prim::DocumentRope(r), Some(_)) => Some(r.theta.0),
            _ => None,
        });
        ropes
            .into_iter()
            .find(|(r, _)| positions.is_none_or(|p| eg.find(r.children[1]) == eg.find(p)))
            .map(|(r, theta)| (r.children[0], theta))
    })
}

/// What softmax attention's scores are made of.
struct Scores {
    q: Id,
    k: Id,
    scale: f64,
    /// The positions of `document_mask`, for packed rows.
    positions: Option<Id>,
}

/// `p = e / sum(e)`, `e = exp(s − max(s))`, `s = causal_mask(q kᵀ · c)` (or
/// `document_mask(q kᵀ · c, positions)`).
fn softmax_of_masked_scores(eg: &EGraph, p: Id) -> Option<Scores> {
    let div = nodes_matching!(eg, p, Prim::Binary(Binary::Div)).into_iter().find(|d| {
        last_axis_reduce(eg, d.children[1], ReduceOp::Sum).is_some_and(|e| eg.find(e) == eg.find(d.children[0]))
    })?;
    let e = div.children[0];
    let shifted = unary_in(eg, e, Prim::Unary(Unary::Exp))?;
    let sub = nodes_matching!(eg, shifted, Prim::Binary(Binary::Sub)).into_iter().find(|s| {
        last_axis_reduce(eg, s.children[1], ReduceOp::Max).is_some_and(|m| eg.find(m) == eg.find(s.children[0]))
    })?;
    let (masked, positions) = nodes_of(eg, sub.children[0], |p| match p {
        Prim::CausalMask(_) => Some(false),
        Prim::DocumentMask(_) => Some(true),
        _ => None,
    })
    .into_iter()
    .next()
    .map(|(n, documents)| (n.children[0], documents.then(|| n.children[1])))?;
    nodes_matching!(eg, masked, Prim::Binary(Binary::Mul)).into_iter().find_map(|mul| {
        let (a, b) = (mul.children[0], mul.children[1]);
        let (mm, c) = match (eg[a].data.constant, eg[b].data.constant) {
            (_, Some(c)) if shape(eg, b).is_empty() => (a, c),
            (Some(c), _) if shape(eg, a).is_empty() => (b, c),
            _ => return None,
        };
        nodes_matching!(eg, mm, Prim::Matmul(crate::ops::Matmul { transpose_a: false, transpose_b: true }))
            .into_iter()
            .next()
            .map(|m| Scores { q: m.children[0], k: m.children[1], scale: c, positions })
    })
}

/// `transpose(reshape(broadcast(x, [B, T, kv, g, D]), [B, T, H, D]), 1, 2)` with
/// `x [B, T, kv, 1, D]`: grouped-query expansion; gives `(x, g)`.
fn grouped(eg: &EGraph, id: Id) -> Option<(Id, usize)> {
    let (t, ()) = nodes_of(eg, id, swaps_heads_and_time).into_iter().next()?;
    let wide = nodes_matching!(eg, t.children[0], Prim::Reshape(_)).first().map(|n| n.children[0])?;
    let one = nodes_matching!(eg, wide, Prim::Broadcast(_)).first().map(|n| n.children[0])?;
    let (sw, so) = (shape(eg, wide), shape(eg, one));
    if sw.len() != 5 || so.len() != 5 || so[3].as_const() != Some(1) || sw[2] != so[2] || sw[4] != so[4] {
        return None;
    }
    let groups = sw[3].as_const()?;
    (groups > 1).then_some((one, groups as usize))
}

/// `[B, T, kv, 1, D]` → `[B, kv, T, D]`.
fn heads_first(eg: &mut EGraph, one: Id) -> Id {
    let s = shape(eg, one).to_vec();
    let x = add_prim(eg, Reshape { shape: vec![s[0].clone(), s[1].clone(), s[2].clone(), s[4].clone()] }, vec![one]);
    add_prim(eg, Transpose { dim0: 1, dim1: 2 }, vec![x])
}

/// `int8_quant(x) @ ternary_quant(W)ᵀ` → `bitlinear(x, W)`; either quantiser may be its
/// scaled form, the scale given (a tensor-parallel part quantised with the whole's scale):
/// `scaled_int8(x, m)`, `scaled_ternary(W, s)`.
fn bitlinear(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some(Prim::Matmul(m)) = as_prim(eg, n) else { return vec![] };
    if m.transpose_a || !m.transpose_b {
        return vec![];
    }
    let x = quantised(eg, n.children[0], Prim::Int8Quant(crate::ops::Int8Quant), Prim::ScaledInt8(ScaledInt8));
    let w =
        quantised(eg, n.children[1], Prim::TernaryQuant(crate::ops::TernaryQuant), Prim::ScaledTernary(ScaledTernary));
    let (Some(x), Some(w)) = (x, w) else {
        return vec![];
    };
    let ty = |x: Id| eg[x].data.ty.clone();
    let (xt, wt) = ((ty(x.0), x.1.map(ty)), (ty(w.0), w.1.map(ty)));
    let kernel = kernels::bitlinear((&xt.0, xt.1.as_ref()), (&wt.0, wt.1.as_ref()));
    let inputs = [x.0].into_iter().chain(x.1).chain([w.0]).chain(w.1).collect();
    vec![(class, kernel_node(eg, kernel, inputs))]
}

/// The value class `id` quantises with `plain(v)`, or with `scaled(v, scale)`, and the scale.
fn quantised(eg: &EGraph, id: Id, plain: Prim, scaled: Prim) -> Option<(Id, Option<Id>)> {
    unary_in(eg, id, plain).map(|v| (v, None)).or_else(|| {
        nodes_of(eg, id, |p| (*p == scaled).then_some(())).first().map(|(n, ())| (n.children[0], Some(n.children[1])))
    })
}

/// `silu(causal_conv1d(x, w, bias))` (or of `document_conv1d`) → `conv1d_silu`.
fn conv1d_silu(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let convs = nodes_of(eg, n.children[0], |p| match p {
        Prim::CausalConv1d(_) => Some(false),
        Prim::DocumentConv1d(_) => Some(true),
        _ => None,
    });
    let ty = |x: Id| eg[x].data.ty.clone();
    let kernels: Vec<_> = convs
        .into_iter()
        .map(|(conv, documents)| {
            let c = &conv.children;
            // Document convs take their positions last, after the bias if there is one.
            let bias_at = (c.len() == 3 + usize::from(documents)).then_some(2);
            let positions = documents.then(|| ty(c[c.len() - 1]));
            let bias = bias_at.map(|i| ty(c[i]));
            (kernels::conv1d_silu(&ty(c[0]), &ty(c[1]), bias.as_ref(), positions.as_ref()), c.clone())
        })
        .collect();
    kernels.into_iter().map(|(kernel, children)| (class, kernel_node(eg, kernel, children))).collect()
}
