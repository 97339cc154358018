//! Reductions along one axis.

use super::{attr, attr_int, axis};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

pub fn reduce<T: Real>(prim: Prim, x: &Tensor<T>, ax: i64, keepdim: bool) -> Tensor<T> {
    let a = axis(ax, x.rank());
    let outer: usize = x.shape[..a].iter().product();
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..n).map(|k| x.data[(o * n + k) * inner + i]);
            data.push(match prim {
                Prim::Sum => vals.fold(T::zero(), |s, v| s + v),
                Prim::Mean => vals.fold(T::zero(), |s, v| s + v) / T::of(n as f64),
                Prim::Max => vals.fold(T::neg_infinity(), |m, v| m.max(v)),
                other => unreachable!("{} is not a reduction", other.name()),
            });
        }
    }
    let mut shape = x.shape.clone();
    if keepdim {
        shape[a] = 1;
    } else {
        shape.remove(a);
    }
    Tensor::new(shape, data)
}

/// Gradients of the reductions: the output gradient spread back over the reduced axis.
pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let x = g.nodes[node].inputs[0];
    let xs = g.shape(x).to_vec();
    let a = axis(attr_int(g, node, 1).as_const().expect("known axis"), xs.len());
    let keepdim = attr(g, node, 2) == Attr::Bool(true);
    let mut kept = xs.clone();
    kept[a] = Dim::constant(1);
    let dyk = if keepdim { dy } else { g.reshape(dy, kept.clone()) };
    let spread = g.apply(Prim::Broadcast, vec![Attr::Tensor, Attr::Ints(xs.clone())], vec![dyk]);
    let dx = match prim {
        Prim::Sum => spread,
        Prim::Mean => {
            let n = xs[a].as_const().expect("mean over a known dimension");
            g.scale(spread, 1.0 / n as f64)
        }
        _ => {
            // Max: the gradient goes to the elements equal to the maximum.
            let yk = if keepdim { node } else { g.reshape(node, kept) };
            let yb = g.apply(Prim::Broadcast, vec![Attr::Tensor, Attr::Ints(xs)], vec![yk]);
            let gap = g.binary(Prim::Sub, yb, x);
            let below = g.unary(Prim::Step, gap);
            let one = g.constant(1.0);
            let at_max = g.binary(Prim::Sub, one, below);
            g.binary(Prim::Mul, spread, at_max)
        }
    };
    vec![Some(dx)]
}
