//! Finding softmax attention in an elaborated graph, for decoding: the language writes
//! attention out of primitives (`softmax(causal_mask(q kᵀ · c)) v`, or `/ c`, keys and values
//! expanded for grouped-query heads), and a decode step replaces each instance with
//! attention over a cache. This is the graph-level twin of the e-graph's flash-attention
//! pattern (`rewrite/rules/patterns.rs`): the same shape, matched on plain nodes because
//! decoding is built before rewriting.

use crate::ir::{Graph, NodeId, Op};
use crate::ops::{Binary, Matmul, Prim, Reduce, ReduceOp, Unary};

/// One attention: the nodes a decode step reads and the node it replaces.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    /// `softmax(…) · v`, `[B, heads, T, D]`: the value a decode step computes instead.
    pub out: NodeId,
    /// Queries, heads first `[B, heads, T, D]` (as the score matmul reads them).
    pub q: NodeId,
    /// Keys and values token-major, before any grouped-query expansion: `[B, T, kv, D]`,
    /// what the cache holds.
    pub k: NodeId,
    pub v: NodeId,
    /// The scores' multiplier `c`.
    pub scale: f64,
}

/// Every `causal_mask` of `g` as an [`Attention`], or the layer (scope) of one that is not
/// `softmax(causal_mask(q kᵀ · c)) v`.
pub fn find(g: &Graph) -> Result<Vec<Attention>, u32> {
    let mut readers = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &x in &n.inputs {
            readers[x].push(i);
        }
    }
    let prim = |n: NodeId| match &g.nodes[n].op {
        Op::Prim(p) => Some(p),
        _ => None,
    };
    g.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Prim(Prim::CausalMask(_))))
        .map(|(mask, n)| matched(g, &readers, &prim, mask).ok_or(n.scope))
        .collect()
}

fn matched<'g>(
    g: &'g Graph,
    readers: &[Vec<NodeId>],
    prim: &dyn Fn(NodeId) -> Option<&'g Prim>,
    mask: NodeId,
) -> Option<Attention> {
    let rank = |n: NodeId| g.nodes[n].ty.shape.len();
    // `row(x, op)`: a keepdim reduction of `x` over its last axis.
    let row = |r: NodeId, x: NodeId, op: ReduceOp| {
        matches!(prim(r), Some(Prim::Reduce(Reduce { op: o, axis, keepdim: true }))
            if *o == op && crate::ops::axis(*axis, rank(x)) == rank(x) - 1 && g.nodes[r].inputs[0] == x)
    };
    let reader = |x: NodeId, want: &dyn Fn(NodeId) -> bool| readers[x].iter().copied().find(|&r| want(r));
    // Scores: `(q kᵀ) · c` with a scalar constant c on either side, or `(q kᵀ) / c`.
    let scores = g.nodes[mask].inputs[0];
    let constant = |x: NodeId| match g.nodes[x].op {
        Op::Constant(c) if g.nodes[x].ty.shape.is_empty() => Some(c),
        _ => None,
    };
    let (a, b) = (g.nodes[scores].inputs[0], g.nodes[scores].inputs[1]);
    let (qk, scale) = match (prim(scores), constant(a), constant(b)) {
        (Some(Prim::Binary(Binary::Mul)), _, Some(c)) => (a, c),
        (Some(Prim::Binary(Binary::Mul)), Some(c), _) => (b, c),
        (Some(Prim::Binary(Binary::Div)), _, Some(c)) => (a, 1.0 / c),
        _ => return None,
    };
    let Some(Prim::Matmul(Matmul { transpose_a: false, transpose_b: true })) = prim(qk) else { return None };
    let (q, kh) = (g.nodes[qk].inputs[0], g.nodes[qk].inputs[1]);
    // Softmax along the keys: `e / sum(e)`, `e = exp(s − max(s))`.
    let shifted = reader(mask, &|r| {
        matches!(prim(r), Some(Prim::Binary(Binary::Sub)))
            && g.nodes[r].inputs[0] == mask
            && row(g.nodes[r].inputs[1], mask, ReduceOp::Max)
    })?;
    let e = reader(shifted, &|r| matches!(prim(r), Some(Prim::Unary(Unary::Exp))))?;
    let p = reader(e, &|r| {
        matches!(prim(r), Some(Prim::Binary(Binary::Div)))
            && g.nodes[r].inputs[0] == e
            && row(g.nodes[r].inputs[1], e, ReduceOp::Sum)
    })?;
    let out = reader(p, &|r| {
        matches!(prim(r), Some(Prim::Matmul(Matmul { transpose_a: false, transpose_b: false })))
            && g.nodes[r].inputs[0] == p
    })?;
    let vh = g.nodes[out].inputs[1];
    let (k, v) = (token_major(g, prim, kh)?, token_major(g, prim, vh)?);
    (rank(q) == 4 && rank(out) == 4).then_some(Attention { out, q, k, v, scale })
}

/// The token-major `[B, T, kv, D]` tensor behind heads-first keys or values: `transpose(x,
/// 1, 2)` of `x [B, T, heads, D]`, where `x` may be the grouped-query expansion
/// `reshape(broadcast(reshape(x₀, [B, T, kv, 1, D]), [B, T, kv, g, D]), [B, T, heads, D])`.
fn token_major<'g>(g: &'g Graph, prim: &dyn Fn(NodeId) -> Option<&'g Prim>, heads_first: NodeId) -> Option<NodeId> {
    let Some(Prim::Transpose(t)) = prim(heads_first) else { return None };
    if t.pair(4) != (1, 2) {
        return None;
    }
    let x = g.nodes[heads_first].inputs[0];
    let input = |n: NodeId| g.nodes[n].inputs[0];
    let expanded = (|| {
        let Some(Prim::Reshape(_)) = prim(x) else { return None };
        let wide = input(x);
        let Some(Prim::Broadcast(_)) = prim(wide) else { return None };
        let one = input(wide);
        let Some(Prim::Reshape(_)) = prim(one) else { return None };
        let (sw, so) = (&g.nodes[wide].ty.shape, &g.nodes[one].ty.shape);
        let x0 = input(one);
        let s0 = &g.nodes[x0].ty.shape;
        let fits = sw.len() == 5
            && so.len() == 5
            && so[3].as_const() == Some(1)
            && sw[2] == so[2]
            && sw[4] == so[4]
            && s0.len() == 4
            && s0[2] == so[2]
            && s0[3] == so[4];
        fits.then_some(x0)
    })();
    Some(expanded.unwrap_or(x))
}
