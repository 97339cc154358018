//! Pattern recognition: composites a library kernel computes better than their parts —
//! softmax attention (with grouped-query heads) and BitNet's quantise-then-multiply.

use super::Rule;
use crate::ir::Attr;
use crate::rewrite::kernels;
use crate::rewrite::lang::{add_prim, as_prim, axis, bool_attr, int_attr, nodes_of, shape, EGraph, ENode};
use egg::Id;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

pub fn rules() -> Vec<Rule> {
    vec![
        Rule { name: "flash-attention", on: &[Prim::Matmul], apply: flash_attention },
        Rule { name: "bitlinear", on: &[Prim::Matmul], apply: bitlinear },
    ]
}

fn kernel_node(eg: &mut EGraph, k: crate::ir::Kernel, children: Vec<Id>) -> Id {
    let op = eg.analysis.kernel(k);
    eg.add(ENode { op, children })
}

/// The single input of a node of `prim` in class `id` whose last-axis reduction flags
/// match (`keepdim`), if any.
fn unary_in(eg: &EGraph, id: Id, prim: Prim) -> Option<Id> {
    nodes_of(eg, id, prim).first().map(|(n, _)| n.children[0])
}

fn last_axis_reduce(eg: &EGraph, id: Id, prim: Prim) -> Option<Id> {
    nodes_of(eg, id, prim).into_iter().find_map(|(n, attrs)| {
        let rank = shape(eg, n.children[0]).len();
        (int_attr(&attrs[1]).map(|a| axis(a, rank)) == Some(rank - 1) && bool_attr(&attrs[2])).then_some(n.children[0])
    })
}

/// `softmax(causal_mask(q kᵀ · c)) v` over `[B, H, T, D]` operands → `flash_attention`.
fn flash_attention(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some((_, attrs)) = as_prim(eg, n) else { return vec![] };
    if bool_attr(&attrs[2]) || bool_attr(&attrs[3]) || shape(eg, class).len() != 4 {
        return vec![];
    }
    let (p, v) = (n.children[0], n.children[1]);
    let Some(found) = softmax_of_masked_scores(eg, p) else { return vec![] };
    let (q, k, scale) = found;
    if shape(eg, q).len() != 4 || shape(eg, k) != shape(eg, q) || shape(eg, v) != shape(eg, q) {
        return vec![];
    }
    let (k, v, groups) = match (grouped(eg, k), grouped(eg, v)) {
        (Some((k0, g1)), Some((v0, g2))) if g1 == g2 => (k0, v0, g1),
        _ => (k, v, 1),
    };
    let (k, v) = if groups > 1 { (heads_first(eg, k), heads_first(eg, v)) } else { (k, v) };
    let ty = |eg: &EGraph, x: Id| eg[x].data.ty.clone();
    let kernel = kernels::flash_attention(&ty(eg, q), &ty(eg, k), &ty(eg, v), scale, groups, None);
    let mut out = vec![(class, kernel_node(eg, kernel, vec![q, k, v]))];
    // With RoPE applied to q and k just before, the kernel can rotate them itself.
    if let (Some((qr, t1)), Some((kr, t2))) = (roped(eg, q), roped(eg, k)) {
        if t1.to_bits() == t2.to_bits() {
            let kernel = kernels::flash_attention(&ty(eg, qr), &ty(eg, kr), &ty(eg, v), scale, groups, Some(t1));
            out.push((class, kernel_node(eg, kernel, vec![qr, kr, v])));
        }
    }
    out
}

/// `transpose(rope(x, θ), 1, 2)`: `(x, θ)`, `x` token-major `[B, T, heads, D]`.
fn roped(eg: &EGraph, id: Id) -> Option<(Id, f64)> {
    nodes_of(eg, id, Prim::Transpose).into_iter().find_map(|(t, a)| {
        let pair = (int_attr(&a[1]).map(|i| axis(i, 4)), int_attr(&a[2]).map(|j| axis(j, 4)));
        if !matches!(pair, (Some(1), Some(2)) | (Some(2), Some(1))) {
            return None;
        }
        nodes_of(eg, t.children[0], Prim::Rope).into_iter().find_map(|(r, ra)| match ra[1] {
            Attr::Float(theta) => Some((r.children[0], theta)),
            _ => None,
        })
    })
}

