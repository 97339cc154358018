//! Tensor-parallel primitives: what each rank receives, given every rank's input, and their
//! gradients. The gradient pairs are Megatron's: all-reduce ↔ identity, all-gather ↔
//! shard, reduce-scatter ↔ all-gather.

use super::{attr, movement, Arg};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::Prim;

/// Each rank's output of `prim`, given each rank's input (`inputs[r]`).
pub fn eval<T: Real>(prim: Prim, args: &[Arg], inputs: &[&Tensor<T>]) -> Vec<Tensor<T>> {
    let ranks = inputs.len();
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
        _ => unreachable!("{} is not a collective", prim.name()),
    }
}

pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let along = |g: &mut Graph, p: Prim| g.apply(p, vec![Attr::Tensor, attr(g, node, 1), attr(g, node, 2)], vec![dy]);
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
    matches!(prim, Prim::AllReduce | Prim::AllGather | Prim::ReduceScatter | Prim::Shard | Prim::TpCopy)
}
