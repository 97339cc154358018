//! Algebra and layout: cancel inverse views, drop identities, fold scalar multipliers
//! together and across matmuls and into a depthwise conv's taps, join adjacent slices, and
//! split or merge a linear layer over a concatenated input.

use super::Rule;
use crate::ops::{Binary, Concat, Int8Quant, Matmul, Prim, ReduceScatter, Slice, TpCopy};
use crate::rewrite::lang::{
    add_concat, add_const, add_prim, as_prim, is_stored, nodes_matching, nodes_of, shape, slices_of, EGraph, ENode,
};
use egg::Id;
use hyb_dsl::dim::Dim;

pub fn rules() -> Vec<Rule> {
    vec![
        Rule::custom("scalar-reassociate", |p| *p == Prim::Binary(Binary::Mul), scalar_reassociate),
        Rule::custom("matmul-scale-out", |p| matches!(p, Prim::Matmul(_)), matmul_scale_out),
        Rule::custom("matmul-scale-weight", |p| matches!(p, Prim::Matmul(_)), matmul_scale_weight),
        Rule::custom("linear-concat-split", |p| matches!(p, Prim::Matmul(_)), linear_concat_split),
        Rule::custom("linear-concat-merge", |p| *p == Prim::Binary(Binary::Add), linear_concat_merge),
        Rule::custom("collective-scale", |p| matches!(p, Prim::TpCopy(_) | Prim::AllGather(_)), collective_scale),
        Rule::custom("reduce-scatter", |p| matches!(p, Prim::Shard(_)), reduce_scatter),
        Rule::custom("copy-int8-quant", |p| matches!(p, Prim::TpCopy(_)), copy_int8_quant),
        Rule::custom(
            "conv-scale-taps",
            |p| matches!(p, Prim::CausalConv1d(_) | Prim::DocumentConv1d(_)),
            conv_scale_taps,
        ),
        Rule::custom("concat-slices", |p| matches!(p, Prim::Concat(_)), concat_slices),
    ]
}

/// `shard(all_reduce(x)) = reduce_scatter(x)`: each rank keeps only its slice of the sum,
/// so half the traffic (the backward pass of a sequence-parallel all-gather).
fn reduce_scatter(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some(Prim::Shard(shard)) = as_prim(eg, n).cloned() else { return vec![] };
    let scatter = ReduceScatter { axis: shard.axis, ranks: shard.ranks };
    nodes_matching!(eg, n.children[0], Prim::AllReduce(_))
        .into_iter()
        .map(|sum| (class, add_prim(eg, scatter.clone(), vec![sum.children[0]])))
        .collect()
}

/// `tp_copy(int8_quant(x)) = int8_quant(tp_copy(x))`: the copy is the identity and the
/// quantiser's gradient (straight through) is the same linear map on every rank of a
/// replicated `x`, so the all-reduce of the gradient commutes with it — and a
/// column-parallel BitNet linear's quantised input meets its weight in one `bitlinear`.
fn copy_int8_quant(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    nodes_matching!(eg, n.children[0], Prim::Int8Quant(_))
        .into_iter()
        .map(|q| {
            let copy = add_prim(eg, TpCopy, vec![q.children[0]]);
            (class, add_prim(eg, Int8Quant, vec![copy]))
        })
        .collect()
}

/// `tp_copy(x·c) = tp_copy(x)·c`, `all_gather(x·c) = all_gather(x)·c`: both sides are
/// linear, forward and backward, so the multipliers of the branches move off the shared
/// input, which then feeds one merged GEMM, one all-gather and one gradient all-reduce.
fn collective_scale(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let dtype = eg[class].data.ty.dtype;
    let Some(prim) = as_prim(eg, n).cloned() else { return vec![] };
    let mut out = Vec::new();
    for inner in nodes_matching!(eg, n.children[0], Prim::Binary(Binary::Mul)) {
        let Some((x, c)) = scaled(eg, &inner) else { continue };
        if shape(eg, x) != shape(eg, n.children[0]) {
            continue;
        }
        let copy = add_prim(eg, prim.clone(), vec![x]);
        let k = add_const(eg, c, dtype);
        out.push((class, add_prim(eg, Binary::Mul, vec![copy, k])));
    }
    out
}

fn constant(eg: &EGraph, id: Id) -> Option<f64> {
    let d = &eg[id].data;
    d.ty.shape.is_empty().then_some(d.constant).flatten()
}

/// Splits `x·c` (either order) into `(x, c)` for a known scalar `c`.
fn scaled(eg: &EGraph, n: &ENode) -> Option<(Id, f64)> {
    let (a, b) = (n.children[0], n.children[1]);
    match (constant(eg, a), constant(eg, b)) {
        (_, Some(c)) => Some((a, c)),
        (Some(c), None) => Some((b, c)),
        _ => None,
    }
}

