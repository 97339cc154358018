//! Reductions along one axis.

use super::axis;
use crate::reference::tensor::{Real, Tensor};
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
