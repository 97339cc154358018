//! Ops that move data without arithmetic.

use super::axis;
use crate::reference::tensor::{Real, Tensor};

pub fn reshape<T: Real>(x: &Tensor<T>, target: &[i64]) -> Tensor<T> {
    let known: i64 = target.iter().filter(|&&d| d >= 0).product();
    let shape = target
        .iter()
        .map(|&d| {
            if d < 0 {
                x.len() / known as usize
            } else {
                d as usize
            }
        })
        .collect();
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
