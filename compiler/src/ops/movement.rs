//! Ops that move data without arithmetic.

use super::{attr, attr_int, axis, unbroadcast};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

pub fn reshape<T: Real>(x: &Tensor<T>, target: &[i64]) -> Tensor<T> {
    let known: i64 = target.iter().filter(|&&d| d >= 0).product();
    let shape = target.iter().map(|&d| if d < 0 { x.len() / known as usize } else { d as usize }).collect();
    Tensor::new(shape, x.data.clone())
}

pub fn permute<T: Real>(x: &Tensor<T>, perm: &[i64]) -> Tensor<T> {
    let r = x.rank();
    let perm: Vec<usize> = perm.iter().map(|&p| axis(p, r)).collect();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let src = x.strides();
    let mut data = Vec::with_capacity(x.len());
    let mut idx = vec![0usize; r];
    for _ in 0..x.len() {
        let at: usize = (0..r).map(|d| idx[d] * src[perm[d]]).sum();
        data.push(x.data[at]);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::new(shape, data)
}

pub fn slice<T: Real>(x: &Tensor<T>, ax: i64, start: i64, end: i64) -> Tensor<T> {
    let a = axis(ax, x.rank());
    let (start, end) = (start as usize, end as usize);
    let outer: usize = x.shape[..a].iter().product();
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * n + start) * inner..(o * n + end) * inner]);
    }
    let mut shape = x.shape.clone();
    shape[a] = end - start;
    Tensor::new(shape, data)
}

pub fn concat<T: Real>(xs: &[&Tensor<T>], ax: i64) -> Tensor<T> {
    let a = axis(ax, xs[0].rank());
    let outer: usize = xs[0].shape[..a].iter().product();
    let inner: usize = xs[0].shape[a + 1..].iter().product();
    let mut data = Vec::new();
    for o in 0..outer {
        for x in xs {
            let n = x.shape[a];
            data.extend_from_slice(&x.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    let mut shape = xs[0].shape.clone();
    shape[a] = xs.iter().map(|x| x.shape[a]).sum();
    Tensor::new(shape, data)
}

/// Rows of `table` selected by integer ids (stored as exact values of the element type).
pub fn embedding<T: Real>(table: &Tensor<T>, ids: &Tensor<T>) -> Tensor<T> {
    let d = table.shape[1];
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in &ids.data {
        let row = id.f64() as usize;
        data.extend_from_slice(&table.data[row * d..(row + 1) * d]);
    }
    let mut shape = ids.shape.clone();
    shape.push(d);
    Tensor::new(shape, data)
}

/// Zero padding along one axis: the gradient of [`slice`].
pub fn pad<T: Real>(x: &Tensor<T>, ax: i64, before: i64, after: i64) -> Tensor<T> {
    let a = axis(ax, x.rank());
    let (before, after) = (before as usize, after as usize);
    let outer: usize = x.shape[..a].iter().product();
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let m = n + before + after;
    let mut data = vec![T::zero(); outer * m * inner];
    for o in 0..outer {
        data[(o * m + before) * inner..(o * m + before + n) * inner]
            .copy_from_slice(&x.data[o * n * inner..(o + 1) * n * inner]);
    }
    let mut shape = x.shape.clone();
    shape[a] = m;
    Tensor::new(shape, data)
}

/// Adds each row of `dy` into row `ids[i]` of a `[vocab, d]` table: the gradient of
/// [`embedding`] with respect to its table.
pub fn embedding_grad<T: Real>(ids: &Tensor<T>, dy: &Tensor<T>, vocab: usize) -> Tensor<T> {
    let d = *dy.shape.last().unwrap();
    let mut out = Tensor::zeros(vec![vocab, d]);
    for (i, &id) in ids.data.iter().enumerate() {
        let row = id.f64() as usize;
        for j in 0..d {
            out.data[row * d + j] = out.data[row * d + j] + dy.data[i * d + j];
        }
    }
    out
}

/// Gradients of the movement ops: the same data moved back.
pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let inputs = g.nodes[node].inputs.clone();
    let x = inputs[0];
    let xs = g.shape(x).to_vec();
    match prim {
        Prim::Reshape => vec![Some(g.reshape(dy, xs))],
        Prim::Permute => {
            let Attr::Ints(perm) = attr(g, node, 1) else { unreachable!() };
            let r = xs.len();
            let mut inverse = vec![Dim::constant(0); r];
            for (i, p) in perm.iter().enumerate() {
                inverse[axis(p.as_const().unwrap(), r)] = Dim::constant(i as i64);
            }
            vec![Some(g.apply(Prim::Permute, vec![Attr::Tensor, Attr::Ints(inverse)], vec![dy]))]
        }
        Prim::Transpose => {
            let (a, b) = (attr(g, node, 1), attr(g, node, 2));
            vec![Some(g.apply(Prim::Transpose, vec![Attr::Tensor, a, b], vec![dy]))]
        }
        Prim::Broadcast => vec![Some(unbroadcast(g, dy, &xs))],
        Prim::Slice => {
            let a = attr_int(g, node, 1);
            let r = axis(a.as_const().unwrap(), xs.len());
            let (start, end) = (attr_int(g, node, 2), attr_int(g, node, 3));
            let after = xs[r].sub(&end).unwrap();
            vec![Some(g.apply(
                Prim::Pad,
                vec![Attr::Tensor, Attr::Int(a), Attr::Int(start), Attr::Int(after)],
                vec![dy],
            ))]
        }
        Prim::Pad => {
            let a = attr_int(g, node, 1);
            let r = axis(a.as_const().unwrap(), xs.len());
            let start = attr_int(g, node, 2);
            let end = start.add(&xs[r]).unwrap();
            vec![Some(g.apply(
                Prim::Slice,
                vec![Attr::Tensor, Attr::Int(a), Attr::Int(start), Attr::Int(end)],
                vec![dy],
            ))]
        }
        Prim::Concat => {
            let a = attr_int(g, node, 1);
            let r = axis(a.as_const().unwrap(), xs.len());
            let mut start = Dim::constant(0);
            let mut out = Vec::new();
            for &i in &inputs {
                let end = start.add(&g.shape(i)[r]).unwrap();
                let attrs = vec![Attr::Tensor, Attr::Int(a.clone()), Attr::Int(start.clone()), Attr::Int(end.clone())];
                out.push(Some(g.apply(Prim::Slice, attrs, vec![dy])));
                start = end;
            }
            out
        }
        Prim::Embedding => {
            let vocab = xs[0].clone();
            let ids = inputs[1];
            let grad = g.apply(Prim::EmbeddingGrad, vec![Attr::Tensor, Attr::Tensor, Attr::Int(vocab)], vec![ids, dy]);
            vec![Some(grad), None]
        }
        other => unreachable!("{} is not a movement op", other.name()),
    }
}

/// `[..., depth]` with a one at each id's position.
pub fn one_hot<T: Real>(ids: &Tensor<T>, depth: usize) -> Tensor<T> {
    let mut out = vec![T::zero(); ids.len() * depth];
    for (i, id) in ids.data.iter().enumerate() {
        let j = id.f64() as usize;
        if j < depth {
            out[i * depth + j] = T::one();
        }
    }
    let mut shape = ids.shape.clone();
    shape.push(depth);
    Tensor::new(shape, out)
}
