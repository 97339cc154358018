//! BitNet b1.58 quantisers, returned dequantised (their gradients pass straight through).

use crate::reference::tensor::{Real, Tensor};

/// Ternary absmean: `round(clamp(w / s, -1, 1)) * s` with `s = mean(|w|)`.
pub fn ternary<T: Real>(w: &Tensor<T>) -> Tensor<T> {
    let s = w.data.iter().fold(T::zero(), |a, v| a + v.abs()) / T::of(w.len() as f64);
    let s = s.max(T::of(1e-5));
    w.map(|v| T::of((v / s).max(-T::one()).min(T::one()).f64().round_ties_even()) * s)
}

/// Per-token absmax int8: `round(clamp(x * 127 / max|x|, -128, 127)) * max|x| / 127`,
/// with the maximum over the last axis.
pub fn int8_per_token<T: Real>(x: &Tensor<T>) -> Tensor<T> {
    let d = *x.shape.last().unwrap_or(&1);
    let mut data = Vec::with_capacity(x.len());
    for row in x.data.chunks(d.max(1)) {
        let m = row.iter().fold(T::zero(), |a, v| a.max(v.abs())).max(T::of(1e-5));
        let s = T::of(127.0) / m;
        data.extend(
            row.iter().map(|&v| T::of((v * s).max(T::of(-128.0)).min(T::of(127.0)).f64().round_ties_even()) / s),
        );
    }
    Tensor::new(x.shape.clone(), data)
}