/// `(x·c₁)·c₂ = x·(c₁c₂)`: chains of µP multipliers and scales become one.
fn scalar_reassociate(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some((x, c2)) = scaled(eg, n) else { return vec![] };
    let dtype = eg[class].data.ty.dtype;
    let mut out = Vec::new();
    for inner in nodes_matching!(eg, x, Prim::Binary(Binary::Mul)) {
        if let Some((y, c1)) = scaled(eg, &inner) {
            if eg[y].data.ty == eg[class].data.ty {
                let k = add_const(eg, c1 * c2, dtype);
                out.push((class, add_prim(eg, Binary::Mul, vec![y, k])));
            }
        }
    }
    out
}

fn mm_flags(eg: &EGraph, n: &ENode) -> (bool, bool) {
    match as_prim(eg, n) {
        Some(Prim::Matmul(m)) => (m.transpose_a, m.transpose_b),
        _ => unreachable!("the rule triggers on matmuls"),
    }
}

/// `(x·c) @ W = (x @ W)·c` and `x @ (W·c) = (x @ W)·c`: a multiplier moves to the GEMM's
/// output, where it runs in the epilogue.
fn matmul_scale_out(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let (ta, tb) = mm_flags(eg, n);
    let dtype = eg[class].data.ty.dtype;
    let mut out = Vec::new();
    for side in 0..2 {
        for inner in nodes_matching!(eg, n.children[side], Prim::Binary(Binary::Mul)) {
            let Some((x, c)) = scaled(eg, &inner) else { continue };
            if shape(eg, x) != shape(eg, n.children[side]) {
                continue;
            }
            let mut ch = n.children.clone();
            ch[side] = x;
            let mm = add_prim(eg, Matmul::new(ta, tb), ch);
            let k = add_const(eg, c, dtype);
            out.push((class, add_prim(eg, Binary::Mul, vec![mm, k])));
        }
    }
    out
}

/// `(x·c) @ W = x @ (c·W)` for a weight `W`: the multiplier folds into the weight.
fn matmul_scale_weight(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let (ta, tb) = mm_flags(eg, n);
    let w = n.children[1];
    if !eg[w].data.weight {
        return vec![];
    }
    let mut out = Vec::new();
    for inner in nodes_matching!(eg, n.children[0], Prim::Binary(Binary::Mul)) {
        let Some((x, c)) = scaled(eg, &inner) else { continue };
        if shape(eg, x) != shape(eg, n.children[0]) {
            continue;
        }
        let k = add_const(eg, c, eg[w].data.ty.dtype);
        let cw = add_prim(eg, Binary::Mul, vec![w, k]);
        out.push((class, add_prim(eg, Matmul::new(ta, tb), vec![x, cw])));
    }
    out
}

/// The axis of a rank-2 weight `W` that a matmul contracts: `x @ Wᵀ` contracts axis 1,
/// `x @ W` axis 0.
fn contracted_axis(tb: bool) -> usize {
    if tb {
        1
    } else {
        0
    }
}

/// `concat(a, b, …) @ W = a @ W_a + b @ W_b + …`, `W_i` the matching slices of the
/// weight's contracted axis.
fn linear_concat_split(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let (ta, tb) = mm_flags(eg, n);
    let (x, w) = (n.children[0], n.children[1]);
    if ta || shape(eg, w).len() != 2 {
        return vec![];
    }
    let mut out = Vec::new();
    let concats = nodes_of(eg, x, |p| match p {
        Prim::Concat(c) => Some(c.clone()),
        _ => None,
    });
    for (cat, c) in concats {
        let rank = shape(eg, x).len();
        if c.axis_of(rank) != rank - 1 {
            continue;
        }
        let k_axis = contracted_axis(tb);
        let mut start = Dim::constant(0);
        let mut sum = None;
        for &part in &cat.children {
            let width = shape(eg, part)[rank - 1].clone();
            let end = start.add(&width).expect("sizes add");
            let wi = add_prim(eg, Slice::new(k_axis, start.clone(), end.clone()), vec![w]);
            let yi = add_prim(eg, Matmul::new(false, tb), vec![part, wi]);
            sum = Some(match sum {
                None => yi,
                Some(acc) => add_prim(eg, Binary::Add, vec![acc, yi]),
            });
            start = end;
        }
        if let Some(s) = sum {
            out.push((class, s));
        }
    }
    out
}

