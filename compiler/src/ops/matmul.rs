//! Batched matrix product with numpy batch broadcasting.

use super::pointwise::broadcast_shape;
use super::{attr, unbroadcast};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};

pub fn matmul<T: Real>(a: &Tensor<T>, b: &Tensor<T>, ta: bool, tb: bool) -> Tensor<T> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = if ta { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
    let n = if tb { b.shape[rb - 2] } else { b.shape[rb - 1] };
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let a_full: Vec<usize> = batch.iter().copied().chain(a.shape[ra - 2..].iter().copied()).collect();
    let b_full: Vec<usize> = batch.iter().copied().chain(b.shape[rb - 2..].iter().copied()).collect();
    let (a, b) = (a.broadcast_to(&a_full), b.broadcast_to(&b_full));
    let batches: usize = batch.iter().product();
    let (sa, sb) = (a.shape[a.rank() - 2] * a.shape[a.rank() - 1], b.shape[b.rank() - 2] * b.shape[b.rank() - 1]);
    let mut data = vec![T::zero(); batches * m * n];
    // op(A)[i, l] and op(B)[l, j] as strided views of the stored matrices.
    let a_strides = if ta { (1, m as isize) } else { (k as isize, 1) };
    let b_strides = if tb { (1, k as isize) } else { (n as isize, 1) };
    for bi in 0..batches {
        let (pa, pb) = (&a.data[bi * sa..(bi + 1) * sa], &b.data[bi * sb..(bi + 1) * sb]);
        T::gemm(m, k, n, pa, a_strides, pb, b_strides, &mut data[bi * m * n..(bi + 1) * m * n]);
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Tensor::new(shape, data)
}

/// `C = op(A)·op(B)`: `dA = dC·op(B)ᵀ`, `dB = op(A)ᵀ·dC`, each stored the way its operand
/// is (transposed or not) and summed over broadcast batch dimensions.
pub fn vjp(g: &mut Graph, node: NodeId, dc: NodeId) -> Vec<Option<NodeId>> {
    let (a, b) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
    let ta = attr(g, node, 2) == Attr::Bool(true);
    let tb = attr(g, node, 3) == Attr::Bool(true);
    let (da, db) = match (ta, tb) {
        (false, false) => (g.matmul(dc, b, false, true), g.matmul(a, dc, true, false)),
        (false, true) => (g.matmul(dc, b, false, false), g.matmul(dc, a, true, false)),
        (true, false) => (g.matmul(b, dc, false, true), g.matmul(a, dc, false, false)),
        (true, true) => (g.matmul(b, dc, true, true), g.matmul(dc, a, true, true)),
    };
    let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
    vec![Some(unbroadcast(g, da, &sa)), Some(unbroadcast(g, db, &sb))]
}