/// `p = e / sum(e)`, `e = exp(s − max(s))`, `s = causal_mask(q kᵀ · c)`: `(q, k, c)`.
fn softmax_of_masked_scores(eg: &EGraph, p: Id) -> Option<(Id, Id, f64)> {
    let (div, _) = nodes_of(eg, p, Prim::Div).into_iter().find(|(d, _)| {
        last_axis_reduce(eg, d.children[1], Prim::Sum).is_some_and(|e| eg.find(e) == eg.find(d.children[0]))
    })?;
    let e = div.children[0];
    let shifted = unary_in(eg, e, Prim::Exp)?;
    let (sub, _) = nodes_of(eg, shifted, Prim::Sub).into_iter().find(|(s, _)| {
        last_axis_reduce(eg, s.children[1], Prim::Max).is_some_and(|m| eg.find(m) == eg.find(s.children[0]))
    })?;
    let scores = unary_in(eg, sub.children[0], Prim::CausalMask)?;
    nodes_of(eg, scores, Prim::Mul).into_iter().find_map(|(mul, _)| {
        let (a, b) = (mul.children[0], mul.children[1]);
        let (mm, c) = match (eg[a].data.constant, eg[b].data.constant) {
            (_, Some(c)) if shape(eg, b).is_empty() => (a, c),
            (Some(c), _) if shape(eg, a).is_empty() => (b, c),
            _ => return None,
        };
        nodes_of(eg, mm, Prim::Matmul)
            .into_iter()
            .find(|(_, at)| !bool_attr(&at[2]) && bool_attr(&at[3]))
            .map(|(m, _)| (m.children[0], m.children[1], c))
    })
}

/// `transpose(reshape(broadcast(x, [B, T, kv, g, D]), [B, T, H, D]), 1, 2)` with
/// `x [B, T, kv, 1, D]`: grouped-query expansion; gives `(x, g)`.
fn grouped(eg: &EGraph, id: Id) -> Option<(Id, usize)> {
    let t = nodes_of(eg, id, Prim::Transpose).into_iter().find(|(_, a)| {
        let (i, j) = (int_attr(&a[1]).map(|i| axis(i, 4)), int_attr(&a[2]).map(|j| axis(j, 4)));
        matches!((i, j), (Some(1), Some(2)) | (Some(2), Some(1)))
    })?;
    let wide = unary_in(eg, t.0.children[0], Prim::Reshape)?;
    let one = unary_in(eg, wide, Prim::Broadcast)?;
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
    let x = add_prim(
        eg,
        Prim::Reshape,
        vec![Attr::Tensor, Attr::Ints(vec![s[0].clone(), s[1].clone(), s[2].clone(), s[4].clone()])],
        vec![one],
    );
    add_prim(eg, Prim::Transpose, vec![Attr::Tensor, Attr::Int(Dim::constant(1)), Attr::Int(Dim::constant(2))], vec![x])
}

/// `int8_quant(x) @ ternary_quant(W)ᵀ` → `bitlinear(x, W)`.
fn bitlinear(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some((_, attrs)) = as_prim(eg, n) else { return vec![] };
    if bool_attr(&attrs[2]) || !bool_attr(&attrs[3]) {
        return vec![];
    }
    let (Some(x), Some(w)) =
        (unary_in(eg, n.children[0], Prim::Int8Quant), unary_in(eg, n.children[1], Prim::TernaryQuant))
    else {
        return vec![];
    };
    let ty = |x: Id| eg[x].data.ty.clone();
    let kernel = kernels::bitlinear(&ty(x), &ty(w));
    vec![(class, kernel_node(eg, kernel, vec![x, w]))]
}
