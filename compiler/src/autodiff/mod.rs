//! Reverse-mode differentiation as a graph transform: the backward pass is appended to the
//! graph as ordinary nodes (so later stages fuse and compile it like the forward pass). One
//! vector-Jacobian rule per primitive lives next to its meaning in `ops`.

use crate::ir::{Graph, NodeId, Op};
use crate::ops;

/// Appends the gradient of the scalar `loss` with respect to each node in `wrt` and returns
/// the gradient nodes, in order. A node `loss` does not depend on gets a zero gradient.
pub fn gradients(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Vec<NodeId> {
    assert!(g.shape(loss).is_empty(), "the loss must be a scalar");
    let n = loss + 1;
    let mut needs = vec![false; n];
    for &w in wrt {
        if w < n {
            needs[w] = true;
        }
    }
    for i in 0..n {
        if !needs[i] && g.nodes[i].inputs.iter().any(|&x| needs[x]) {
            needs[i] = true;
        }
    }
    let mut adjoint: Vec<Option<NodeId>> = vec![None; n];
    let dtype = g.nodes[loss].ty.dtype;
    adjoint[loss] = Some(g.constant_of(1.0, dtype));
    for i in (0..n).rev() {
        let Some(dy) = adjoint[i] else { continue };
        if !needs[i] || !matches!(g.nodes[i].op, Op::Prim { .. }) {
            continue;
        }
        let inputs = g.nodes[i].inputs.clone();
        let contributions = ops::vjp(g, i, dy);
        for (x, c) in inputs.into_iter().zip(contributions) {
            let Some(c) = c.filter(|_| needs[x]) else {
                continue;
            };
            adjoint[x] = Some(match adjoint[x] {
                Some(prev) => g.binary(hyb_dsl::prims::Prim::Add, prev, c),
                None => c,
            });
        }
    }
    wrt.iter()
        .map(|&w| match adjoint.get(w).copied().flatten() {
            Some(grad) => grad,
            None => g.scale(w, 0.0),
        })
        .collect()
}
