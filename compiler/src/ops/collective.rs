//! Tensor-parallel primitives: what each rank receives, given every rank's input, and their
//! gradients. The gradient pairs are Megatron's: all-reduce ↔ identity, all-gather ↔
//! shard, reduce-scatter ↔ all-gather.

use super::{attr, movement, Arg};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::Prim;

/// Each rank's output of `prim`, given each rank's inputs (`all[r]`).
pub fn eval<T: Real>(prim: Prim, args: &[Arg], all: &[Vec<&Tensor<T>>]) -> Vec<Tensor<T>> {
    let ranks = all.len();
    let inputs: Vec<&Tensor<T>> = all.iter().map(|xs| xs[0]).collect();
    let inputs = &inputs[..];
    let sum = || {
        let mut total = inputs[0].clone();
        for x in &inputs[1..] {
            for (t, v) in total.data.iter_mut().zip(&x.data) {
                *t = *t + *v;
            }
        }
        total
    };
    let chunk = |x: &Tensor<T>, r: usize| {
        let ax = super::axis(args[1].int(), x.rank());
        let n = x.shape[ax] / ranks;
        movement::slice(x, ax as i64, (r * n) as i64, ((r + 1) * n) as i64)
    };
    match prim {
        Prim::AllReduce => vec![sum(); ranks],
        Prim::TpCopy => inputs.iter().map(|&x| x.clone()).collect(),
        Prim::AllGather => vec![movement::concat(inputs, args[1].int()); ranks],
        Prim::ReduceScatter => {
            let total = sum();
            (0..ranks).map(|r| chunk(&total, r)).collect()
        }
        Prim::Shard => inputs.iter().enumerate().map(|(r, x)| chunk(x, r)).collect(),
        Prim::VocabEmbedding => all.iter().enumerate().map(|(r, xs)| vocab_embedding(xs[0], xs[1], r)).collect(),
        Prim::VocabEmbeddingGrad => {
            let rows = args[2].int() as usize;
            all.iter().enumerate().map(|(r, xs)| vocab_embedding_grad(xs[0], xs[1], rows, r)).collect()
        }
        _ => unreachable!("{} is not a collective", prim.name()),
    }
}

/// Rows `[rank·n, (rank+1)·n)` of the full table are this rank's `n` rows.
fn vocab_embedding<T: Real>(table: &Tensor<T>, ids: &Tensor<T>, rank: usize) -> Tensor<T> {
    let (n, d) = (table.shape[0], table.shape[1]);
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in &ids.data {
        match (id.f64() as usize).checked_sub(rank * n).filter(|&row| row < n) {
            Some(row) => data.extend_from_slice(&table.data[row * d..(row + 1) * d]),
            None => data.extend(std::iter::repeat_n(T::zero(), d)),
        }
    }
    let mut shape = ids.shape.clone();
    shape.push(d);
    Tensor::new(shape, data)
}

fn vocab_embedding_grad<T: Real>(ids: &Tensor<T>, dy: &Tensor<T>, rows: usize, rank: usize) -> Tensor<T> {
    let d = *dy.shape.last().expect("dy has a last axis");
    let mut out = Tensor::zeros(vec![rows, d]);
    for (i, &id) in ids.data.iter().enumerate() {
        if let Some(row) = (id.f64() as usize).checked_sub(rank * rows).filter(|&row| row < rows) {
            for j in 0..d {
                out.data[row * d + j] = out.data[row * d + j] + dy.data[i * d + j];
            }
        }
    }
    out
}

pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let along = |g: &mut Graph, p: Prim| g.apply(p, vec![Attr::Tensor, attr(g, node, 1), attr(g, node, 2)], vec![dy]);
    if prim == Prim::VocabEmbedding {
        let (table, ids) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
        let rows = g.shape(table)[0].clone();
        let attrs = vec![Attr::Tensor, Attr::Tensor, Attr::Int(rows), attr(g, node, 2)];
        return vec![Some(g.apply(Prim::VocabEmbeddingGrad, attrs, vec![ids, dy])), None];
    }
    vec![Some(match prim {
        Prim::AllReduce => dy,
        Prim::TpCopy => g.apply(Prim::AllReduce, vec![Attr::Tensor], vec![dy]),
        Prim::AllGather => along(g, Prim::Shard),
        Prim::ReduceScatter | Prim::Shard => along(g, Prim::AllGather),
        _ => unreachable!("{} is not a collective", prim.name()),
    })]
}

/// Whether `prim` exchanges data between ranks (or depends on the rank).
pub fn is_collective(prim: Prim) -> bool {
    matches!(
        prim,
        Prim::AllReduce
            | Prim::AllGather
            | Prim::ReduceScatter
            | Prim::Shard
            | Prim::TpCopy
            | Prim::VocabEmbedding
            | Prim::VocabEmbeddingGrad
    )
}