/// `a @ W₁ + b @ W₂ = concat(a, b) @ concat(W₁, W₂)` over the contracted axes: one GEMM
/// instead of two and an add (the backward pass of a merged projection, or of
/// attention and Mamba outputs feeding one projection).
fn linear_concat_merge(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let (l, r) = (n.children[0], n.children[1]);
    let out_shape = shape(eg, class).to_vec();
    let mut out = Vec::new();
    let matmuls = |eg: &EGraph, id: Id| {
        nodes_of(eg, id, |p| match p {
            Prim::Matmul(m) => Some((m.transpose_a, m.transpose_b)),
            _ => None,
        })
    };
    for (ml, (ta, tb)) in matmuls(eg, l) {
        for (mr, flags) in matmuls(eg, r) {
            if flags != (ta, tb) || ta {
                continue;
            }
            let (a, w1, b, w2) = (ml.children[0], ml.children[1], mr.children[0], mr.children[1]);
            let (sa, sb) = (shape(eg, a).to_vec(), shape(eg, b).to_vec());
            if shape(eg, w1).len() != 2
                || shape(eg, w2).len() != 2
                || sa.len() != sb.len()
                || sa[..sa.len() - 1] != sb[..sb.len() - 1]
                || shape(eg, l) != out_shape.as_slice()
                || shape(eg, r) != out_shape.as_slice()
                || eg[a].data.ty.dtype != eg[b].data.ty.dtype
            {
                continue;
            }
            if !is_stored(eg, w1) || !is_stored(eg, w2) {
                continue;
            }
            let x = add_concat(eg, vec![a, b], sa.len() - 1);
            let w = add_concat(eg, vec![w1, w2], contracted_axis(tb));
            out.push((class, add_prim(eg, Matmul::new(false, tb), vec![x, w])));
        }
    }
    out
}

/// A depthwise conv of channels scaled section by section is the conv with its taps
/// scaled: `conv(concat(a·c₁, b·c₂, …), W) = conv(concat(a, b, …), concat(W_a·c₁, W_b·c₂, …))`
/// with `W_a` the channels (rows) of `a` (the bias is added after the taps, unscaled). Mamba's `x|B|C` multipliers then touch
/// a `[C, K]` weight instead of three activations, and the conv reads `in_proj`'s output
/// where it lies (`concat-slices`).
fn conv_scale_taps(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some(conv) = as_prim(eg, n).cloned() else { return vec![] };
    let (x, w) = (n.children[0], n.children[1]);
    let rank = shape(eg, x).len();
    let dtype = eg[w].data.ty.dtype;
    let concats = nodes_of(eg, x, |p| match p {
        Prim::Concat(c) => Some(c.axis_of(rank) + 1 == rank),
        _ => None,
    });
    let mut out = Vec::new();
    for (cat, _) in concats.into_iter().filter(|(_, last)| *last) {
        let parts: Vec<(Id, f64)> = cat
            .children
            .iter()
            .map(|&part| {
                let scaled = nodes_matching!(eg, part, Prim::Binary(Binary::Mul)).iter().find_map(|m| scaled(eg, m));
                scaled.unwrap_or((part, 1.0))
            })
            .collect();
        if parts.iter().all(|&(_, c)| c == 1.0) {
            continue;
        }
        let mut start = Dim::constant(0);
        let rows: Vec<Id> = parts
            .iter()
            .map(|&(part, c)| {
                let end = start.add(&shape(eg, part)[rank - 1]).expect("sizes add");
                let rows = add_prim(eg, Slice::new(0, start.clone(), end.clone()), vec![w]);
                start = end;
                match c == 1.0 {
                    true => rows,
                    false => {
                        let k = add_const(eg, c, dtype);
                        add_prim(eg, Binary::Mul, vec![rows, k])
                    }
                }
            })
            .collect();
        let taps = add_prim(eg, Concat::new(0), rows);
        let joined = add_prim(eg, Concat::new(rank - 1), parts.iter().map(|&(p, _)| p).collect());
        let mut children = n.children.clone();
        children[0] = joined;
        children[1] = taps;
        out.push((class, add_prim(eg, conv.clone(), children)));
    }
    out
}

/// `concat(x[…, a:b], x[…, b:c], …) = x[…, a:z]` along the slices' axis (`x` itself when
/// they cover it): re-joining what a split cut apart reads it where it lies.
fn concat_slices(eg: &mut EGraph, class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let Some(Prim::Concat(c)) = as_prim(eg, n) else { return vec![] };
    let ax = c.axis_of(shape(eg, class).len());
    let slices: Option<Vec<(Id, Dim, Dim)>> = n
        .children
        .iter()
        .map(|&part| slices_of(eg, part).into_iter().find(|s| s.1 == ax).map(|(src, _, start, end)| (src, start, end)))
        .collect();
    let Some(slices) = slices else { return vec![] };
    let src = slices[0].0;
    if !slices.iter().all(|s| s.0 == src) || !slices.windows(2).all(|w| w[0].2 == w[1].1) {
        return vec![];
    }
    let (start, end) = (slices[0].1.clone(), slices[slices.len() - 1].2.clone());
    if start.as_const() == Some(0) && Some(&end) == shape(eg, src).get(ax) {
        return vec![(class, src)];
    }
    vec![(class, add_prim(eg, Slice::new(ax, start, end), vec![src]))]
}
